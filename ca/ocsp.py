"""The OCSP responder (RFC 6960, RFC 5019 profile): delegated responders and pre-signed responses.

* **Delegated responders.** Each online issuing CA has an OCSP signing certificate
  (profile ``ocsp-signing``: id-kp-OCSPSigning, ocsp-nocheck) issued through the normal
  pipeline, its key in the online key store. :meth:`OcspService.ensure_responder` makes
  one and rotates it when less than the key policy's ``ocsp_signing`` overlap is left
  (its certificate lives the policy's ``lifetime_days``); the old one
  is retired (audited) but stays valid until it expires, so the responses it signed keep
  verifying until they are re-signed. The CA key never signs a response.
* **Pre-signed responses** (``ocsp_responses``, one per CA, serial and CertID hash):
  the hot path (:meth:`OcspService.respond`) looks the bytes up by primary key and
  returns them. A status change re-signs the certificate's responses in its own
  transaction (:meth:`OcspService.on_status_change`, a ``RevocationService`` listener);
  :meth:`OcspService.refresh_due` re-signs responses older than ``ocsp_refresh_hours``
  (well before nextUpdate, and so also every response of a retired responder) and
  pre-signs SHA-1 responses for issued certificates that have none. SHA-256 CertIDs are
  signed on first request and stored. Requests with a nonce, and messages with several
  requests, are signed per request (by the responder key).
* **Unknown** (a serial this CA never signed: no record, or ``reserved``/``failed``) is
  signed on request and never stored, so junk serials cannot fill the table.
* **Expired certificates** are still answered from their record (RFC 6960 §2.2 allows
  it): their status can no longer change. ``refresh_due`` does not keep responses for
  them; they are signed on request.
* **The root** is offline and has no responder: requests whose issuer is the root (the
  issuing CA certificates) get ``unauthorized``; the root's ARL covers them.

Errors never escape the hot path: garbage is ``malformedRequest``, an issuer we do not
serve ``unauthorized``, no usable responder ``tryLater``, anything else ``internalError``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import hashlib
import logging
import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from asn1crypto import core as acore
from asn1crypto import ocsp as aocsp
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.x509 import ocsp as cocsp
from sqlalchemy import Connection, Engine, Row, Table, and_, bindparam, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ca.events import CaEvent
from ca.models import (
    POSSIBLY_ISSUED,
    CaKind,
    CertificateAuthority,
    CertificateRecord,
    OcspResponder,
    OcspResponse,
    RevocationReason,
)
from ca.services import CaService, can_issue, can_read
from govpki import audit
from govpki.clock import Clock
from govpki.config import KeyAlgorithm
from govpki.db import UTCDateTime, WriteGate
from govpki.errors import ForbiddenError, InvalidError
from govpki.principal import Principal
from keymgmt.interfaces import KeyStore, SignerHandle, signature_hash
from keymgmt.policy import KeyPurpose, load_key_policy
from keymgmt.services import KeyService

log = logging.getLogger("govpki.ocsp")

MAX_REQUEST_BYTES = 64 * 1024  # an OCSP request is a few hundred bytes
MAX_REQUESTS_PER_MESSAGE = 64
NONCE_MIN, NONCE_MAX = 1, 32  # RFC 8954 §2.1
STORED_HASHES = ("sha1", "sha256")  # CertID hashes kept pre-signed; sha384/sha512 are signed per request
_ISSUING = CaKind.ISSUING.value
READER_CACHE_KIB = 64 * 1024  # the hot path's SQLite page cache per connection (KiB)
PRESIGNED_HASH = "sha1"  # what refresh_due pre-signs in bulk (RFC 5019 clients use SHA-1 CertIDs)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
UNKNOWN_VALIDITY = _dt.timedelta(hours=1)  # nextUpdate of an "unknown" answer
RESPONDER_CACHE_SECONDS = 60.0  # how long a process trusts its view of the active responder
ISSUER_RELOAD_SECONDS = 5.0  # at most this often an unknown issuer reloads the CA list

_REASONS = {
    RevocationReason.UNSPECIFIED.value: "unspecified",
    RevocationReason.KEY_COMPROMISE.value: "key_compromise",
    RevocationReason.CA_COMPROMISE.value: "ca_compromise",
    RevocationReason.AFFILIATION_CHANGED.value: "affiliation_changed",
    RevocationReason.SUPERSEDED.value: "superseded",
    RevocationReason.CESSATION_OF_OPERATION.value: "cessation_of_operation",
    RevocationReason.CERTIFICATE_HOLD.value: "certificate_hold",
    RevocationReason.PRIVILEGE_WITHDRAWN.value: "privilege_withdrawn",
    RevocationReason.AA_COMPROMISE.value: "aa_compromise",
}


class OcspStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 §4.2.1)."""

    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


def error_response(status: OcspStatus) -> bytes:
    """An unsigned OCSPResponse carrying only an error status."""
    return bytes(aocsp.OCSPResponse({"response_status": status.value}).dump())


_ERRORS: dict[OcspStatus, bytes] = {
    status: error_response(status) for status in OcspStatus if status is not OcspStatus.SUCCESSFUL
}


@dataclass(frozen=True)
class OcspAnswer:
    """What the HTTP layer sends: the DER, and for successful answers their validity
    (for RFC 5019 cache headers; ``cacheable`` is false for nonce'd answers)."""

    der: bytes
    status: OcspStatus
    this_update: _dt.datetime | None = None
    next_update: _dt.datetime | None = None
    cacheable: bool = False


def _error(status: OcspStatus) -> OcspAnswer:
    return OcspAnswer(_ERRORS[status], status)


