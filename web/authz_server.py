"""The dedicated access decision server: ``govpki authz serve`` (and a child of
``govpki serve`` when ``GOVPKI_AUTHZ_LISTEN`` is set).

Applications keep connections to a policy decision point and ask many small
questions; under Flask and gunicorn each costs ~0.9 ms of server CPU, forty times the
decision. This front serves only ``POST /api/v1/authz/decide`` and
``POST /api/v1/authz/decide/batch``, with the same request and answer JSON, limits,
problem documents and status codes as the app (both call :mod:`web.decide_core`), on
the HTTP machinery of :mod:`web.httpserver` (httptools, keep-alive, strict limits,
``GOVPKI_AUTHZ_WORKERS`` processes on one ``SO_REUSEPORT`` port). A body over 1 MiB is
refused from its head (413) whoever sends it; the app reads the credentials first.

Per worker process, the hot path touches no database:

* **Policy**: the compiled snapshot (:class:`~authz.decisions.DecisionService`); a
  background thread calls :meth:`~authz.decisions.DecisionService.refresh` every
  ``GOVPKI_AUTHZ_POLICY_REFRESH_MS`` (it reads the version row and rebuilds the
  snapshot when it moved), so a rebuild never runs on the event loop.
* **Credentials**: :class:`CredentialCache` keeps the applications that authenticated
  (by client id, with the SHA-256 of the secret they presented, compared in constant
  time). The same thread re-reads the cached applications every refresh interval and
  drops any that was disabled, removed or given another secret, and takes over changed
  scopes: a change is in force within the interval, as for the policy. A wrong secret
  is never cached: it goes to the database like an unknown client (a thread-pool read
  and SHA-256, as on the app), so failing is not cheaper than before.
* **Client certificates** (mutual TLS through the TLS front, as on the app): the
  ``X-Client-Cert`` / ``X-Client-Verify`` headers are believed only from a peer in
  ``GOVPKI_TRUSTED_PROXIES`` and only without an ``Authorization`` header.
  :class:`CertificateCache` keeps the applications whose bound certificate
  authenticated, by the SHA-256 of the two headers (no parsing on a hit); the refresh
  thread re-checks each (binding, application enabled, certificate still valid and not
  revoked) every interval. A failing certificate is never cached.
* A request whose credentials are not cached (first use, a wrong secret), or when the
  last refresh is older than :data:`STALE_INTERVALS` intervals (the database is away:
  nothing is answered from what may be out of date), goes to a small thread pool; that
  connection waits, the others go on. ``GOVPKI_AUTHZ_POLICY_REFRESH_MS=0`` (every
  decision reads the policy version) sends every request there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import http
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from authz.applications import ApplicationService, application_principal
from authz.certlogin import CertificateLoginService
from authz.decisions import Decision, DecisionService, Snapshot
from authz.models import Application
from authz.policy_schema import DecisionRequest
from govpki.config import Config
from govpki.errors import UnauthenticatedError
from govpki.principal import Principal
from web import decide_core, httpserver
from web.decide_core import BATCH_PATH, DECIDE_PATH, ApiAnswer
from web.httpserver import HttpReply
from web.problem_json import MEDIA_TYPE, document, dumps

if TYPE_CHECKING:
    from web.container import Services

log = logging.getLogger("govpki.web.authz_server")

DB_THREADS = 2
STALE_INTERVALS = 5  # a worker whose last refresh is older than this many intervals (and 5 s) answers from the db
MIN_STALE_SECONDS = 5.0
_DECIDE = DECIDE_PATH.encode()
_BATCH = BATCH_PATH.encode()
_PHRASES = {s.value: f"{s.value} {s.phrase}" for s in http.HTTPStatus}


def _reply(result: ApiAnswer, *, close: bool = False) -> HttpReply:
    headers = [("Content-Type", result.content_type), ("Content-Length", str(len(result.body))), *result.headers]
    return HttpReply(_PHRASES.get(result.status, f"{result.status} Error"), headers, result.body, close=close)


def _problem(status: int, detail: str, path: str, extra: tuple[tuple[str, str], ...] = ()) -> HttpReply:
    body = dumps(document(status, detail, code=f"http.{status}", instance=path)).encode()
    return _reply(ApiAnswer(status, MEDIA_TYPE, body, extra))


class NeedsDatabaseError(Exception):
    """The cached state cannot answer: the request goes to the thread pool."""


class CredentialCache:
    """Applications that authenticated in this process, re-checked every refresh."""

    def __init__(self, applications: ApplicationService) -> None:
        self._applications = applications
        self._entries: dict[str, tuple[str, Principal]] = {}  # client_id -> (secret SHA-256 hex, principal)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, client_id: str, secret: str) -> Principal | None:
        """The cached principal when ``secret`` is the one that authenticated; else None."""
        entry = self._entries.get(client_id)
        if entry is None:
            return None
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
        return entry[1] if hmac.compare_digest(entry[0], digest) else None

    def authenticate(self, session: Session, client_id: str, secret: str) -> Principal:
        """From the cache, or the database (and then cached). Raises UnauthenticatedError."""
        cached = self.lookup(client_id, secret)
        if cached is not None:
            return cached
        principal = self._applications.authenticate(session, client_id, secret)
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            self._entries = {**self._entries, client_id: (digest, principal)}
        return principal

    def refresh(self, session: Session) -> None:
        """Re-read every cached application: drop the disabled, removed and re-keyed ones,
        take over changed scopes and names."""
        entries = self._entries
        if not entries:
            return
        rows = {
            app.client_id: app
            for app in session.scalars(select(Application).where(Application.client_id.in_(list(entries))))
        }
        with self._lock:
            fresh: dict[str, tuple[str, Principal]] = {}
            for client_id, (digest, principal) in self._entries.items():
                if client_id not in entries:  # authenticated against the database since the read above
                    fresh[client_id] = (digest, principal)
                    continue
                app = rows.get(client_id)
                if (
                    app is not None
                    and not app.disabled
                    and app.secret_sha256 is not None
                    and hmac.compare_digest(app.secret_sha256, digest)
                ):
                    fresh[client_id] = (digest, application_principal(app))
            self._entries = fresh


def _certificate_key(cert_header: str, verify_header: str | None) -> bytes:
    return hashlib.sha256(f"{cert_header}\n{verify_header}".encode("utf-8", "surrogatepass")).digest()


class CertificateCache:
    """Applications that authenticated by their bound client certificate in this process
    (keyed by the headers the trusted front passed on), re-checked every refresh."""

    def __init__(self, certlogin: CertificateLoginService) -> None:
        self._certlogin = certlogin
        # SHA-256 of the headers -> (certificate header, verify header, principal)
        self._entries: dict[bytes, tuple[str, str | None, Principal]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, cert_header: str, verify_header: str | None) -> Principal | None:
        entry = self._entries.get(_certificate_key(cert_header, verify_header))
        return None if entry is None else entry[2]

    def authenticate(self, session: Session, cert_header: str, verify_header: str | None) -> Principal:
        """From the cache, or checked now (and then cached). Raises UnauthenticatedError.
        The caller has checked that the headers came from a trusted front."""
        key = _certificate_key(cert_header, verify_header)
        entry = self._entries.get(key)
        if entry is not None:
            return entry[2]
        principal = self._certlogin.application_of_certificate(session, cert_header, verify_header)
        with self._lock:
            self._entries = {**self._entries, key: (cert_header, verify_header, principal)}
        return principal

    def refresh(self, session: Session) -> None:
        """Check every cached certificate again: drop those no longer bound to an enabled
        application or no longer valid (revoked, expired), take over changed scopes."""
        entries = self._entries
        if not entries:
            return
        checked: dict[bytes, Principal] = {}
        for key, (cert_header, verify_header, _principal) in entries.items():
            try:
                checked[key] = self._certlogin.application_of_certificate(session, cert_header, verify_header)
            except UnauthenticatedError:
                continue
        with self._lock:
            fresh: dict[bytes, tuple[str, str | None, Principal]] = {}
            for key, (cert_header, verify_header, principal) in self._entries.items():
                if key not in entries:  # authenticated since the checks above
                    fresh[key] = (cert_header, verify_header, principal)
                elif key in checked:
                    fresh[key] = (cert_header, verify_header, checked[key])
            self._entries = fresh


class _Worker(httpserver.Worker):
    """One process's shared state: the services, the credential cache, the policy
    snapshot, and the thread that keeps both fresh."""

    def __init__(self, services: Services, pool: concurrent.futures.Executor) -> None:
        super().__init__(pool)
        self.decisions: DecisionService = services.decisions
        self.applications: ApplicationService = services.applications
        self.sessions: sessionmaker[Session] = services.sessions
        self.credentials = CredentialCache(services.applications)
        self.certlogin: CertificateLoginService = services.certlogin
        self.certificates = CertificateCache(services.certlogin)
        self.interval = services.decisions.refresh_seconds
        self.stale_after = max(STALE_INTERVALS * self.interval, MIN_STALE_SECONDS)
        self.snapshot: Snapshot | None = None
        self.refreshed = float("-inf")  # time.monotonic() of the last successful refresh
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fast = _CachedDecider(self)

    def refresh(self) -> None:
        with self.sessions() as session:
            snapshot = self.decisions.refresh(session)
            self.credentials.refresh(session)
            self.certificates.refresh(session)
            session.rollback()
        self.snapshot = snapshot
        self.refreshed = time.monotonic()
        self.refreshes += 1

    def start(self) -> None:
        """Load the policy now; then refresh in a background thread (none when the
        interval is 0: every request then goes to the database)."""
        self.refresh()
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="authz-refresh", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing the policy and credentials failed; retrying in %.3f s", self.interval)

    def current(self) -> Snapshot | None:
        """The snapshot to decide on in the event loop, or None: go to the database."""
        if self.interval <= 0 or time.monotonic() - self.refreshed > self.stale_after:
            return None
        return self.snapshot

    def close(self) -> None:
        self._stop.set()
        super().close()

    # -- the database path (in the pool) ---------------------------------------------

    def answer_from_db(self, call: _Call, batch: bool) -> ApiAnswer:
        with self.sessions() as session:
            result = decide_core.answer(
                call.path,
                batch=batch,
                authorization=call.authorization,
                content_type=call.content_type,
                content_length=call.content_length,
                read_body=call.read_body,
                decider=_DbDecider(self, session, call.certificate),
            )
            session.rollback()
            return result


class _CachedDecider:
    """The event loop's: cached credentials, the kept snapshot; NeedsDatabaseError otherwise."""

    def __init__(self, worker: _Worker, certificate: tuple[str, str | None] | None = None) -> None:
        self._worker = worker
        self._decisions = worker.decisions
        self._credentials = worker.credentials
        self._certificate = certificate  # from a trusted front: (X-Client-Cert, X-Client-Verify)

    def authenticate(self, client_id: str, secret: str) -> Principal:
        principal = self._credentials.lookup(client_id, secret)
        if principal is None:
            raise NeedsDatabaseError
        return principal

    def certificate_client(self) -> Principal | None:
        if self._certificate is None:
            return None
        principal = self._worker.certificates.lookup(*self._certificate)
        if principal is None:
            raise NeedsDatabaseError
        return principal

    def decide(self, principal: Principal, item: DecisionRequest) -> Decision:
        snapshot = self._worker.current()
        if snapshot is None:  # pragma: no cover  (checked before; a refresh failing just now)
            raise NeedsDatabaseError
        return self._decisions.decide_on(snapshot, principal, item)

    def decide_many(self, principal: Principal, items: Sequence[DecisionRequest]) -> list[Decision]:
        snapshot = self._worker.current()
        if snapshot is None:  # pragma: no cover
            raise NeedsDatabaseError
        return self._decisions.decide_many_on(snapshot, principal, items)


