#!/usr/bin/env python3
"""Idle-connection load for bench/connload.sh (Python standard library only).

    python3 bench/connload_client.py --mode http1 --port 18500 --pid 1234 --n 2000

Reads the proxy's VmRSS (/proc/PID/status) as the baseline, then for each
wave: opens N connections in batches of up to --batch at a time, each doing
one exchange and then staying open and idle; waits --settle seconds; reads
VmRSS ("loaded"); closes every connection; waits --drain seconds; reads VmRSS
("after close"). Modes:

  http1  one `GET /` over HTTP/1.1 keep-alive, response read in full
  ws     WebSocket upgrade on --ws-path, one masked text message, echo read back
  h2c    HTTP/2 prior knowledge: preface + SETTINGS + one HEADERS (GET /),
         reads frames until the response's END_STREAM (SETTINGS acked)

Prints one tab-separated line per wave on stdout (columns in HEADER); errors
go to stderr. Everything is bounded: per-connection exchange --timeout,
each batch --timeout + 5 s, closing 5 s.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import resource
import struct
import sys
import time

HEADER = (
    "label\tmode\twave\tn\tok\tfailed\tbaseline_kb\tloaded_kb\tafter_kb"
    "\tproxy_fds_loaded\tproxy_side_estab_loaded\tupstream_estab_loaded"
    "\tproxy_side_estab_after\tupstream_estab_after\topen_s"
)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_ERRORS_SHOWN = 5


def raise_nofile(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tcp_established(local_port, remote_ports):
    """(sockets in ESTABLISHED with this local port, sockets ESTABLISHED to any remote_ports).

    On loopback both ends are listed; the first count is the proxy's accepted
    side of client connections, the second the proxy's side of upstream ones."""
    local = remote = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] != "01":
                        continue
                    lport = int(parts[1].rsplit(":", 1)[1], 16)
                    rport = int(parts[2].rsplit(":", 1)[1], 16)
                    if lport == local_port:
                        local += 1
                    if rport in remote_ports:
                        remote += 1
        except OSError:
            pass
    return local, remote


# --- HTTP/1.1 ----------------------------------------------------------------
async def read_http1_response(reader, expect):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != str(expect):
        raise RuntimeError(f"unexpected status line {status_line!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if expect == 101:
        return headers
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            await reader.readexactly(n)
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        for _ in range(10000):
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        raise RuntimeError("response without length on a keep-alive connection")
    if "close" in headers.get("connection", "").lower():
        raise RuntimeError("the proxy closes the connection after the response (no keep-alive)")
    return headers


async def open_http1(host, port, i, args):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {args.host_header}\r\nUser-Agent: connload/{i}\r\n\r\n".encode())
    await writer.drain()
    await read_http1_response(reader, 200)
    return reader, writer


# --- WebSocket ---------------------------------------------------------------
async def open_ws(host, port, i, args):
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        f"GET {args.ws_path} HTTP/1.1\r\nHost: {args.host_header}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    headers = await read_http1_response(reader, 101)
    want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != want:
        raise RuntimeError("bad Sec-WebSocket-Accept")
    msg = f"hello {i}".encode()
    mask = os.urandom(4)
    masked = bytes(c ^ mask[j % 4] for j, c in enumerate(msg))
    writer.write(struct.pack("!BB", 0x81, 0x80 | len(msg)) + mask + masked)
    await writer.drain()
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if b1 & 0x80 or n >= 126:
        raise RuntimeError("unexpected echo frame header")
    payload = await reader.readexactly(n)
    if b0 != 0x81 or payload != msg:
        raise RuntimeError(f"bad echo {b0:#x} {payload!r}")
    return reader, writer


# --- HTTP/2 cleartext (prior knowledge) --------------------------------------
def h2_frame(ftype, flags, stream, payload=b""):
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack("!I", stream) + payload


def hpack_request(authority):
    # :method GET (static 2), :scheme http (6), :path / (4), then :authority as
    # a literal without indexing, name from static index 1, no Huffman.
    a = authority.encode()
    if len(a) > 126:
        raise ValueError("authority too long")
    return b"\x82\x86\x84\x01" + bytes([len(a)]) + a


async def open_h2c(host, port, i, args):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        H2_PREFACE
        + h2_frame(0x4, 0, 0)  # empty SETTINGS
        + h2_frame(0x1, 0x5, 1, hpack_request(args.host_header))  # HEADERS, END_STREAM|END_HEADERS
    )
    await writer.drain()
    for _ in range(200):
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length) if length else b""
        if ftype == 0x4 and not flags & 0x1:  # SETTINGS -> ACK
            writer.write(h2_frame(0x4, 0x1, 0))
        elif ftype == 0x6 and not flags & 0x1:  # PING -> ACK
            writer.write(h2_frame(0x6, 0x1, 0, payload))
        elif ftype == 0x7:
            raise RuntimeError(f"GOAWAY {payload[4:8].hex()} {payload[8:]!r}")
        elif ftype == 0x3 and stream == 1:
            raise RuntimeError(f"RST_STREAM {payload.hex()}")
        elif ftype == 0x1 and stream == 1:
            block = payload
            if flags & 0x8:  # PADDED
                block = block[1 : len(block) - block[0]]
            if flags & 0x20:  # PRIORITY
                block = block[5:]
            # :status from the static table: 0x88 is 200; 0x89-0x8e are 204..500
            if block and 0x89 <= block[0] <= 0x8E:
                raise RuntimeError(f"non-200 :status (hpack index {block[0] & 0x7F})")
            if flags & 0x1:
                break
        elif ftype == 0x0 and stream == 1 and flags & 0x1:
            break
    else:
        raise RuntimeError("no complete response in 200 frames")
    await writer.drain()
    return reader, writer