class _RefusedError(Exception):
    def __init__(self, status: OcspStatus) -> None:
        super().__init__(status.name)
        self.status = status


@dataclass(frozen=True)
class _Issuer:
    ca_id: int
    kind: str
    name_hashes: Mapping[str, bytes]
    key_hashes: Mapping[str, bytes]


@dataclass
class _ActiveResponder:
    id: int
    ca_id: int
    cert: ax509.Certificate
    signer: SignerHandle
    key_hash: bytes  # SHA-1 of the responder's public key (ResponderID byKey)
    key_store: str
    key_handle: str
    algorithm: str  # asn1crypto signature algorithm name
    hash: hashes.HashAlgorithm
    not_after: _dt.datetime
    loaded: float


@dataclass(frozen=True)
class _Query:
    """One CertID of a request."""

    hash_algorithm: str
    name_hash: bytes
    key_hash: bytes
    serial: int

    def cert_id(self) -> aocsp.CertId:
        return aocsp.CertId(
            {
                "hash_algorithm": {"algorithm": self.hash_algorithm, "parameters": acore.Null()},
                "issuer_name_hash": self.name_hash,
                "issuer_key_hash": self.key_hash,
                "serial_number": self.serial,
            }
        )


@dataclass(frozen=True)
class _Status:
    """What one SingleResponse says."""

    kind: str  # good | revoked | unknown
    reason: str | None = None
    revoked_at: _dt.datetime | None = None
    status_seq: int = 0
    storable: bool = False  # a certificate record exists and may have been signed


@dataclass
class RefreshReport:
    rotated: list[int] = field(default_factory=list)  # CA ids that got a new responder
    resigned: int = 0  # stale responses signed again
    presigned: int = 0  # new responses for certificates that had none
    dropped: int = 0  # stored responses of expired certificates removed (answered on request)

    @property
    def total(self) -> int:
        return self.resigned + self.presigned + self.dropped


_T_RESP = cast(Table, OcspResponse.__table__)
_T_CERT = cast(Table, CertificateRecord.__table__)
_LOOKUP = select(_T_RESP.c.der, _T_RESP.c.this_update, _T_RESP.c.next_update).where(
    _T_RESP.c.ca_id == bindparam("ca_id"),
    _T_RESP.c.serial == bindparam("serial"),
    _T_RESP.c.hash_algorithm == bindparam("alg"),
)
# the hot path's read: the DER of a stored answer that is fresh at :now (compared in SQL,
# so nothing is converted in Python when it is)
_LOOKUP_FRESH = select(_T_RESP.c.der).where(
    _T_RESP.c.ca_id == bindparam("ca_id"),
    _T_RESP.c.serial == bindparam("serial"),
    _T_RESP.c.hash_algorithm == bindparam("alg"),
    _T_RESP.c.this_update <= bindparam("now", type_=UTCDateTime()),
    _T_RESP.c.next_update > bindparam("now", type_=UTCDateTime()),
)
_RECORD = select(
    _T_CERT.c.ca_id,
    _T_CERT.c.state,
    _T_CERT.c.revocation_reason,
    _T_CERT.c.revoked_at,
    _T_CERT.c.status_seq,
).where(_T_CERT.c.serial == bindparam("serial"))