class _DbDecider:
    """The pool's: credentials through the cache or the database, decisions as the app makes them."""

    def __init__(self, worker: _Worker, session: Session, certificate: tuple[str, str | None] | None) -> None:
        self._worker = worker
        self._session = session
        self._certificate = certificate

    def authenticate(self, client_id: str, secret: str) -> Principal:
        if self._worker.current() is None:  # no refresh keeps the cache honest: the database alone
            return self._worker.applications.authenticate(self._session, client_id, secret)
        return self._worker.credentials.authenticate(self._session, client_id, secret)

    def certificate_client(self) -> Principal | None:
        if self._certificate is None:
            return None
        if self._worker.current() is None:  # as for client secrets: the database alone
            return self._worker.certlogin.application_of_certificate(self._session, *self._certificate)
        return self._worker.certificates.authenticate(self._session, *self._certificate)

    def decide(self, principal: Principal, item: DecisionRequest) -> Decision:
        return self._worker.decisions.decide(self._session, principal, item)

    def decide_many(self, principal: Principal, items: Sequence[DecisionRequest]) -> list[Decision]:
        return self._worker.decisions.decide_many(self._session, principal, items)


class _Call:
    __slots__ = (
        "authorization",
        "body",
        "certificate",
        "content_length",
        "content_type",
        "keep_alive",
        "method",
        "path",
        "url",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        authorization: str | None,
        content_type: str | None,
        content_length: int | None,
        body: bytes,
        keep_alive: bool,
        certificate: tuple[str, str | None] | None = None,
    ) -> None:
        self.method = method
        self.certificate = certificate  # headers of a trusted front, without Authorization only
        self.url = url
        self.path = ""
        self.authorization = authorization
        self.content_type = content_type
        self.content_length = content_length
        self.body = body
        self.keep_alive = keep_alive

    def read_body(self) -> bytes:
        return self.body


