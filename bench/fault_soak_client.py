#!/usr/bin/env python3
"""Steady GETs and POSTs for bench/fault-soak.sh (standard library only).

    python3 bench/fault_soak_client.py --url http://127.0.0.1:18600/ --clients 8 --seconds 60

Half the clients send GETs, half POST a small form (a quiz submission), each
on its own keep-alive connection (reopened after an error), as fast as the
proxy answers, until --seconds pass or --max-requests per client are sent.
Anything but a 200 is a failure. Prints one line: `get_ok get_failed
post_ok post_failed` and the first failures.
"""

import argparse
import http.client
import threading
import time
import urllib.parse


def client(url, post, deadline, max_requests, counts, failures, lock):
    u = urllib.parse.urlsplit(url)
    conn = None
    body = b"answer=42&sesskey=abc"
    for _ in range(max_requests):
        if time.monotonic() >= deadline:
            break
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
            if post:
                conn.request("POST", u.path or "/", body=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
            else:
                conn.request("GET", u.path or "/")
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
            why = f"{resp.status}"
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            ok, why = False, f"{type(e).__name__}: {e}"
            if conn is not None:
                conn.close()
            conn = None
        key = ("post" if post else "get") + ("_ok" if ok else "_failed")
        with lock:
            counts[key] += 1
            if not ok and len(failures) < 5:
                failures.append(("POST" if post else "GET", why))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    a = p.parse_args()
    counts = {"get_ok": 0, "get_failed": 0, "post_ok": 0, "post_failed": 0}
    failures, lock = [], threading.Lock()
    deadline = time.monotonic() + a.seconds
    threads = [
        threading.Thread(target=client, args=(a.url, i % 2 == 1, deadline, a.max_requests,
                                              counts, failures, lock), daemon=True)
        for i in range(a.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.seconds + 30)
    print(counts["get_ok"], counts["get_failed"], counts["post_ok"], counts["post_failed"])
    for method, why in failures:
        print(f"failed {method}: {why}")


if __name__ == "__main__":
    main()
