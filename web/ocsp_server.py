"""The dedicated OCSP responder: ``govpki ocsp serve`` (and a child of ``govpki serve``).

Relying parties' OCSP traffic is many tiny requests, most of them on a new TCP
connection; under gunicorn each costs ~0.7 ms of server CPU, ten times the look-up.
This front is an asyncio server that does only OCSP, with the same semantics, headers,
limits and answers as ``/ocsp`` on the app (both call :mod:`web.ocsp`):

* ``POST /ocsp`` (and ``POST /``, where ``openssl ocsp -url http://host:port`` sends),
  ``GET``/``HEAD /ocsp/<base64>``; any other path is 404, another method 405.
* HTTP parsing by ``httptools`` (llhttp, the parser uvicorn and Node use), strict on
  what an OCSP client sends: a request head of at most 16 KiB and 64 header fields
  (431), a URL of at most 8 KiB (414), a body only with Content-Length (a
  Transfer-Encoding gets 411), at most the app's 1 MiB (413), anything unparsable 400.
  Those answers close the connection.
* Keep-alive for HTTP/1.1 clients that do not send ``Connection: close`` (pipelined
  requests answered in order); HTTP/1.0 gets one answer and a close. A connection with
  no complete request for ``IDLE_SECONDS`` is closed.
* ``GOVPKI_OCSP_WORKERS`` processes, each with its own listening socket on the same
  port (``SO_REUSEPORT``: the kernel spreads new connections over them) and its own
  :class:`~web.container.Services`, built after the fork (no migrations: ``serve`` or
  ``init`` runs them). The event loop is uvloop's when it is installed.
* A stored answer (one primary-key read, well under 100 µs) is looked up inline on the
  event loop: a hop to a thread would cost more than the read (bench/README). An answer
  that must be signed (nonce, several requests, unknown serial, none stored yet) goes
  to a small thread pool, and the connection waits for it while the others go on.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import unquote

import httptools

from ca.ocsp import MAX_REQUEST_BYTES
from govpki.config import Config
from web.ocsp import (
    CONTENT_TYPE,
    PREFIX,
    HttpReply,
    OcspCall,
    answer,
    answer_stored,
    internal_error,
    is_ocsp_path,
    reply,
    route,
    too_large,
)

log = logging.getLogger("govpki.web.ocsp_server")

MAX_BODY_BYTES = 1024 * 1024  # the app's limit (web.app.MAX_REQUEST_BYTES)
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
MAX_URL_BYTES = 8 * 1024
IDLE_SECONDS = 15.0
SIGN_THREADS = 2
# Stored answers are looked up on the event loop; False sends every request through the
# thread pool (for measuring: bench/README has both)
LOOKUP_INLINE = True
BACKLOG = 1024


def _plain(status: str, text: str, *, close: bool = True, extra: tuple[tuple[str, str], ...] = ()) -> HttpReply:
    body = text.encode() + b"\n"
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra]
    return HttpReply(status, headers, body, close=close)


_BAD_REQUEST = _plain("400 Bad Request", "bad HTTP request")
_HEAD_TOO_LARGE = _plain(
    "431 Request Header Fields Too Large", f"a request head has at most {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} fields"
)
_URL_TOO_LONG = _plain("414 URI Too Long", f"the URL is longer than {MAX_URL_BYTES} bytes")
_LENGTH_REQUIRED = _plain("411 Length Required", "send the body with a Content-Length (no Transfer-Encoding)")
_KEEP_END = b"\r\nCache-Control: no-store\r\n\r\n"
# POST request targets answered on the hot path (others go through route())
_OCSP_POST_TARGETS = (PREFIX.encode(), PREFIX.encode() + b"/", b"/")
_NOT_FOUND = _plain("404 Not Found", "OCSP requests are POST /ocsp or GET /ocsp/<base64 request>", close=False)


class _Request:
    __slots__ = ("body", "content_length", "keep_alive", "method", "url")

    def __init__(self, method: str, url: bytes, content_length: int | None, body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.url = url
        self.content_length = content_length
        self.body = body
        self.keep_alive = keep_alive


class _Worker:
    """What one process's connections share: the service, the signing pool, the open
    connections (one timer sweeps them for idle ones every second, rather than a timer
    per connection), and this second's Date header."""

    def __init__(self, service: Any, pool: concurrent.futures.Executor) -> None:
        self.service = service
        self.pool = pool
        self.connections: set[_Connection] = set()
        self.tick = 0  # seconds since the worker started, counted by sweep()
        self._date_second = -1
        self._date = ""
        self._ocsp_head = b""

    def _refresh(self) -> None:
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, formatdate(now, usegmt=True)
            # web.ocsp.reply()'s headers for a POST answer, in the same order
            self._ocsp_head = (
                f"HTTP/1.1 200 OK\r\nDate: {self._date}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: "
            ).encode("latin-1")

    def date(self) -> str:
        self._refresh()
        return self._date

    def ocsp_head(self, length: int, close: bool) -> bytes:
        """The head of a 200 answer to a POST carrying ``length`` bytes of OCSP response."""
        self._refresh()
        end = b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n" if close else _KEEP_END
        return b"%s%d%s" % (self._ocsp_head, length, end)

    def sweep(self) -> None:
        """Once a second: close the connections idle for ``IDLE_SECONDS``."""
        self.tick += 1
        for connection in [c for c in self.connections if c.idle_since is not None]:
            if self.tick - cast(int, connection.idle_since) >= IDLE_SECONDS:
                connection.idle()