class _Connection(httpserver.Connection):
    """One client connection: the two endpoints, answered in order."""

    __slots__ = (
        "_authorization",
        "_client_cert",
        "_client_verify",
        "_content_type",
        "_expect_continue",
        "_peer_trusted",
    )
    _worker: _Worker
    max_body = decide_core.MAX_BATCH_BODY

    def __init__(self, worker: _Worker, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(worker, loop)
        self._authorization: bytes | None = None
        self._content_type: bytes | None = None
        self._expect_continue = False
        self._client_cert: bytes | None = None
        self._client_verify: bytes | None = None
        self._peer_trusted: bool | None = None  # whether the peer is a trusted front (once asked)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._authorization = None
        self._content_type = None
        self._expect_continue = False
        self._client_cert = None
        self._client_verify = None

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        if size == 13 and name.lower() == b"authorization":
            self._authorization = value
        elif size == 13 and name.lower() == b"x-client-cert":
            if self._client_cert is None:  # the first, as the app reads it
                self._client_cert = value
        elif size == 15 and name.lower() == b"x-client-verify":
            if self._client_verify is None:
                self._client_verify = value
        elif size == 12 and name.lower() == b"content-type":
            self._content_type = value
        elif size == 6 and name.lower() == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # a client that waits for "100 Continue" before its body (curl with a big batch)
        if self._expect_continue and self._content_length and not self._queue and not self._busy:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def too_large(self) -> HttpReply:
        path = unquote(bytes(self._url).partition(b"?")[0].decode("latin-1"), encoding="latin-1")
        return _reply(decide_core.too_large(decide_core.limit_of(path != DECIDE_PATH), path), close=True)

    def _certificate(self) -> tuple[str, str | None] | None:
        """The client certificate headers, when there is no Authorization header and the
        peer is a trusted front (as ``web.api_events.certificate_client`` decides)."""
        cert = self._client_cert
        if not cert or self._authorization is not None:
            return None
        if self._peer_trusted is None:
            self._peer_trusted = self._worker.certlogin.trusted(self.peer)
        if not self._peer_trusted:
            return None
        verify = self._client_verify
        return cert.decode("latin-1"), None if verify is None else verify.decode("latin-1")

    def on_message_complete(self) -> None:
        keep_alive = self.message_done()
        parser = self._parser
        self.queue_request(
            _Call(
                parser.get_method(),
                bytes(self._url),
                None if self._authorization is None else self._authorization.decode("latin-1"),
                None if self._content_type is None else self._content_type.decode("latin-1"),
                self._content_length,
                bytes(self._body),
                keep_alive,
                self._certificate(),
            )
        )

    def handle(self, call: _Call) -> None:
        keep_alive = call.keep_alive
        target = call.url.partition(b"?")[0]
        if target == _DECIDE:
            batch, call.path = False, DECIDE_PATH
        elif target == _BATCH:
            batch, call.path = True, BATCH_PATH
        else:
            path = unquote(target.decode("latin-1"), encoding="latin-1")
            if path not in (DECIDE_PATH, BATCH_PATH):
                detail = f"the decision server answers only POST {DECIDE_PATH} and POST {BATCH_PATH}"
                self.send(_problem(404, detail, path), keep_alive=keep_alive)
                return
            batch, call.path = path == BATCH_PATH, path
        if call.method != b"POST":
            self.send(
                _problem(405, "The method is not allowed for the requested URL.", call.path, (("Allow", "POST"),)),
                keep_alive=keep_alive,
            )
            return
        worker = self._worker
        if worker.current() is not None:
            try:
                result = decide_core.answer(
                    call.path,
                    batch=batch,
                    authorization=call.authorization,
                    content_type=call.content_type,
                    content_length=call.content_length,
                    read_body=call.read_body,
                    decider=worker.fast if call.certificate is None else _CachedDecider(worker, call.certificate),
                )
            except NeedsDatabaseError:
                pass
            except Exception:  # never a dead connection handler
                log.exception("deciding failed on %s", call.path)
                self.send(_reply(decide_core.internal_error(call.path)), keep_alive=keep_alive)
                return
            else:
                self.send(_reply(result), keep_alive=keep_alive)
                return
        self.offload(lambda: worker.answer_from_db(call, batch), _reply, lambda: _failed(call.path), keep_alive)


def _failed(path: str) -> HttpReply:
    log.exception("deciding failed on %s", path)
    return _reply(decide_core.internal_error(path))


# ----- processes ----------------------------------------------------------------


def _setup(services: Services, loop: asyncio.AbstractEventLoop) -> tuple[_Worker, Any]:
    pool = concurrent.futures.ThreadPoolExecutor(DB_THREADS, thread_name_prefix="authz-db")
    worker = _Worker(services, pool)
    worker.start()
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
        name="access decision server",
        banner=lambda h, p: (
            f"govpki access decision server listening on http://{h}:{p}{DECIDE_PATH} ({workers} processes)"
        ),
        parent_pid=parent_pid,
    )