class _StoredReader:
    """The hot path's read of a stored answer on a DB-API connection of its own per
    thread (taken from the engine, so with its connect-time settings, then detached from
    the pool; autocommit, so every read sees what is committed). SQLAlchemy Core's
    execution path (pool checkout and reset, execution context, result object) costs
    more than the primary-key read itself. The SQL and the column conversions are still
    SQLAlchemy's: ``_LOOKUP`` compiled for the engine's dialect and its columns' result
    processors. An error drops the connection; the caller then takes the Core path."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        dialect = engine.dialect
        compiled = _LOOKUP.compile(dialect=dialect)
        self._sql = compiled.string
        self._order: list[str] | None = list(compiled.positiontup or []) if compiled.positional else None
        self._processors = [
            col.type.dialect_impl(dialect).result_processor(dialect, None) for col in _LOOKUP.selected_columns
        ]
        self._sqlite = dialect.name == "sqlite"
        fresh = _LOOKUP_FRESH.compile(dialect=dialect)
        self._fresh_sql = fresh.string
        # positional DB-API styles (SQLite's qmark): the values (ca_id, serial, alg, now) in the
        # statement's order, picked in C; named styles (psycopg) take a dict
        names = ("ca_id", "serial", "alg", "now")
        self._fresh_pick: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = (
            operator.itemgetter(*(names.index(name) for name in fresh.positiontup or ())) if fresh.positional else None
        )
        self._now_bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        self._now_key: _dt.datetime | None = None
        self._now_value: Any = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            fairy = self._engine.raw_connection()
            fairy.detach()
            conn = cast(Any, fairy.dbapi_connection)
            if self._sqlite:
                # the answers asked for stay in this connection's page cache (SQLite's default
                # is 2 MiB: a few thousand answers), not read again from the file each time
                conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            else:
                conn.rollback()
                conn.autocommit = True
            self._local.conn = conn
            self._local.cursor = None
            with self._lock:
                self._open.append(conn)
        return conn

    def read_fresh(self, ca_id: int, serial: str, alg: str, now: _dt.datetime) -> bytes | None:
        """The DER of the stored answer when it is fresh at ``now`` (whole seconds), else
        ``None``. The hot path: one statement on this thread's cursor, kept open."""
        conn = self._connection()
        if now != self._now_key:  # the bound form of ``now`` changes once a second
            value = now if self._now_bind is None else self._now_bind(now)
            self._now_key, self._now_value = now, value
        else:
            value = self._now_value
        pick = self._fresh_pick
        params: Any = (
            {"ca_id": ca_id, "serial": serial, "alg": alg, "now": value}
            if pick is None
            else pick((ca_id, serial, alg, value))
        )
        try:
            cursor = self._local.cursor
            if cursor is None:
                cursor = self._local.cursor = conn.cursor()
            cursor.execute(self._fresh_sql, params)
            row = cursor.fetchone()
            if self._sqlite and conn.in_transaction:
                conn.rollback()
        except Exception:
            self._drop(conn)
            raise
        return None if row is None else bytes(row[0])

    def read(self, ca_id: int, serial: str, alg: str) -> tuple[bytes, _dt.datetime, _dt.datetime] | None:
        conn = self._connection()
        values: dict[str, Any] = {"ca_id": ca_id, "serial": serial, "alg": alg}
        params: Any = values if self._order is None else tuple(values[name] for name in self._order)
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(self._sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
            if self._sqlite and conn.in_transaction:
                conn.rollback()
        except Exception:
            self._drop(conn)
            raise
        if row is None:
            return None
        converted: list[Any] = [
            value if process is None else process(value) for process, value in zip(self._processors, row, strict=True)
        ]
        return bytes(converted[0]), converted[1], converted[2]

    def _drop(self, conn: Any) -> None:
        self._local.conn = None
        self._local.cursor = None
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close every thread's connection (at shutdown: none may be in use)."""
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()


def _now_seconds(clock: Clock) -> _dt.datetime:
    return clock.now().replace(microsecond=0)


def _status_of_row(state: str | None, reason: str | None, revoked_at: _dt.datetime | None, seq: int) -> _Status:
    """The same rules as ``ca.revocation.status_of``: never signed → unknown; on hold →
    revoked with certificateHold."""
    if state is None or state not in POSSIBLY_ISSUED:
        return _Status("unknown")
    if reason is None:
        return _Status("good", status_seq=seq, storable=True)
    return _Status("revoked", reason, revoked_at, seq, storable=True)


def _issuer_hashes(cert_der: bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
    cert = ax509.Certificate.load(cert_der)
    name_der = cert.subject.dump()
    key_bits = cert.public_key["public_key"].contents[1:]  # the BIT STRING's value, without unused-bits octet
    names = {alg: hashlib.new(alg, name_der).digest() for alg in _HASHES}
    keys = {alg: hashlib.new(alg, key_bits).digest() for alg in _HASHES}
    return names, keys


def cert_id_hashes(issuer_der: bytes, algorithm: str = "sha1") -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of an issuer certificate for a CertID hash."""
    names, keys = _issuer_hashes(issuer_der)
    return names[algorithm], keys[algorithm]


def _insert_for(dialect: str) -> Any:
    return postgresql.insert(_T_RESP) if dialect == "postgresql" else sqlite.insert(_T_RESP)


def _upsert(target: Session | Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace stored responses — but never replace one made from a newer status
    (a concurrent status change wins over a refresh that read the record before it)."""
    if not rows:
        return
    bind = target.get_bind() if isinstance(target, Session) else target
    stmt = _insert_for(bind.dialect.name)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_T_RESP.c.ca_id, _T_RESP.c.serial, _T_RESP.c.hash_algorithm],
        set_={
            "status_seq": stmt.excluded.status_seq,
            "responder_id": stmt.excluded.responder_id,
            "this_update": stmt.excluded.this_update,
            "next_update": stmt.excluded.next_update,
            "der": stmt.excluded.der,
        },
        where=_T_RESP.c.status_seq <= stmt.excluded.status_seq,
    )
    target.execute(stmt, list(rows))