class _Connection(asyncio.Protocol):
    """One client connection: parse with httptools, answer in order.

    The common request (one POST of a plain OCSP request with a fresh stored answer) is
    answered straight from ``on_message_complete`` when nothing is queued before it:
    the same answer and headers as the general path, with less work per connection."""

    def __init__(self, worker: _Worker, loop: asyncio.AbstractEventLoop) -> None:
        self._worker = worker
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser: Any = httptools.HttpRequestParser(self)
        self._queue: collections.deque[_Request | HttpReply] = collections.deque()
        self._busy = False  # an answer is being signed in the pool
        self._write_paused = False
        self._reading_paused = False
        self._closed = False
        # the worker's tick since when no request is pending (None: one is); sweep() closes
        # the connection IDLE_SECONDS later
        self.idle_since: int | None = None
        # the request being parsed; _head_bytes: received while its head is incomplete (a
        # bound on what httptools buffers for a header still coming)
        self._in_head = True
        self._head_bytes = 0
        self._headers = 0
        self._head_size = 0  # the parsed head: URL and header fields
        self._url = bytearray()
        self._content_length: int | None = None
        self._body = bytearray()
        self._failed: HttpReply | None = None

    # ----- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is not a subclass; both loops set TCP_NODELAY themselves
        self._transport = cast(asyncio.Transport, transport)
        self._worker.connections.add(self)
        self.idle_since = self._worker.tick

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._worker.connections.discard(self)
        # no reference cycles left for the garbage collector: reference counting frees it
        self._transport = None
        self._parser = None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._failed is not None:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_BAD_REQUEST)
        except (httptools.HttpParserError, ValueError):
            self._fail(self._failed or _BAD_REQUEST)
        else:
            if self._failed is None and self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                self._fail(_HEAD_TOO_LARGE)
        self._drain()

    def eof_received(self) -> bool | None:
        # a half-closed client still gets the answers to what it sent
        return True if (self._busy or self._queue) else None

    # ----- httptools callbacks ---------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = 0
        self._head_size = 0
        self._url.clear()
        self._content_length = None
        self._body.clear()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if len(self._url) > MAX_URL_BYTES:
            self._raise(_URL_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head_size += len(name) + len(value) + 4
        if self._headers > MAX_HEADERS or self._head_size > MAX_HEAD_BYTES:
            self._raise(_HEAD_TOO_LARGE)
        size = len(name)  # only two names matter: compare (lower-cased) only names of their length
        if size == 14 and name.lower() == b"content-length":
            # llhttp has checked it is digits and not given twice with another value
            self._content_length = int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._raise(_LENGTH_REQUIRED)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._content_length is not None and self._content_length > MAX_BODY_BYTES:
            self._raise(too_large(MAX_BODY_BYTES))

    def on_body(self, body: bytes) -> None:
        self._body += body

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

    def _raise(self, failure: HttpReply) -> None:
        """Stop parsing with ``failure`` as the answer (raised through feed_data)."""
        self._failed = failure
        raise ValueError(failure.status)

    # ----- answering --------------------------------------------------------

    def _fail(self, failure: HttpReply) -> None:
        self._failed = failure
        self._queue.append(failure)

    def _drain(self) -> None:
        while self._queue and not self._busy and not self._closed:
            item = self._queue.popleft()
            if isinstance(item, HttpReply):
                self._send(item, keep_alive=False)
                return
            self._handle(item)
        self._update_reading()

    def _handle(self, request: _Request) -> None:
        try:
            try:
                path = unquote(httptools.parse_url(request.url).path.decode("latin-1"), encoding="latin-1")
            except (httptools.HttpParserInvalidURLError, UnicodeDecodeError, AttributeError):
                self._send(_BAD_REQUEST, keep_alive=False)
                return
            if request.method == "POST" and path == "/":
                path = PREFIX
            if not is_ocsp_path(path):
                self._send(_NOT_FOUND, keep_alive=request.keep_alive)
                return
            body = request.body
            call = route(request.method, path, request.content_length, lambda _n: body, MAX_BODY_BYTES)
            if isinstance(call, HttpReply):
                self._send(call, keep_alive=request.keep_alive)
                return
            stored = answer_stored(self._worker.service, call) if LOOKUP_INLINE else None
        except Exception:  # never a 500, never a dead connection handler
            self._send(internal_error(), keep_alive=request.keep_alive)
            return
        if stored is not None:
            self._send(reply(stored, call), keep_alive=request.keep_alive)
            return
        # signing: off the event loop; this connection waits, the others go on
        self._busy = True
        self._update_reading()
        future = self._loop.run_in_executor(self._worker.pool, answer, self._worker.service, call)
        future.add_done_callback(lambda f: self._signed(f, call, request.keep_alive))

    def _signed(self, future: asyncio.Future[Any], call: OcspCall, keep_alive: bool) -> None:
        self._busy = False
        if self._closed:
            return
        try:
            result = reply(future.result(), call)
        except Exception:
            result = internal_error()
        self._send(result, keep_alive=keep_alive)
        self._drain()

    def _send_ocsp(self, der: bytes, keep_alive: bool) -> None:
        """The hot path's answer: what ``_send(reply(...))`` sends for a stored answer to a POST."""
        transport = self._transport
        if transport is None or self._closed:
            return
        transport.write(self._worker.ocsp_head(len(der), not keep_alive) + der)
        if not keep_alive:
            self._closed = True
            transport.close()
        else:
            self.idle_since = self._worker.tick

    def _send(self, result: HttpReply, *, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        close = result.close or not keep_alive
        lines = [f"HTTP/1.1 {result.status}", f"Date: {self._worker.date()}"]
        lines += [f"{name}: {value}" for name, value in result.headers if name != "Connection"]
        if close:
            lines.append("Connection: close")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + result.body)
        if close:
            self._closed = True
            self._queue.clear()
            transport.close()
        elif not self._queue and not self._busy:
            self.idle_since = self._worker.tick

    def idle(self) -> None:
        self.idle_since = None
        if not self._closed and not self._busy and self._transport is not None:
            self._closed = True
            self._transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        want_paused = self._busy or self._write_paused
        if want_paused and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not want_paused and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False


# ----- processes ----------------------------------------------------------------


def _listen_socket(host: str, port: int, *, share: bool = True) -> socket.socket:
    host = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover  (uvloop is a dependency on Linux)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _worker_main(config: Config, host: str, port: int, master: int) -> int:
    """One worker process: its own socket, services, loop."""
    from web.container import build_services

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    services = build_services(config, run_migrations=False)
    gc.freeze()  # what start-up made is not scanned by every collection
    pool = concurrent.futures.ThreadPoolExecutor(SIGN_THREADS, thread_name_prefix="ocsp-sign")
    worker = _Worker(services.ocsp, pool)
    sock = _listen_socket(host, port)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    server = loop.run_until_complete(loop.create_server(lambda: _Connection(worker, loop), sock=sock))

    def watch() -> None:  # every second: idle connections; and the master is gone: stop too
        worker.sweep()
        if os.getppid() != master:
            loop.stop()
        else:
            loop.call_later(1.0, watch)

    loop.call_later(1.0, watch)
    try:
        loop.run_forever()
    finally:
        server.close()
        pool.shutdown(wait=False, cancel_futures=True)
        services.dispose()
        loop.close()
    return 0


def serve(config: Config, host: str, port: int, workers: int, *, parent_pid: int | None = None) -> int:
    """Bind, fork ``workers`` worker processes and keep them running until SIGTERM/SIGINT
    (or until ``parent_pid`` is gone). Returns the exit code."""
    # The master holds a bound (not listening) socket of the same SO_REUSEPORT group: it
    # checks the address before forking, turns port 0 into a real one, and keeps it.
    # First a bind without SO_REUSEPORT: it fails if anything listens there, also another
    # responder (of another instance of the same user), which would otherwise silently
    # share the port and its traffic with us.
    with _listen_socket(host, port, share=False) as probe:
        port = probe.getsockname()[1]
    reserve = _listen_socket(host, port)
    master = os.getpid()
    stopping = False
    children: dict[int, float] = {}
    quick_failures = 0

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    def spawn() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                reserve.close()
                code = _worker_main(config, host, port, master)
            except BaseException:
                log.exception("OCSP worker %d failed", os.getpid())
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    log.info("OCSP responder on %s:%d, %d worker processes %s", host, port, workers, sorted(children))
    print(f"govpki OCSP responder listening on http://{host}:{port}/ocsp ({workers} processes)", flush=True)
    code = 0
    while not stopping:
        time.sleep(0.2)
        if parent_pid is not None and os.getppid() != parent_pid:
            break
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            started = children.pop(pid, None)
            if started is None or stopping:
                continue
            log.warning("OCSP worker %d exited (status %d); starting another", pid, status)
            quick_failures = quick_failures + 1 if time.monotonic() - started < 5 else 0
            if quick_failures >= 5:
                log.error("OCSP workers keep failing at start; giving up")
                stopping, code = True, 1
                break
            spawn()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while children and time.monotonic() < deadline:
        pid, _status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.05)
        else:
            children.pop(pid, None)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    reserve.close()
    return code
