#!/usr/bin/env python3
"""A tiny WebSocket echo backend for bench/connload.sh (Python standard library only).

    python3 bench/connload_ws_backend.py --listen 127.0.0.1:18503

A request with `Upgrade: websocket` gets the RFC 6455 handshake (101 with
Sec-WebSocket-Accept = base64(sha1(key + GUID))), then every data frame is
echoed back unmasked (ping gets pong, close gets close). Any other request
gets `200 ok` (keep-alive unless asked to close), so a proxy's plain `GET /`
check works and the script can use it as the HTTP backend too. No extensions, no fragmentation handling beyond echoing frame by frame.
"""

import argparse
import asyncio
import base64
import hashlib
import struct
import sys

from connload_client import raise_nofile  # same directory: on sys.path

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = 1 << 20


async def read_frame(reader):
    """Returns (fin_opcode_byte, payload) or None at EOF."""
    try:
        head = await reader.readexactly(2)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    b0, b1 = head
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    if length > MAX_PAYLOAD:
        return None
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(length) if length else b""
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return b0, payload


def frame(b0, payload):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


async def handle(reader, writer):
    try:
        while True:  # plain requests on a keep-alive connection, until an upgrade
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = raw.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            key = headers.get("sec-websocket-key")
            if headers.get("upgrade", "").lower() == "websocket" and key:
                break
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(min(length, MAX_PAYLOAD))
            close = "close" in headers.get("connection", "").lower() or lines[0].endswith("HTTP/1.0")
            body = b"ok from connload_ws_backend\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(body), b"Connection: close\r\n" if close else b"", body)
            )
            await writer.drain()
            if close:
                return
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await writer.drain()
        while True:
            f = await read_frame(reader)
            if f is None:
                return
            b0, payload = f
            opcode = b0 & 0x0F
            if opcode == 0x8:  # close: answer and stop
                writer.write(frame(0x88, payload[:2]))
                await writer.drain()
                return
            if opcode == 0x9:  # ping -> pong
                writer.write(frame(0x8A, payload))
            elif opcode == 0xA:  # pong: ignore
                continue
            else:  # text, binary, continuation: echo as is
                writer.write(frame(b0 & 0x8F, payload))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - closing a broken socket
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:18503", help="ip:port")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    raise_nofile()
    server = await asyncio.start_server(handle, host, int(port), backlog=4096, limit=MAX_HEADER)
    print(f"connload_ws_backend listening on {args.listen}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
