"""The machinery of govpki's dedicated asyncio HTTP servers (the OCSP responder,
:mod:`web.ocsp_server`, and the access decision server, :mod:`web.authz_server`).

What they share, once:

* :class:`Connection`: an ``asyncio.Protocol`` that parses HTTP/1.x with ``httptools``
  (llhttp) and is strict on what it takes in: a request head of at most
  :data:`MAX_HEAD_BYTES` and :data:`MAX_HEADERS` fields (431), a URL of at most
  :data:`MAX_URL_BYTES` (414), a body only with ``Content-Length`` (a
  ``Transfer-Encoding`` gets 411), at most the server's body limit (413), anything
  unparsable 400; those answers close the connection. Keep-alive for HTTP/1.1 clients
  that do not send ``Connection: close`` (pipelined requests answered in order);
  HTTP/1.0 gets one answer and a close. A request that needs slow work (signing, a
  database read) goes to the worker's thread pool (:meth:`Connection.offload`): that
  connection waits (reading paused), the others go on. Subclasses say what a request
  is (:meth:`Connection.on_message_complete`) and how it is answered
  (:meth:`Connection.handle`).
* :class:`Acceptor`: accepts a worker's connections itself and feeds each one's first
  read to a new :class:`Connection` before any transport exists. A one-shot request
  (``Connection: close`` or HTTP/1.0, complete in the first read: what ``openssl ocsp``
  and most OCSP clients send) answered inline is sent and the socket closed right there;
  every other connection gets an event-loop transport with what was parsed and answered.
* :class:`Worker`: what one process's connections share — the thread pool, the open
  connections (one timer a second sweeps them for ones idle :data:`IDLE_SECONDS`,
  rather than a timer per connection) and this second's ``Date`` header.
* :func:`serve`: the master process. It checks the address is free, forks N worker
  processes, each with its own listening socket on the same port (``SO_REUSEPORT``:
  the kernel spreads new connections over them) and its own services built after the
  fork, and starts another when one dies (it gives up when they keep failing at start).
  :func:`run_worker` is a worker's life: uvloop's event loop when installed, the
  services, the socket and its :class:`Acceptor`, the sweep timer, and a stop when the
  master is gone.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast

import httptools

from govpki.config import Config

if TYPE_CHECKING:
    from web.container import Services

log = logging.getLogger("govpki.web.httpserver")

MAX_BODY_BYTES = 1024 * 1024  # the app's limit (web.app.MAX_REQUEST_BYTES)
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
MAX_URL_BYTES = 8 * 1024
IDLE_SECONDS = 15.0
BACKLOG = 1024


@dataclass(frozen=True)
class HttpReply:
    """A complete HTTP answer; ``close``: the connection must not be reused after it."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes
    close: bool = False


def plain(status: str, text: str, *, close: bool = True, extra: tuple[tuple[str, str], ...] = ()) -> HttpReply:
    body = text.encode() + b"\n"
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra]
    return HttpReply(status, headers, body, close=close)


BAD_REQUEST = plain("400 Bad Request", "bad HTTP request")
HEAD_TOO_LARGE = plain(
    "431 Request Header Fields Too Large", f"a request head has at most {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} fields"
)
URL_TOO_LONG = plain("414 URI Too Long", f"the URL is longer than {MAX_URL_BYTES} bytes")
LENGTH_REQUIRED = plain("411 Length Required", "send the body with a Content-Length (no Transfer-Encoding)")


