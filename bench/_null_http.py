"""A null HTTP server for bench/ocsp.py's ``null`` row: uvloop, two processes on one port
(``SO_REUSEPORT``), a fixed successful-looking OCSP answer without parsing anything. It
measures what the load generator and the TCP connections cost on this machine, so the
rows above it can be read against that ceiling.

Run:  python bench/_null_http.py PORT
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import uvloop

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n\x30\x03\x0a\x01\x00"


class _Null(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(ANSWER)  # type: ignore[attr-defined]
            self.transport.close()


def _worker(port: int) -> None:
    loop = uvloop.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    loop.run_until_complete(loop.create_server(_Null, sock=sock))
    loop.run_forever()


def main() -> None:
    port = int(sys.argv[1])
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            _worker(port)
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.pause()
    for pid in children:
        os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