class OcspService:
    def __init__(
        self,
        *,
        ca: CaService,
        keystores: Mapping[str, KeyStore],
        engine: Engine,
        gate: WriteGate,
        clock: Clock,
        validity_hours: int = 24,
        refresh_hours: int = 12,
        responder_days: int = 30,
        renew_days: int = 7,
        key_algorithm: KeyAlgorithm = "ec-p256",
        keys: KeyService | None = None,
    ) -> None:
        self._keys = keys or KeyService(keystores, clock, load_key_policy())
        self._keys.check_algorithm(KeyPurpose.OCSP_SIGNING, key_algorithm, "ocsp_key_algorithm")
        if refresh_hours >= validity_hours:
            raise InvalidError("must be less than ocsp_validity_hours", field="ocsp_refresh_hours")
        if renew_days >= responder_days:
            raise InvalidError("must be less than ocsp_responder_days", field="ocsp_responder_renew_days")
        self._ca = ca
        self._keystores = keystores
        self._engine = engine
        self._gate = gate
        self._clock = clock
        self.validity = _dt.timedelta(hours=validity_hours)
        self.refresh_age = _dt.timedelta(hours=refresh_hours)
        self.responder_days = responder_days
        self.renew = _dt.timedelta(days=renew_days)
        self.key_algorithm = key_algorithm
        self._lock = threading.Lock()
        self._issuers: dict[tuple[str, bytes, bytes], _Issuer] = {}
        self._issuers_loaded = float("-inf")
        self._responders: dict[int, _ActiveResponder | None] = {}
        self._reader = _StoredReader(engine)

    def close(self) -> None:
        """Close the hot path's own database connections (``Services.dispose``)."""
        self._reader.close()

    # ----- responders ------------------------------------------------------

    def active_responder(self, session: Session, ca_id: int) -> OcspResponder | None:
        return session.scalars(
            select(OcspResponder)
            .where(OcspResponder.ca_id == ca_id, OcspResponder.active.is_(True))
            .order_by(OcspResponder.id.desc())
        ).first()

    def list_responders(self, session: Session, principal: Principal) -> list[OcspResponder]:
        if not can_read(principal):
            raise ForbiddenError("your role may not read OCSP responders")
        return list(session.scalars(select(OcspResponder).order_by(OcspResponder.id)))

    def ensure_responder(
        self, session: Session, principal: Principal, ca: CertificateAuthority, *, force: bool = False
    ) -> OcspResponder:
        """The CA's active responder; a new one when there is none, less than the renew
        window (the key policy's ocsp_signing overlap) is left, or ``force`` (the old one is
        retired: it signs no more, and its key record stays active, for verification, until
        its certificate expires). Issues through ``CaService.issue``, so the session must
        hold no uncommitted writes; the caller commits the responder row."""
        if not can_issue(principal):
            raise ForbiddenError("your role may not manage OCSP responders", field="ca")
        if ca.kind != CaKind.ISSUING.value:
            raise InvalidError(
                "the root CA is offline and has no OCSP responder; its ARL covers the CAs it certifies", field="ca"
            )
        now = self._clock.now()
        current = self.active_responder(session, ca.id)
        if current is not None and current.not_after - now > self.renew and not force:
            return current
        store_name = "online"
        store = self._keystores[store_name]
        handle = store.generate(f"ocsp-{ca.id}-{now:%Y%m%d%H%M%S}-{now.microsecond:06d}", self.key_algorithm)
        signer = store.signer(handle)
        cn = f"{ca.name} OCSP"
        if len(cn.encode("utf-8")) > 64:
            cn = f"OCSP responder CA {ca.id}"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
            .sign(signer, signature_hash(signer.public_key()))
        )
        record = self._ca.issue(
            session,
            principal,
            profile="ocsp-signing",
            csr=csr.public_bytes(serialization.Encoding.DER),
            issuer_id=ca.id,
            validity_days=self.responder_days,
        )
        assert record.cert_der is not None and record.not_before is not None and record.not_after is not None
        responder = OcspResponder(
            ca_id=ca.id,
            key_store=store_name,
            key_handle=handle,
            certificate_id=record.id,
            cert_der=record.cert_der,
            not_before=record.not_before,
            not_after=record.not_after,
            active=True,
            created_at=now,
        )
        session.add(responder)
        session.flush()
        self._keys.register(
            session,
            principal,
            purpose=KeyPurpose.OCSP_SIGNING,
            store=store_name,
            handle=handle,
            algorithm=self.key_algorithm,
            public_key=signer.public_key(),
            description=f"OCSP responder {responder.id} of CA {ca.id}",
            use_until=record.not_after,
        )
        audit.record(
            session,
            principal,
            CaEvent.OCSP_RESPONDER_CREATE.value,
            object_type="ocsp_responder",
            object_id=str(responder.id),
            details={
                "ca_id": ca.id,
                "serial": record.serial,
                "key_store": store_name,
                "key_handle": handle,
                "key_algorithm": self.key_algorithm,
                "not_after": record.not_after.isoformat(),
                "replaces": current.id if current is not None else None,
            },
            clock=self._clock,
        )
        old = session.scalars(
            select(OcspResponder).where(
                OcspResponder.ca_id == ca.id, OcspResponder.active.is_(True), OcspResponder.id != responder.id
            )
        ).all()
        for retired in old:
            retired.active = False
            session.flush()
            audit.record(
                session,
                principal,
                CaEvent.OCSP_RESPONDER_RETIRE.value,
                object_type="ocsp_responder",
                object_id=str(retired.id),
                details={"ca_id": ca.id, "replaced_by": responder.id, "not_after": retired.not_after.isoformat()},
                clock=self._clock,
            )
        with self._lock:
            self._responders.pop(ca.id, None)
        return responder

    def rotate_all(
        self, session: Session, principal: Principal, checkpoint: Callable[[], None] | None = None
    ) -> list[str]:
        """A new responder (and key) now for every active issuing CA: ``KeyService``'s
        rotator for ocsp_signing keys (``govpki keys rotate ocsp_signing``). Issues
        certificates: call with a session holding no uncommitted writes; with several CAs,
        ``checkpoint`` (typically ``session.commit``) is called between them, and without
        it only the first is rotated."""
        lines: list[str] = []
        for ca in self._due_cas(session):
            if audit.holds_audit_lock(session) or session.new or session.dirty:
                if checkpoint is None:
                    lines.append("more issuing CAs: run again to rotate their responders")
                    break
                checkpoint()  # each issuance needs a clean session (see ca.ledger)
            made = self.ensure_responder(session, principal, ca, force=True)
            lines.append(f"new OCSP responder {made.id} for CA {ca.id} (until {made.not_after:%Y-%m-%d})")
        return lines

    def _load_responder(self, row: OcspResponder | Row[Any]) -> _ActiveResponder:
        signer = self._keystores[row.key_store].signer(row.key_handle)
        cert = ax509.Certificate.load(row.cert_der)
        public = signer.public_key()
        sig_hash = signature_hash(public)
        kind = "ecdsa" if isinstance(public, ec.EllipticCurvePublicKey) else "rsa"
        return _ActiveResponder(
            id=row.id,
            ca_id=row.ca_id,
            cert=cert,
            signer=signer,
            key_hash=cert.public_key.sha1,
            key_store=row.key_store,
            key_handle=row.key_handle,
            algorithm=f"{sig_hash.name}_{kind}",
            hash=sig_hash,
            not_after=row.not_after,
            loaded=time.monotonic(),
        )

    def _responder_for(self, conn: Connection | Session, ca_id: int, *, fresh: bool = False) -> _ActiveResponder | None:
        """The CA's newest active, unexpired responder (cached per process for a minute)."""
        now = self._clock.now()
        with self._lock:
            cached = self._responders.get(ca_id)
        if (
            not fresh
            and cached is not None
            and time.monotonic() - cached.loaded < RESPONDER_CACHE_SECONDS
            and cached.not_after > now
        ):
            return cached
        t = cast(Table, OcspResponder.__table__)
        row = conn.execute(
            select(t)
            .where(t.c.ca_id == ca_id, t.c.active.is_(True), t.c.not_after > now)
            .order_by(t.c.id.desc())
            .limit(1)
        ).first()
        if row is None:
            with self._lock:
                self._responders.pop(ca_id, None)
            return None
        if cached is not None and cached.id == row.id:
            cached.loaded = time.monotonic()
            return cached
        loaded = self._load_responder(row)
        with self._lock:
            self._responders[ca_id] = loaded
        return loaded

    # ----- issuers ---------------------------------------------------------

    def _load_issuers(self, conn: Connection | Session) -> None:
        t = cast(Table, CertificateAuthority.__table__)
        issuers: dict[tuple[str, bytes, bytes], _Issuer] = {}
        for ca_id, kind, der in conn.execute(select(t.c.id, t.c.kind, t.c.cert_der)):
            names, keys = _issuer_hashes(der)
            issuer = _Issuer(ca_id, kind, names, keys)
            for alg in _HASHES:
                issuers[(alg, names[alg], keys[alg])] = issuer
        with self._lock:
            self._issuers = issuers
            self._issuers_loaded = time.monotonic()

    def _issuer(self, conn: Connection, query: _Query) -> _Issuer | None:
        key = (query.hash_algorithm, query.name_hash, query.key_hash)
        issuer = self._issuers.get(key)
        if issuer is None and time.monotonic() - self._issuers_loaded > ISSUER_RELOAD_SECONDS:
            self._load_issuers(conn)
            issuer = self._issuers.get(key)
        return issuer

    # ----- signing ---------------------------------------------------------

    def _single(self, query: _Query, status: _Status, this_update: _dt.datetime) -> tuple[Any, _dt.datetime]:
        if status.kind == "good":
            cert_status = aocsp.CertStatus(name="good", value=acore.Null())
            next_update = this_update + self.validity
        elif status.kind == "revoked":
            assert status.revoked_at is not None
            info: dict[str, Any] = {"revocation_time": status.revoked_at.replace(microsecond=0)}
            if status.reason is not None:
                info["revocation_reason"] = _REASONS.get(status.reason, "unspecified")
            cert_status = aocsp.CertStatus(name="revoked", value=aocsp.RevokedInfo(info))
            next_update = this_update + self.validity
        else:
            cert_status = aocsp.CertStatus(name="unknown", value=acore.Null())
            next_update = this_update + min(self.validity, UNKNOWN_VALIDITY)
        single = aocsp.SingleResponse(
            {
                "cert_id": query.cert_id(),
                "cert_status": cert_status,
                "this_update": this_update,
                "next_update": next_update,
            }
        )
        return single, next_update

    def _sign(
        self, responder: _ActiveResponder, singles: Iterable[Any], produced_at: _dt.datetime, nonce: bytes | None
    ) -> bytes:
        data: dict[str, Any] = {
            "responder_id": aocsp.ResponderId(name="by_key", value=responder.key_hash),
            "produced_at": produced_at,
            "responses": list(singles),
        }
        if nonce is not None:
            data["response_extensions"] = [{"extn_id": "nonce", "extn_value": acore.OctetString(nonce)}]
        tbs = aocsp.ResponseData(data)
        tbs_der = tbs.dump()
        signer = responder.signer
        if isinstance(signer, ec.EllipticCurvePrivateKey):
            signature = signer.sign(tbs_der, ec.ECDSA(responder.hash))
        else:
            signature = signer.sign(tbs_der, PKCS1v15(), responder.hash)
        basic = aocsp.BasicOCSPResponse(
            {
                "tbs_response_data": tbs,
                "signature_algorithm": {"algorithm": responder.algorithm},
                "signature": signature,
                "certs": [responder.cert],
            }
        )
        return bytes(
            aocsp.OCSPResponse(
                {
                    "response_status": "successful",
                    "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
                }
            ).dump()
        )

    def _stored_row(
        self, responder: _ActiveResponder, ca_id: int, serial: str, alg: str, status: _Status, now: _dt.datetime
    ) -> tuple[dict[str, Any], bytes, _dt.datetime]:
        query = self._query_for(ca_id, serial, alg)
        single, next_update = self._single(query, status, now)
        der = self._sign(responder, [single], now, None)
        row = {
            "ca_id": ca_id,
            "serial": serial,
            "hash_algorithm": alg,
            "status_seq": status.status_seq,
            "responder_id": responder.id,
            "this_update": now,
            "next_update": next_update,
            "der": der,
        }
        return row, der, next_update

    def _query_for(self, ca_id: int, serial: str, alg: str) -> _Query:
        issuer = next((i for i in self._issuers.values() if i.ca_id == ca_id), None)
        if issuer is None:
            with self._engine.connect() as conn:
                self._load_issuers(conn)
            issuer = next(i for i in self._issuers.values() if i.ca_id == ca_id)
        return _Query(alg, issuer.name_hashes[alg], issuer.key_hashes[alg], int(serial, 16))

    # ----- status changes --------------------------------------------------

    def on_status_change(self, session: Session, record: CertificateRecord) -> None:
        """``RevocationService`` listener: re-sign the certificate's stored responses in the
        status change's transaction (visible to OCSP the moment it commits). A signing
        failure propagates and rolls the change back. With no usable responder (none made
        yet, or expired) the stored responses are deleted instead, so nothing stale is served."""
        self.refresh(session, record.ca_id, record.serial)

    def refresh(self, session: Session, ca_id: int, serial: str) -> int:
        record = session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial == serial, CertificateRecord.ca_id == ca_id)
        ).one_or_none()
        responder = self._responder_for(session, ca_id, fresh=True)
        if record is None or responder is None:
            session.execute(_T_RESP.delete().where(_T_RESP.c.ca_id == ca_id, _T_RESP.c.serial == serial))
            return 0
        status = _status_of_row(record.state, record.revocation_reason, record.revoked_at, record.status_seq)
        now = _now_seconds(self._clock)
        rows = [self._stored_row(responder, ca_id, serial, alg, status, now)[0] for alg in STORED_HASHES]
        _upsert(session, rows)
        self._keys.count_use(session, responder.key_store, responder.key_handle, len(rows))
        return len(rows)

    # ----- periodic refresh ------------------------------------------------

    def _due_cas(self, session: Session) -> list[CertificateAuthority]:
        now = self._clock.now()
        return list(
            session.scalars(
                select(CertificateAuthority)
                .where(
                    CertificateAuthority.kind == CaKind.ISSUING.value,
                    # superseded CAs too: they answer for what they issued until retired
                    CertificateAuthority.retired_at.is_(None),
                    CertificateAuthority.not_after > now,
                )
                .order_by(CertificateAuthority.id)
            )
        )

    def pending(self, session: Session) -> int:
        """How many responses ``refresh_due`` would sign or drop now (for a progress bar)."""
        now = self._clock.now()
        total = 0
        for ca in self._due_cas(session):
            total += session.execute(
                select(func.count()).select_from(_T_RESP).where(self._stale_clause(ca.id, now))
            ).scalar_one()
            total += session.execute(
                select(func.count()).select_from(_T_CERT).where(self._missing_clause(ca.id, now))
            ).scalar_one()
        return total

    def _stale_clause(self, ca_id: int, now: _dt.datetime) -> Any:
        # this_update < now - refresh_age  ⟺  next_update < now - refresh_age + validity (indexed)
        return and_(_T_RESP.c.ca_id == ca_id, _T_RESP.c.next_update < now - self.refresh_age + self.validity)

    def _missing_clause(self, ca_id: int, now: _dt.datetime) -> Any:
        stored = exists().where(
            _T_RESP.c.ca_id == _T_CERT.c.ca_id,
            _T_RESP.c.serial == _T_CERT.c.serial,
            _T_RESP.c.hash_algorithm == PRESIGNED_HASH,
        )
        return and_(
            _T_CERT.c.ca_id == ca_id,
            _T_CERT.c.state.in_(POSSIBLY_ISSUED),
            _T_CERT.c.not_after > now,
            ~stored,
        )

    def refresh_due(
        self,
        session: Session,
        principal: Principal,
        *,
        limit: int | None = None,
        progress: Callable[[int], None] | None = None,
        checkpoint: Callable[[], None] | None = None,
        batch_size: int = 500,
    ) -> RefreshReport:
        """Rotate responders that are due, then re-sign stored responses older than
        ``ocsp_refresh_hours`` and pre-sign SHA-1 responses for unexpired issued
        certificates that have none, in batches of ``batch_size``.

        Call with a session holding no uncommitted writes (a rotation issues a
        certificate). ``checkpoint`` (typically ``session.commit``) is called after the
        rotation and after every batch, so a long run (1M certificates) keeps its progress
        when stopped and can be run again; without it everything is one unit of work for
        the caller to commit. ``progress(n)`` is told of every batch; ``limit`` caps the
        number of responses handled in this call."""
        if not can_issue(principal):
            raise ForbiddenError("your role may not refresh OCSP responses")
        report = RefreshReport()
        cas = self._due_cas(session)
        for ca in cas:
            before = self.active_responder(session, ca.id)
            if audit.holds_audit_lock(session) or session.new or session.dirty:
                break  # a rotation before this one is not committed yet: the next run does the rest
            after = self.ensure_responder(session, principal, ca)
            if before is None or after.id != before.id:
                report.rotated.append(ca.id)
                if checkpoint is not None:
                    checkpoint()
        budget = limit if limit is not None else None
        for ca in cas:
            responder = self._responder_for(session, ca.id, fresh=True)
            if responder is None:
                continue
            # stale responses (this also moves every response off a retired responder)
            while budget is None or budget > 0:
                now = _now_seconds(self._clock)
                size = batch_size if budget is None else min(batch_size, budget)
                rows = session.execute(
                    select(
                        _T_RESP.c.serial,
                        _T_RESP.c.hash_algorithm,
                        _T_CERT.c.state,
                        _T_CERT.c.revocation_reason,
                        _T_CERT.c.revoked_at,
                        _T_CERT.c.status_seq,
                        _T_CERT.c.not_after,
                    )
                    .join(_T_CERT, _T_CERT.c.serial == _T_RESP.c.serial, isouter=True)
                    .where(self._stale_clause(ca.id, now))
                    .limit(size)
                ).all()
                if not rows:
                    break
                fresh: list[dict[str, Any]] = []
                gone: list[tuple[str, str]] = []
                for serial, alg, state, reason, revoked_at, seq, not_after in rows:
                    status = _status_of_row(state, reason, revoked_at, seq or 0)
                    if not status.storable or not_after is None or not_after <= now:
                        gone.append((serial, alg))
                        continue
                    fresh.append(self._stored_row(responder, ca.id, serial, alg, status, now)[0])
                for serial, alg in gone:
                    session.execute(
                        _T_RESP.delete().where(
                            _T_RESP.c.ca_id == ca.id, _T_RESP.c.serial == serial, _T_RESP.c.hash_algorithm == alg
                        )
                    )
                _upsert(session, fresh)
                self._keys.count_use(session, responder.key_store, responder.key_handle, len(fresh))
                # a row a concurrent status change made newer is skipped by _upsert; it is fresh anyway
                report.resigned += len(fresh)
                report.dropped += len(gone)
                self._after_batch(len(rows), progress, checkpoint)
                if budget is not None:
                    budget -= len(rows)
                if len(rows) < size:
                    break
            # issued certificates without a pre-signed response, in id order (resumable)
            last_id = 0
            while budget is None or budget > 0:
                now = _now_seconds(self._clock)
                size = batch_size if budget is None else min(batch_size, budget)
                missing = session.execute(
                    select(
                        _T_CERT.c.id,
                        _T_CERT.c.serial,
                        _T_CERT.c.state,
                        _T_CERT.c.revocation_reason,
                        _T_CERT.c.revoked_at,
                        _T_CERT.c.status_seq,
                    )
                    .where(self._missing_clause(ca.id, now), _T_CERT.c.id > last_id)
                    .order_by(_T_CERT.c.id)
                    .limit(size)
                ).all()
                if not missing:
                    break
                new_rows = [
                    self._stored_row(
                        responder, ca.id, serial, PRESIGNED_HASH, _status_of_row(state, reason, at, seq), now
                    )[0]
                    for _id, serial, state, reason, at, seq in missing
                ]
                _upsert(session, new_rows)
                self._keys.count_use(session, responder.key_store, responder.key_handle, len(new_rows))
                report.presigned += len(new_rows)
                last_id = missing[-1][0]
                self._after_batch(len(missing), progress, checkpoint)
                if budget is not None:
                    budget -= len(missing)
                if len(missing) < size:
                    break
        return report

    @staticmethod
    def _after_batch(n: int, progress: Callable[[int], None] | None, checkpoint: Callable[[], None] | None) -> None:
        if checkpoint is not None:
            checkpoint()
        if progress is not None:
            progress(n)

    # ----- the hot path ----------------------------------------------------

    def respond(self, request_der: bytes) -> OcspAnswer:
        """Answer one DER OCSPRequest. Never raises."""
        answer = self._respond(request_der, sign=True)
        assert answer is not None  # with sign=True there is always one
        return answer

    def respond_stored(self, request_der: bytes) -> OcspAnswer | None:
        """The answer when it needs no signing (a stored response, or an error status);
        ``None`` when :meth:`respond` would sign one (nonce, several requests, unknown
        serial, no or an old stored response). For servers that keep signing off their
        event loop. Never raises."""
        return self._respond(request_der, sign=False)

    def stored_der(self, request_der: bytes) -> bytes | None:
        """The hot path of the dedicated responder: the DER of the stored answer to a
        plain request (one CertID, no extensions) for an issuing CA this responder knows,
        when a fresh one is stored. ``None`` for everything else: then
        :meth:`respond_stored` / :meth:`respond` decide (refusals, nonces, several
        requests, signing), with exactly the answers they always give. Never raises."""
        try:
            if len(request_der) > MAX_REQUEST_BYTES:
                return None
            request = cocsp.load_der_ocsp_request(request_der)
            if len(request.extensions):
                return None
            alg = request.hash_algorithm.name
            issuer = self._issuers.get((alg, request.issuer_name_hash, request.issuer_key_hash))
            serial = request.serial_number
            if issuer is None or issuer.kind != _ISSUING or alg not in STORED_HASHES or serial < 0:
                return None
            return self._reader.read_fresh(issuer.ca_id, format(serial, "x"), alg, _now_seconds(self._clock))
        except Exception:  # the full path answers (and logs what it must)
            return None

    def _respond(self, request_der: bytes, *, sign: bool) -> OcspAnswer | None:
        try:
            if not request_der or len(request_der) > MAX_REQUEST_BYTES:
                return _error(OcspStatus.MALFORMED_REQUEST)
            try:
                queries, nonce = self._parse_single(request_der)
            except NotImplementedError:  # several requests in one message
                queries, nonce = self._parse_many(request_der)
            if nonce is None and len(queries) == 1:
                stored = self._stored_fast(queries[0])
                if stored is not None:
                    return stored
            with self._engine.connect() as conn:
                return self._answer(conn, queries, nonce, sign=sign)
        except _RefusedError as refusal:
            return _error(refusal.status)
        except Exception:
            log.exception("OCSP request failed")
            return _error(OcspStatus.INTERNAL_ERROR)

    def _stored_fast(self, query: _Query) -> OcspAnswer | None:
        """The stored answer through :class:`_StoredReader`, when there is a fresh one for a
        known issuing CA; ``None`` sends the request down the full path (which also
        reloads issuers, refuses, signs)."""
        issuer = self._issuers.get((query.hash_algorithm, query.name_hash, query.key_hash))
        if (
            issuer is None
            or issuer.kind != CaKind.ISSUING.value
            or query.hash_algorithm not in STORED_HASHES
            or query.serial < 0
        ):
            return None
        try:
            row = self._reader.read(issuer.ca_id, format(query.serial, "x"), query.hash_algorithm)
        except Exception:
            log.warning("OCSP fast read failed; taking the full path", exc_info=True)
            return None
        if row is None:
            return None
        der, this_update, next_update = row
        if not this_update <= _now_seconds(self._clock) < next_update:
            return None
        return OcspAnswer(der, OcspStatus.SUCCESSFUL, this_update, next_update, True)

    @staticmethod
    def _check_nonce(nonce: bytes | None) -> bytes | None:
        if nonce is not None and not NONCE_MIN <= len(nonce) <= NONCE_MAX:
            raise _RefusedError(OcspStatus.MALFORMED_REQUEST)
        return nonce

    def _parse_single(self, data: bytes) -> tuple[list[_Query], bytes | None]:
        try:
            request = cocsp.load_der_ocsp_request(data)
            nonce: bytes | None = None
            for ext in request.extensions:
                if isinstance(ext.value, x509.OCSPNonce):
                    nonce = ext.value.nonce
                elif ext.critical:
                    raise _RefusedError(OcspStatus.MALFORMED_REQUEST)
            query = _Query(
                request.hash_algorithm.name,
                request.issuer_name_hash,
                request.issuer_key_hash,
                request.serial_number,
            )
        except UnsupportedAlgorithm:
            raise _RefusedError(OcspStatus.UNAUTHORIZED) from None  # a CertID hash we cannot match an issuer with
        except (ValueError, TypeError):
            raise _RefusedError(OcspStatus.MALFORMED_REQUEST) from None
        return [query], self._check_nonce(nonce)

    def _parse_many(self, data: bytes) -> tuple[list[_Query], bytes | None]:
        try:
            request = aocsp.OCSPRequest.load(data, strict=True)
            request.native  # noqa: B018  (parse everything now: asn1crypto is lazy)
            tbs = request["tbs_request"]
            nonce: bytes | None = None
            for ext in tbs["request_extensions"] or []:
                if ext["extn_id"].native == "nonce":
                    nonce = ext["extn_value"].parsed.native
                elif ext["critical"].native:
                    raise _RefusedError(OcspStatus.MALFORMED_REQUEST)
            queries = []
            for item in tbs["request_list"]:
                cert_id = item["req_cert"]
                alg = cert_id["hash_algorithm"]["algorithm"].native
                if alg not in _HASHES:
                    raise _RefusedError(OcspStatus.UNAUTHORIZED)
                queries.append(
                    _Query(
                        alg,
                        cert_id["issuer_name_hash"].native,
                        cert_id["issuer_key_hash"].native,
                        cert_id["serial_number"].native,
                    )
                )
        except _RefusedError:
            raise
        except Exception:
            raise _RefusedError(OcspStatus.MALFORMED_REQUEST) from None
        if not queries or len(queries) > MAX_REQUESTS_PER_MESSAGE:
            raise _RefusedError(OcspStatus.MALFORMED_REQUEST)
        return queries, self._check_nonce(nonce)

    def _answer(self, conn: Connection, queries: list[_Query], nonce: bytes | None, *, sign: bool) -> OcspAnswer | None:
        issuers = [self._issuer(conn, q) for q in queries]
        ca_ids = {i.ca_id if i is not None and i.kind == CaKind.ISSUING.value else None for i in issuers}
        if None in ca_ids or len(ca_ids) != 1:
            # an issuer we do not know, the (offline) root, or CAs with different responders
            return _error(OcspStatus.UNAUTHORIZED)
        ca_id = next(iter(cast(set[int], ca_ids)))
        now = _now_seconds(self._clock)
        if nonce is None and len(queries) == 1:
            query = queries[0]
            if query.serial < 0:
                return _error(OcspStatus.MALFORMED_REQUEST)
            serial = format(query.serial, "x")
            if query.hash_algorithm in STORED_HASHES:
                row = conn.execute(_LOOKUP, {"ca_id": ca_id, "serial": serial, "alg": query.hash_algorithm}).first()
                if row is not None and row.this_update <= now < row.next_update:
                    return OcspAnswer(row.der, OcspStatus.SUCCESSFUL, row.this_update, row.next_update, True)
        if not sign:
            return None
        responder = self._responder_for(conn, ca_id)
        if responder is None:
            return _error(OcspStatus.TRY_LATER)
        singles = []
        statuses: list[tuple[_Query, _Status, Any]] = []
        next_update = now
        for query in queries:
            status = self._lookup_status(conn, ca_id, query.serial)
            single, next_update = self._single(query, status, now)
            singles.append(single)
            statuses.append((query, status, single))
        der = self._sign(responder, singles, now, nonce)
        if nonce is None and len(queries) == 1:
            query, status, _single = statuses[0]
            if status.storable and query.hash_algorithm in STORED_HASHES:
                self._store_best_effort(responder, ca_id, query, status, now, next_update, der)
            return OcspAnswer(der, OcspStatus.SUCCESSFUL, now, next_update, True)
        return OcspAnswer(der, OcspStatus.SUCCESSFUL, now, next_update, False)

    @staticmethod
    def _lookup_status(conn: Connection, ca_id: int, serial: int) -> _Status:
        if serial <= 0:
            return _Status("unknown")
        row = conn.execute(_RECORD, {"serial": format(serial, "x")}).first()
        if row is None or row.ca_id != ca_id:
            return _Status("unknown")
        return _status_of_row(row.state, row.revocation_reason, row.revoked_at, row.status_seq)

    def _store_best_effort(
        self,
        responder: _ActiveResponder,
        ca_id: int,
        query: _Query,
        status: _Status,
        now: _dt.datetime,
        next_update: _dt.datetime,
        der: bytes,
    ) -> None:
        row = {
            "ca_id": ca_id,
            "serial": format(query.serial, "x"),
            "hash_algorithm": query.hash_algorithm,
            "status_seq": status.status_seq,
            "responder_id": responder.id,
            "this_update": now,
            "next_update": next_update,
            "der": der,
        }
        try:
            with self._gate, self._engine.begin() as conn:
                _upsert(conn, [row])
                self._keys.count_use(conn, responder.key_store, responder.key_handle)
        except Exception:  # the answer is good without it; the next request tries again
            log.warning("could not store an OCSP response for %s", row["serial"], exc_info=True)