class Worker:
    """What one process's connections share: the thread pool, the open connections
    (one timer sweeps them for idle ones every second, rather than a timer per
    connection), and this second's Date header."""

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self.pool = pool
        self.connections: set[Connection] = set()
        self.tick = 0  # seconds since the worker started, counted by sweep()
        self._date_second = -1
        self._date = ""

    def _refresh(self) -> None:
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, formatdate(now, usegmt=True)

    def date(self) -> str:
        self._refresh()
        return self._date

    def sweep(self) -> None:
        """Once a second: close the connections idle for ``IDLE_SECONDS``."""
        self.tick += 1
        for connection in [c for c in self.connections if c.idle_since is not None]:
            if self.tick - cast(int, connection.idle_since) >= IDLE_SECONDS:
                connection.idle()

    def close(self) -> None:
        """The worker stops: drop what is queued in the pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)


class Connection(asyncio.Protocol):
    """One client connection: parse with httptools, answer in order.

    A subclass implements :meth:`on_message_complete` (usually: :meth:`queue_request`
    with what :meth:`handle` needs) and :meth:`handle`, which answers with
    :meth:`send` or hands slow work to :meth:`offload`. ``max_body`` is the largest
    Content-Length taken in; :meth:`too_large` the answer to a larger one."""

    # one of these per TCP connection: no per-instance dict
    __slots__ = (
        "_body",
        "_busy",
        "_closed",
        "_content_length",
        "_early",
        "_failed",
        "_head_bytes",
        "_head_size",
        "_headers",
        "_in_head",
        "_loop",
        "_parser",
        "_queue",
        "_reading_paused",
        "_transport",
        "_url",
        "_worker",
        "_write_paused",
        "idle_since",
        "peer",
    )
    max_body = MAX_BODY_BYTES

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop) -> None:
        self._worker = worker
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        # before connection_made: what was answered while the Acceptor fed the first read
        # (None once a transport is attached)
        self._early: list[bytes] | None = []
        self._parser: Any = httptools.HttpRequestParser(self)
        self._queue: collections.deque[Any] = collections.deque()  # requests and final HttpReplies
        self._busy = False  # work for this connection is in the pool
        self._write_paused = False
        self._reading_paused = False
        self._closed = False
        # the worker's tick since when no request is pending (None: one is); sweep() closes
        # the connection IDLE_SECONDS later
        self.idle_since: int | None = worker.tick
        # the client's address, set by the Acceptor from accept() (None: unknown, trusted by nobody)
        self.peer: str | None = None
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
        self._transport = tcp = cast(asyncio.Transport, transport)
        self._worker.connections.add(self)
        early, self._early = self._early, None
        if early:  # answered while the Acceptor fed the first read
            tcp.write(b"".join(early))
        if self._closed:
            tcp.close()
        else:
            self._drain()  # what the first read queued

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
            self._fail(BAD_REQUEST)
        except (httptools.HttpParserError, ValueError):
            self._fail(self._failed or BAD_REQUEST)
        else:
            if self._failed is None and self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                self._fail(HEAD_TOO_LARGE)
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
            self._raise(URL_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head_size += len(name) + len(value) + 4
        if self._headers > MAX_HEADERS or self._head_size > MAX_HEAD_BYTES:
            self._raise(HEAD_TOO_LARGE)
        size = len(name)  # only two names matter: compare (lower-cased) only names of their length
        if size == 14 and name.lower() == b"content-length":
            # llhttp has checked it is digits and not given twice with another value
            self._content_length = int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._raise(LENGTH_REQUIRED)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._content_length is not None and self._content_length > self.max_body:
            self._raise(self.too_large())

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:  # pragma: no cover  (every server has its own)
        raise NotImplementedError

    def message_done(self) -> bool:
        """Call first in :meth:`on_message_complete`: the request is complete; whether
        the connection stays open after its answer."""
        parser = self._parser
        self._in_head = True
        self._head_bytes = 0
        self.idle_since = None
        return bool(parser.get_http_version() == "1.1" and parser.should_keep_alive())

    def queue_request(self, request: Any) -> None:
        """Answer ``request`` (anything :meth:`handle` understands) after those before it."""
        self._queue.append(request)

    def _raise(self, failure: HttpReply) -> None:
        """Stop parsing with ``failure`` as the answer (raised through feed_data)."""
        self._failed = failure
        raise ValueError(failure.status)

    def too_large(self) -> HttpReply:
        return plain("413 Request Entity Too Large", f"the request body is larger than {self.max_body} bytes")

    # ----- answering --------------------------------------------------------

    def _fail(self, failure: HttpReply) -> None:
        self._failed = failure
        self._queue.append(failure)

    def _drain(self) -> None:
        if self._transport is None:  # not attached yet: connection_made drains
            return
        while self._queue and not self._busy and not self._closed:
            item = self._queue.popleft()
            if isinstance(item, HttpReply):
                self.send(item, keep_alive=False)
                return
            self.handle(item)
        self._update_reading()

    def handle(self, request: Any) -> None:  # pragma: no cover  (every server has its own)
        """Answer a queued request: :meth:`send`, or :meth:`offload`. Must not raise."""
        raise NotImplementedError

    def offload(
        self,
        work: Callable[[], Any],
        finish: Callable[[Any], HttpReply],
        failed: Callable[[], HttpReply],
        keep_alive: bool,
    ) -> None:
        """Run ``work`` in the worker's pool, then send ``finish(its result)`` (``failed()``
        if either raised); this connection waits (reading paused), the others go on."""
        self._busy = True
        self._update_reading()
        future = self._loop.run_in_executor(self._worker.pool, work)
        future.add_done_callback(lambda f: self._offloaded(f, finish, failed, keep_alive))

    def _offloaded(
        self,
        future: asyncio.Future[Any],
        finish: Callable[[Any], HttpReply],
        failed: Callable[[], HttpReply],
        keep_alive: bool,
    ) -> None:
        self._busy = False
        if self._closed:
            return
        try:
            result = finish(future.result())
        except Exception:
            result = failed()
        self.send(result, keep_alive=keep_alive)
        self._drain()

    def send(self, result: HttpReply, *, keep_alive: bool) -> None:
        if self._closed:
            return
        close = result.close or not keep_alive
        lines = [f"HTTP/1.1 {result.status}", f"Date: {self._worker.date()}"]
        lines += [f"{name}: {value}" for name, value in result.headers if name != "Connection"]
        if close:
            lines.append("Connection: close")
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + result.body, close=close)

    def write(self, data: bytes, *, close: bool = False) -> None:
        """Send ``data`` (a whole answer, or an interim ``100 Continue``); ``close``: the
        connection ends after it. Before a transport is attached, the Acceptor sends it."""
        if self._closed:
            return
        transport = self._transport
        if transport is not None:
            transport.write(data)
        elif self._early is not None:
            self._early.append(data)
        else:  # the connection is gone
            return
        if close:
            self._closed = True
            self._queue.clear()
            if transport is not None:
                transport.close()
        elif not self._queue and not self._busy:
            self.idle_since = self._worker.tick

    def answered(self) -> bytes | None:
        """For the Acceptor, after the first read: everything to send, when the connection
        is answered and ends there (None: it needs a transport)."""
        early = self._early
        if not self._closed or not early or self._busy:
            return None
        self._early = []
        return b"".join(early)

    def unsent(self, rest: bytes) -> None:
        """For the Acceptor: ``rest`` of :meth:`answered` did not fit the socket; the
        transport sends it, then closes."""
        self._early = [rest]

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


# ----- accepting ----------------------------------------------------------------

READ_BYTES = 64 * 1024  # the first read of a new connection
ACCEPT_BATCH = 64  # connections accepted per wake-up before the loop runs the others
_ACCEPT_PAUSE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """Accepts a worker's connections and feeds each one's first read to its protocol
    before any transport exists.

    Most clients of these servers send one small request on a new connection and read
    one answer (``openssl ocsp`` and most OCSP clients: HTTP/1.0 or ``Connection:
    close``). With ``TCP_DEFER_ACCEPT`` that request is already there when the
    connection is accepted, so such a connection is read, answered and closed here,
    with four system calls and no event-loop transport (which would cost an epoll
    registration, a wake-up and several protocol calls more). Anything else — a request
    not yet complete, a kept-alive connection, work for the thread pool, an answer
    that does not fit the socket buffer — goes on as usual: the same protocol object,
    with what it has parsed, gets an event-loop transport (``connect_accepted_socket``)
    and its :meth:`Connection.connection_made` sends what was answered and drains what
    was queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Callable[[], Connection]) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._fd = sock.fileno()
        # socket.accept() would turn family and type into enums on every call: once, here
        self._family, self._kind = int(sock.family), int(sock.type)
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._loop.add_reader(self._fd, self._ready)

    def stop(self) -> None:
        self._loop.remove_reader(self._fd)

    def _ready(self) -> None:
        accept, family, kind = self._sock._accept, self._family, self._kind  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = accept()
                conn = socket.socket(family, kind, 0, fd)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # out of descriptors or memory: stop accepting for a second (as asyncio does)
                log.warning("accepting a connection failed: %s; pausing for a second", exc)
                if exc.errno in _ACCEPT_PAUSE:
                    self.stop()
                    self._loop.call_later(1.0, self.start)
                return
            try:
                self._take(conn, address)
            except Exception:  # as a transport would: log, drop the connection
                log.exception("a new connection failed")
                conn.close()

    def _take(self, conn: socket.socket, address: Any = None) -> None:
        protocol = self._factory()
        if isinstance(address, tuple) and address:
            protocol.peer = str(address[0])
        try:
            data: bytes | None = conn.recv(READ_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = None  # nothing yet: the transport reads it
        except OSError:  # reset before anything was read
            conn.close()
            return
        if data == b"":  # closed without a word
            conn.close()
            return
        if data:
            protocol.data_received(data)
            out = protocol.answered()
            if out is not None:
                try:
                    sent = conn.send(out, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:  # the client is gone
                    conn.close()
                    return
                if sent == len(out):
                    conn.close()
                    return
                protocol.unsent(out[sent:])
        conn.setblocking(False)
        task = self._loop.create_task(self._attach(protocol, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attach(self, protocol: Connection, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            conn.close()


# ----- processes ----------------------------------------------------------------


DEFER_ACCEPT = True  # TCP_DEFER_ACCEPT on the listening sockets (False: for measuring)


def listen_socket(host: str, port: int, *, share: bool = True) -> socket.socket:
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


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover  (uvloop is a dependency on Linux)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


Setup = Callable[["Services", asyncio.AbstractEventLoop], tuple[Worker, Callable[[], Connection]]]
"""Builds a worker process's :class:`Worker` and its protocol factory from its services."""


def run_worker(config: Config, host: str, port: int, master: int, setup: Setup) -> int:
    """One worker process: its own socket, services, loop."""
    from web.container import build_services

    loop = new_loop()
    asyncio.set_event_loop(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    services = build_services(config, run_migrations=False)
    worker, protocol = setup(services, loop)
    gc.freeze()  # what start-up made is not scanned by every collection
    sock = listen_socket(host, port)
    if DEFER_ACCEPT and hasattr(socket, "TCP_DEFER_ACCEPT"):
        # a connection is handed over once its request has arrived (nginx's "deferred"):
        # the accept and the first read come in one wake-up; HTTP clients speak first
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    acceptor = Acceptor(loop, sock, protocol)
    acceptor.start()

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
        acceptor.stop()
        sock.close()
        worker.close()
        services.dispose()
        loop.close()
    return 0


def serve(
    config: Config,
    host: str,
    port: int,
    workers: int,
    setup: Setup,
    *,
    name: str,
    banner: Callable[[str, int], str],
    parent_pid: int | None = None,
) -> int:
    """Bind, fork ``workers`` worker processes (each :func:`run_worker` with ``setup``)
    and keep them running until SIGTERM/SIGINT (or until ``parent_pid`` is gone).
    ``name`` names the server in log lines; ``banner(host, port)`` is printed (one line)
    once the address is bound. Returns the exit code."""
    # The master holds a bound (not listening) socket of the same SO_REUSEPORT group: it
    # checks the address before forking, turns port 0 into a real one, and keeps it.
    # First a bind without SO_REUSEPORT: it fails if anything listens there, also another
    # server (of another instance of the same user), which would otherwise silently
    # share the port and its traffic with us.
    with listen_socket(host, port, share=False) as probe:
        port = probe.getsockname()[1]
    reserve = listen_socket(host, port)
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
                code = run_worker(config, host, port, master, setup)
            except BaseException:
                log.exception("%s worker %d failed", name, os.getpid())
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    log.info("%s on %s:%d, %d worker processes %s", name, host, port, workers, sorted(children))
    print(banner(host, port), flush=True)
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
            log.warning("%s worker %d exited (status %d); starting another", name, pid, status)
            quick_failures = quick_failures + 1 if time.monotonic() - started < 5 else 0
            if quick_failures >= 5:
                log.error("%s workers keep failing at start; giving up", name)
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
