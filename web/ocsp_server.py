"""The dedicated OCSP responder: ``govpki ocsp serve`` (and a child of ``govpki serve``).

Relying parties' OCSP traffic is many tiny requests, most of them on a new TCP
connection; under gunicorn each costs ~0.7 ms of server CPU, ten times the look-up.
This front is an asyncio server that does only OCSP, with the same semantics, headers,
limits and answers as ``/ocsp`` on the app (both call :mod:`web.ocsp`):

* ``POST /ocsp`` (and ``POST /``, where ``openssl ocsp -url http://host:port`` sends),
  ``GET``/``HEAD /ocsp/<base64>``; any other path is 404, another method 405.
* HTTP parsing by ``httptools`` (llhttp, the parser uvicorn and Node use; the
  connection machinery, process management and limits are :mod:`web.httpserver`'s,
  shared with the access decision server), strict on what an OCSP client sends: a
  request head of at most 16 KiB and 64 header fields (431), a URL of at most 8 KiB
  (414), a body only with Content-Length (a Transfer-Encoding gets 411), at most the
  app's 1 MiB (413), anything unparsable 400.
  Those answers close the connection.
* Keep-alive for HTTP/1.1 clients that do not send ``Connection: close`` (pipelined
  requests answered in order); HTTP/1.0 gets one answer and a close. A connection with
  no complete request for ``IDLE_SECONDS`` is closed.
* ``GOVPKI_OCSP_WORKERS`` processes, each with its own listening socket on the same
  port (``SO_REUSEPORT``: the kernel spreads new connections over them) and its own
  :class:`~web.container.Services`, built after the fork (no migrations: ``serve`` or
  ``init`` runs them). The event loop is uvloop's when it is installed.
* A stored answer (one primary-key read, well under 100 µs) is looked up inline on the
  event loop: a hop to a thread would cost more than the read (bench/README). On a new
  connection whose request is complete in its first read and asks for a close
  (``openssl ocsp``: HTTP/1.0), that answer is sent and the socket closed by the
  :class:`~web.httpserver.Acceptor` (accept, read, write, close), without an event-loop
  transport. An answer
  that must be signed (nonce, several requests, unknown serial, none stored yet) goes
  to a small thread pool, and the connection waits for it while the others go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools

from ca.ocsp import MAX_REQUEST_BYTES
from govpki.config import Config
from web import httpserver
from web.httpserver import BAD_REQUEST, IDLE_SECONDS, MAX_BODY_BYTES, HttpReply, plain
from web.ocsp import (
    CONTENT_TYPE,
    PREFIX,
    answer,
    answer_stored,
    internal_error,
    is_ocsp_path,
    reply,
    route,
    too_large,
)

__all__ = ["IDLE_SECONDS", "LOOKUP_INLINE", "SIGN_THREADS", "serve"]

SIGN_THREADS = 2
# Stored answers are looked up on the event loop; False sends every request through the
# thread pool (for measuring: bench/README has both)
LOOKUP_INLINE = True

_KEEP_END = b"\r\nCache-Control: no-store\r\n\r\n"
# POST request targets answered on the hot path (others go through route())
_OCSP_POST_TARGETS = (PREFIX.encode(), PREFIX.encode() + b"/", b"/")
_NOT_FOUND = plain("404 Not Found", "OCSP requests are POST /ocsp or GET /ocsp/<base64 request>", close=False)


class _Request:
    __slots__ = ("body", "content_length", "keep_alive", "method", "url")

    def __init__(self, method: str, url: bytes, content_length: int | None, body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.url = url
        self.content_length = content_length
        self.body = body
        self.keep_alive = keep_alive


class _Worker(httpserver.Worker):
    """What one process's connections share (:class:`web.httpserver.Worker`), with the
    OCSP service and the prebuilt head of a POST answer for this second."""

    def __init__(self, service: Any, pool: concurrent.futures.Executor) -> None:
        super().__init__(pool)
        self.service = service
        self._ocsp_head = b""

    def _refresh(self) -> None:
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, formatdate(now, usegmt=True)
            # web.ocsp.reply()'s headers for a POST answer, in the same order
            self._ocsp_head = (
                f"HTTP/1.1 200 OK\r\nDate: {self._date}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: "
            ).encode("latin-1")

    def ocsp_head(self, length: int, close: bool) -> bytes:
        """The head of a 200 answer to a POST carrying ``length`` bytes of OCSP response."""
        self._refresh()
        end = b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n" if close else _KEEP_END
        return b"%s%d%s" % (self._ocsp_head, length, end)


class _Connection(httpserver.Connection):
    """One client connection (:class:`web.httpserver.Connection` parses and queues).

    The common request (one POST of a plain OCSP request with a fresh stored answer) is
    answered straight from ``on_message_complete`` when nothing is queued before it:
    the same answer and headers as the general path, with less work per connection."""

    __slots__ = ()
    _worker: _Worker  # __init__(worker, loop) is the base's

    def too_large(self) -> HttpReply:
        return too_large(MAX_BODY_BYTES)

    def on_message_complete(self) -> None:
        parser = self._parser
        keep_alive = parser.get_http_version() == "1.1" and parser.should_keep_alive()
        self._in_head = True
        self._head_bytes = 0
        self.idle_since = None
        if (
            LOOKUP_INLINE
            and not self._queue
            and not self._busy
            and self._url in _OCSP_POST_TARGETS
            and parser.get_method() == b"POST"
            and len(self._body) <= MAX_REQUEST_BYTES
        ):
            der = self._worker.service.stored_der(bytes(self._body))
            if der is not None:
                self._send_ocsp(der, keep_alive)
                return
        self._queue.append(
            _Request(
                parser.get_method().decode("ascii", "replace"),
                bytes(self._url),
                self._content_length,
                bytes(self._body),
                keep_alive,
            )
        )

    def handle(self, request: _Request) -> None:
        try:
            try:
                path = unquote(httptools.parse_url(request.url).path.decode("latin-1"), encoding="latin-1")
            except (httptools.HttpParserInvalidURLError, UnicodeDecodeError, AttributeError):
                self.send(BAD_REQUEST, keep_alive=False)
                return
            if request.method == "POST" and path == "/":
                path = PREFIX
            if not is_ocsp_path(path):
                self.send(_NOT_FOUND, keep_alive=request.keep_alive)
                return
            body = request.body
            call = route(request.method, path, request.content_length, lambda _n: body, MAX_BODY_BYTES)
            if isinstance(call, HttpReply):
                self.send(call, keep_alive=request.keep_alive)
                return
            stored = answer_stored(self._worker.service, call) if LOOKUP_INLINE else None
        except Exception:  # never a 500, never a dead connection handler
            self.send(internal_error(), keep_alive=request.keep_alive)
            return
        if stored is not None:
            self.send(reply(stored, call), keep_alive=request.keep_alive)
            return
        # signing: off the event loop; this connection waits, the others go on
        service = self._worker.service
        self.offload(
            lambda: answer(service, call), lambda signed: reply(signed, call), internal_error, request.keep_alive
        )

    def _send_ocsp(self, der: bytes, keep_alive: bool) -> None:
        """The hot path's answer: what ``send(reply(...))`` sends for a stored answer to a POST."""
        self.write(self._worker.ocsp_head(len(der), not keep_alive) + der, close=not keep_alive)


# ----- processes ----------------------------------------------------------------


def _setup(services: Any, loop: asyncio.AbstractEventLoop) -> tuple[_Worker, Any]:
    pool = concurrent.futures.ThreadPoolExecutor(SIGN_THREADS, thread_name_prefix="ocsp-sign")
    worker = _Worker(services.ocsp, pool)
    return worker, lambda: _Connection(worker, loop)


def serve(config: Config, host: str, port: int, workers: int, *, parent_pid: int | None = None) -> int:
    """Bind, fork ``workers`` worker processes and keep them running until SIGTERM/SIGINT
    (or until ``parent_pid`` is gone). Returns the exit code."""
    return httpserver.serve(
        config,
        host,
        port,
        workers,
        _setup,
        name="OCSP responder",
        banner=lambda h, p: f"govpki OCSP responder listening on http://{h}:{p}/ocsp ({workers} processes)",
        parent_pid=parent_pid,
    )