OPENERS = {"http1": open_http1, "ws": open_ws, "h2c": open_h2c}


async def open_batch(opener, args, start, count, errors):
    async def one(i):
        return await asyncio.wait_for(opener(args.host, args.port, i, args), args.timeout)

    tasks = [asyncio.ensure_future(one(start + k)) for k in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=args.timeout + 5)
    for t in pending:
        t.cancel()
    conns = []
    for t in tasks:
        if t in done and not t.cancelled() and t.exception() is None:
            conns.append(t.result())
        else:
            exc = None if t.cancelled() or t not in done else t.exception()
            errors.append(repr(exc) if exc else "timed out")
    if pending:
        await asyncio.wait(pending, timeout=2)
    return conns


async def close_all(conns):
    for _, w in conns:
        try:
            w.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
    waits = [asyncio.ensure_future(w.wait_closed()) for _, w in conns]
    if waits:
        _, pending = await asyncio.wait(waits, timeout=5)
        for t in pending:
            t.cancel()
    # collect results so broken connections do not log "exception never retrieved"
    for t in waits:
        if t.done() and not t.cancelled():
            t.exception()


async def run(args):
    opener = OPENERS[args.mode]
    upstream_ports = {int(p) for p in args.upstream_ports.split(",") if p}
    baseline = vm_rss_kb(args.pid)
    all_errors = 0
    for wave in range(1, args.waves + 1):
        errors = []
        conns = []
        t0 = time.monotonic()
        for start in range(0, args.n, args.batch):
            conns += await open_batch(opener, args, start, min(args.batch, args.n - start), errors)
        open_s = time.monotonic() - t0
        await asyncio.sleep(args.settle)
        loaded = vm_rss_kb(args.pid)
        fds = fd_count(args.pid)
        est_loaded, up_loaded = tcp_established(args.port, upstream_ports)
        await close_all(conns)
        await asyncio.sleep(args.drain)
        after = vm_rss_kb(args.pid)
        est_after, up_after = tcp_established(args.port, upstream_ports)
        if errors:
            shown = "; ".join(sorted(set(errors))[:MAX_ERRORS_SHOWN])
            print(f"connload: {args.label} {args.mode} wave {wave}: {len(errors)} of {args.n} failed: {shown}",
                  file=sys.stderr, flush=True)
        all_errors += len(errors)
        print(
            f"{args.label}\t{args.mode}\t{wave}\t{args.n}\t{len(conns)}\t{len(errors)}\t{baseline}\t{loaded}\t{after}"
            f"\t{fds}\t{est_loaded}\t{up_loaded}\t{est_after}\t{up_after}\t{open_s:.2f}",
            flush=True,
        )
        if not conns:
            return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=sorted(OPENERS))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--pid", type=int, help="the proxy process whose VmRSS is read")
    ap.add_argument("--n", type=int, default=2000, help="connections per wave")
    ap.add_argument("--batch", type=int, default=500, help="connections opened at once")
    ap.add_argument("--waves", type=int, default=1, help="open/close cycles on the same proxy process")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between the last open and 'loaded'")
    ap.add_argument("--drain", type=float, default=3.0, help="seconds between closing and 'after close'")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds for one connection's exchange")
    ap.add_argument("--ws-path", default="/ws/")
    ap.add_argument("--host-header", default="bench.local")
    ap.add_argument("--upstream-ports", default="", help="comma-separated backend ports (for the upstream count)")
    ap.add_argument("--label", default="proxy")
    ap.add_argument("--header", action="store_true", help="print the TSV header line first")
    ap.add_argument("--header-only", action="store_true", help="print the TSV header line and exit")
    args = ap.parse_args()
    if args.header_only:
        print(HEADER)
        return 0
    if args.mode is None or args.port is None or args.pid is None:
        ap.error("--mode, --port and --pid are required")
    if not (1 <= args.n <= 100000 and 1 <= args.batch and 1 <= args.waves <= 20):
        ap.error("need 1 <= n <= 100000, batch >= 1, 1 <= waves <= 20")
    if not (0 <= args.settle <= 600 and 0 <= args.drain <= 600 and 0 < args.timeout <= 120):
        ap.error("settle/drain 0..600 s, timeout 0..120 s")
    raise_nofile(max(65536, 2 * args.n + 1024))
    if args.header:
        print(HEADER, flush=True)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
