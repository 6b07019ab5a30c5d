#!/usr/bin/env python3
"""bench/ocsp_connection: the OCSP responder's connection machinery alone, per request.

Drives ``web.ocsp_server._Connection`` with a fake transport and a fake service whose
``stored_der`` returns a fixed answer: the hot path (a POST of a plain request answered
from ``on_message_complete``) without sockets, the database or the event loop — what
moving the machinery into ``web/httpserver.py`` could have slowed. Two cases: requests on
one kept-alive connection, and a new connection per request with ``Connection: close``.
Prints the best and the median of 7 rounds of 50,000 requests (µs per request); run it
from two checkouts to compare.

Run:  .venv/bin/python bench/ocsp_connection.py
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [str(Path.cwd()), str(REPO)] + [p for p in sys.path if p not in ("", str(Path(__file__).parent))]

from web import ocsp_server  # noqa: E402

ROUNDS, PER_ROUND = 7, 50_000


class _Service:
    der = b"\x30" * 1500

    def stored_der(self, body: bytes) -> bytes:
        return self.der


class _Transport:
    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


BODY = b"\x30" * 83
KEEP = (
    b"POST /ocsp HTTP/1.1\r\nHost: ocsp.example\r\nContent-Type: application/ocsp-request\r\n"
    b"Content-Length: 83\r\n\r\n" + BODY
)
CLOSE = KEEP.replace(b"Host:", b"Connection: close\r\nHost:")


def main() -> int:
    loop = asyncio.new_event_loop()
    worker = ocsp_server._Worker(_Service(), concurrent.futures.ThreadPoolExecutor(1))

    def kept_alive(n: int) -> float:
        connection = ocsp_server._Connection(worker, loop)
        connection.connection_made(_Transport())  # type: ignore[arg-type]
        t0 = time.perf_counter()
        for _ in range(n):
            connection.data_received(KEEP)
        elapsed = time.perf_counter() - t0
        connection.connection_lost(None)
        return elapsed / n * 1e6

    def new_connections(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            connection = ocsp_server._Connection(worker, loop)
            connection.connection_made(_Transport())  # type: ignore[arg-type]
            connection.data_received(CLOSE)
            connection.connection_lost(None)
        return (time.perf_counter() - t0) / n * 1e6

    print(f"web.ocsp_server from {Path(ocsp_server.__file__).resolve().parent.parent}")
    for name, case in (("kept-alive connection", kept_alive), ("new connection + close", new_connections)):
        case(PER_ROUND // 2)  # warm-up
        times = [case(PER_ROUND) for _ in range(ROUNDS)]
        print(f"{name}: best {min(times):.2f} µs, median {statistics.median(times):.2f} µs per request")
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
