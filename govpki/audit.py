"""The audit primitive: an append-only, hash-chained log written in the same
transaction as the change it describes.

Each entry has a gap-free sequence number and commits to the previous entry's
hash: ``hash = SHA-256(prev_hash || canonical_json(entry))``. Appending first
bumps the single ``audit_head`` row, which serialises writers on every backend
(a row lock on PostgreSQL, the write lock on SQLite) and keeps the sequence
gap-free: a rolled-back transaction rolls back its sequence number too.
If the entry cannot be written, the exception propagates and the caller's
transaction — the change itself — is rolled back with it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    event,
    func,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from govpki.clock import Clock, SystemClock
from govpki.db import Base, UTCDateTime
from govpki.principal import Principal

GENESIS_HASH = "0" * 64
ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")


class AuditEntry(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100), index=True)
    object_type: Mapped[str] = mapped_column(String(50))
    object_id: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(20))
    details: Mapped[str] = mapped_column(Text())
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement of the chain head: "entry ``seq`` has hash ``head_hash``".
    Signed with the audit-signing key (through keymgmt) over ``signed_data``; also
    exported outside the database, so deleting the tail of the log is detectable."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), unique=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    key_store: Mapped[str] = mapped_column(String(20))
    key_handle: Mapped[str] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(40))
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary())
    signed_data: Mapped[bytes] = mapped_column(LargeBinary())
    signature: Mapped[bytes] = mapped_column(LargeBinary())


class AuditVerification(Base):
    """One run of the full verification (the auditors' console shows the newest)."""

    __tablename__ = "audit_verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    entries: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    checkpoints: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column()
    first_bad_seq: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    reason: Mapped[str | None] = mapped_column(Text())


class AuditArchive(Base):
    """A segment ``first_seq..last_seq`` of the log written to a signed archive file and
    then removed from ``audit_log`` (the delete trigger lets only archived entries go).
    The row is the anchor the rest of the chain verifies from: the next entry's
    ``prev_hash`` must be ``last_hash``. Signed like a checkpoint (``signed_data``);
    append-only by trigger."""

    __tablename__ = "audit_archives"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), unique=True)
    last_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), unique=True)
    first_prev_hash: Mapped[str] = mapped_column(String(64))
    last_hash: Mapped[str] = mapped_column(String(64))
    entries: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    file_name: Mapped[str] = mapped_column(String(200))
    file_sha256: Mapped[str] = mapped_column(String(64))
    key_store: Mapped[str] = mapped_column(String(20))
    key_handle: Mapped[str] = mapped_column(String(200))
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary())
    signed_data: Mapped[bytes] = mapped_column(LargeBinary())
    signature: Mapped[bytes] = mapped_column(LargeBinary())


@dataclass(frozen=True)
class AuditRef:
    seq: int
    hash: str


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def timestamp(at: _dt.datetime) -> str:
    """The form of a time inside hashed and signed data (UTC, microseconds, ``Z``)."""
    return at.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> _dt.datetime:
    """The inverse of :func:`timestamp`."""
    return _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.UTC)


def exported_entry(entry: AuditEntry) -> dict[str, Any]:
    """An entry as archive files and evidence bundles carry it: every hashed field
    (the time as :func:`timestamp`) and both hashes."""
    return {
        "seq": entry.seq,
        "at": timestamp(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "outcome": entry.outcome,
        "details": entry.details,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def entry_hash(
    prev_hash: str,
    *,
    seq: int,
    at: _dt.datetime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    outcome: str,
    details: str,
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "at": timestamp(at),
            "actor": actor,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "outcome": outcome,
            "details": details,
        }
    )
    return hashlib.sha256(prev_hash.encode("ascii") + body.encode("utf-8")).hexdigest()


_T_LOG = cast(Table, AuditEntry.__table__)
_T_HEAD = cast(Table, AuditHead.__table__)
# Built once: executing a prepared Core statement skips the ORM and re-compilation.
_BUMP = update(_T_HEAD).where(_T_HEAD.c.id == 1).values(seq=_T_HEAD.c.seq + 1).returning(_T_HEAD.c.seq, _T_HEAD.c.hash)
_APPEND = insert(_T_LOG)
_SET_HEAD = update(_T_HEAD).where(_T_HEAD.c.id == 1).values(hash=bindparam("new_hash"))


def record(
    target: Session | Connection,
    actor: Principal | str,
    action: str,
    *,
    object_type: str,
    object_id: str,
    details: Mapping[str, Any] | None = None,
    outcome: str = "success",
    clock: Clock | None = None,
) -> AuditRef:
    """Append one entry in the caller's transaction (executed, not committed)."""
    if not ACTION_RE.match(action):
        raise ValueError(f"audit action {action!r} is not a domain:object:verb tag")
    actor_name = actor.audit_name if isinstance(actor, Principal) else actor
    at = (clock or SystemClock()).now()
    conn = target.connection() if isinstance(target, Session) else target
    head = conn.execute(_BUMP).first()
    if head is None:
        raise RuntimeError("audit_head row is missing: the audit log cannot be written")
    seq, prev = head
    details_text = canonical_json(dict(details or {}))
    digest = entry_hash(
        prev,
        seq=seq,
        at=at,
        actor=actor_name,
        action=action,
        object_type=object_type,
        object_id=object_id,
        outcome=outcome,
        details=details_text,
    )
    conn.execute(
        _APPEND,
        {
            "seq": seq,
            "at": at,
            "actor": actor_name,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "outcome": outcome,
            "details": details_text,
            "prev_hash": prev,
            "hash": digest,
        },
    )
    conn.execute(_SET_HEAD, {"new_hash": digest})
    if isinstance(target, Session):
        target.info[PENDING] = True
    return AuditRef(seq, digest)


@dataclass(frozen=True)
class NewEntry:
    """One entry for :func:`record_many`: what :func:`record` takes, with its own actor.
    ``details`` may be given already as its canonical JSON text (``details_text``)."""

    actor: str
    action: str
    object_type: str
    object_id: str
    details: Mapping[str, Any] | None = None
    outcome: str = "success"
    details_text: str | None = None


_BUMP_BY = (
    update(_T_HEAD)
    .where(_T_HEAD.c.id == 1)
    .values(seq=_T_HEAD.c.seq + bindparam("count"))
    .returning(_T_HEAD.c.seq, _T_HEAD.c.hash)
)


def record_many(
    target: Session | Connection,
    entries: Sequence[NewEntry],
    *,
    clock: Clock | None = None,
) -> list[AuditRef]:
    """Append ``entries`` in order, in the caller's transaction, as :func:`record` would one
    by one: the same hash chain, gap-free sequence numbers and serialisation. The head row is
    bumped once by ``len(entries)`` (taking the same lock) and the rows go in with one
    ``executemany``; all entries carry the same time (one transaction, one moment)."""
    if not entries:
        return []
    for entry in entries:
        if not ACTION_RE.match(entry.action):
            raise ValueError(f"audit action {entry.action!r} is not a domain:object:verb tag")
    at = (clock or SystemClock()).now()
    conn = target.connection() if isinstance(target, Session) else target
    head = conn.execute(_BUMP_BY, {"count": len(entries)}).first()
    if head is None:
        raise RuntimeError("audit_head row is missing: the audit log cannot be written")
    last_seq, prev = head
    seq = last_seq - len(entries)
    rows: list[dict[str, Any]] = []
    refs: list[AuditRef] = []
    for entry in entries:
        seq += 1
        details_text = (
            entry.details_text if entry.details_text is not None else canonical_json(dict(entry.details or {}))
        )
        digest = fast_entry_hash(
            prev,
            seq,
            at,
            entry.actor,
            entry.action,
            entry.object_type,
            entry.object_id,
            entry.outcome,
            details_text,
        )
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": entry.actor,
                "action": entry.action,
                "object_type": entry.object_type,
                "object_id": entry.object_id,
                "outcome": entry.outcome,
                "details": details_text,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        refs.append(AuditRef(seq, digest))
        prev = digest
    conn.execute(_APPEND, rows)
    conn.execute(_SET_HEAD, {"new_hash": prev})
    if isinstance(target, Session):
        target.info[PENDING] = True
    return refs


PENDING = "govpki.audit_pending"


def holds_audit_lock(session: Session) -> bool:
    """True while ``session`` has appended entries it has not committed (it holds the chain head)."""
    return bool(session.info.get(PENDING))


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _transaction_over(session: Session) -> None:
    session.info.pop(PENDING, None)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS_HASH


_encode_str: Callable[[str], str] = json.encoder.encode_basestring
_UTC = _dt.UTC


def fast_entry_hash(
    prev_hash: str,
    seq: int,
    at: _dt.datetime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    outcome: str,
    details: str,
) -> str:
    """The same digest as :func:`entry_hash`, built without ``json.dumps``.

    ``canonical_json`` sorts the keys (action, actor, at, details, object_id,
    object_type, outcome, seq), uses ``,``/``:`` separators and ``ensure_ascii=False``:
    each string value is then exactly ``json.encoder.encode_basestring(value)``
    (the C encoder ``json.dumps`` itself uses) and the int is ``str(seq)``.
    ``tests/govpki/test_audit.py`` checks the two agree, also on awkward strings."""
    if at.utcoffset():
        at = at.astimezone(_UTC)
    body = (
        f'{{"action":{_encode_str(action)},"actor":{_encode_str(actor)},'
        f'"at":"{at.isoformat(timespec="microseconds")[:26]}Z","details":{_encode_str(details)},'
        f'"object_id":{_encode_str(object_id)},"object_type":{_encode_str(object_type)},'
        f'"outcome":{_encode_str(outcome)},"seq":{int(seq)}}}'
    )
    return hashlib.sha256(prev_hash.encode("ascii") + body.encode("utf-8")).hexdigest()


def _at_text(at: _dt.datetime | str) -> str:
    """The hashed form of ``at`` without its ``Z``, from a datetime or SQLite's stored text."""
    if isinstance(at, str):  # SQLite: what SQLAlchemy stored, in UTC without a zone
        parsed = _dt.datetime.fromisoformat(at)
        at = parsed.replace(tzinfo=_UTC) if parsed.tzinfo is None else parsed
    return timestamp(at)[:-1]


def _chain_columns(dialect: str) -> tuple[Any, ...]:
    # ``at`` without the UTCDateTime decorator: on SQLite the stored text (sliced below,
    # no parsing), on PostgreSQL the same text made by the server, elsewhere the driver's datetime
    if dialect == "sqlite":
        at: Any = type_coerce(_T_LOG.c.at, String())
    elif dialect == "postgresql":  # the server formats it (on its own core): "YYYY-MM-DD HH:MM:SS.ffffff" in UTC
        at = func.to_char(func.timezone("UTC", _T_LOG.c.at), "YYYY-MM-DD HH24:MI:SS.US")
    else:
        at = type_coerce(_T_LOG.c.at, DateTime(timezone=True))
    c = _T_LOG.c
    return (c.seq, at, c.actor, c.action, c.object_type, c.object_id, c.outcome, c.details, c.prev_hash, c.hash)


_RAW_SQL = {
    # the stored text: "YYYY-MM-DD HH:MM:SS.ffffff" in UTC
    "sqlite": "SELECT seq, at, actor, action, object_type, object_id, outcome, details, prev_hash, hash "
    "FROM audit_log WHERE seq > {after:d} ORDER BY seq",
    # the same text, made by the server (on its own core)
    "postgresql": "SELECT seq, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), actor, action, "
    "object_type, object_id, outcome, details, prev_hash, hash FROM audit_log WHERE seq > {after:d} ORDER BY seq",
}


def _chunks(conn: Connection, batch: int, after: int = 0) -> Generator[Sequence[Any], None, None]:
    """The entries after ``after`` in seq order as plain tuples, ``batch`` rows at a time.

    On SQLite and PostgreSQL straight from a DB-API cursor of the session's connection
    (a server-side cursor on PostgreSQL): SQLAlchemy's row objects cost about as much as
    the hashing. Elsewhere a streamed Core statement."""
    sql = _RAW_SQL.get(conn.dialect.name)
    if sql is None:
        # per statement: Connection.execution_options() would change the session's connection for good
        stmt = (
            select(*_chain_columns(conn.dialect.name))
            .where(_T_LOG.c.seq > after)
            .order_by(_T_LOG.c.seq)
            .execution_options(yield_per=batch)
        )
        result = conn.execute(stmt)
        try:
            yield from result.partitions()
        finally:
            result.close()
        return
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor("govpki_audit_verify") if conn.dialect.name == "postgresql" else dbapi.cursor()
    try:
        cursor.execute(sql.format(after=int(after)))
        while rows := cursor.fetchmany(batch):
            yield rows
    finally:
        cursor.close()


def archive_anchor(session: Session) -> tuple[AuditRef, str | None]:
    """Where the entries still in the database start: after the newest archived segment
    (``AuditRef(0, GENESIS_HASH)`` when nothing was archived), and why the archive rows
    themselves do not fit together (``None`` when they do: segments follow each other
    from entry 1, each starting with the previous one's last hash)."""
    t = cast(Table, AuditArchive.__table__)
    rows = session.execute(
        select(t.c.first_seq, t.c.last_seq, t.c.first_prev_hash, t.c.last_hash).order_by(t.c.first_seq)
    ).all()
    seq, digest = 0, GENESIS_HASH
    for first, last, first_prev, last_hash in rows:
        if first != seq + 1 or first_prev != digest or last < first:
            return AuditRef(seq, digest), f"archived segment {first}..{last} does not follow entry {seq}"
        seq, digest = last, last_hash
    return AuditRef(seq, digest), None


def verify_chain(session: Session, batch: int = 20000) -> ChainReport:
    """Walk the whole chain; name the first entry that does not fit.

    Checks: sequence numbers gap-free from 1 (or from the entry after the newest
    archived segment, whose last hash the next entry must link to), each entry's
    ``prev_hash`` is the previous entry's hash, each hash recomputed from the entry, and the
    ``audit_head`` row names the last entry. Rows are streamed in chunks of
    ``batch`` (see :func:`_chunks`), not loaded as ORM objects, and each entry's
    canonical JSON is built as in :func:`fast_entry_hash`, inlined
    (``tests/govpki/test_audit.py`` checks it against :func:`entry_hash`)."""
    anchor, broken = archive_anchor(session)
    if broken is not None:
        return ChainReport(False, 0, anchor.seq, anchor.seq + 1, broken, anchor.hash)
    prev = anchor.hash
    expected = anchor.seq + 1
    enc = _encode_str
    sha256 = hashlib.sha256
    utc = _UTC
    conn = session.connection()
    chunks = _chunks(conn, batch, anchor.seq)
    try:
        for rows in chunks:
            for seq, at, actor, action, object_type, object_id, outcome, details, prev_hash, hash_ in rows:
                if seq != expected:
                    if seq < expected:  # a duplicate cannot happen with the primary key; be explicit anyway
                        return ChainReport(
                            False, expected - 1 - anchor.seq, expected - 1, seq, f"entry {seq} appears twice", prev
                        )
                    missing = f"entry {expected} is missing (next is {seq})"
                    return ChainReport(False, expected - 1 - anchor.seq, expected - 1, expected, missing, prev)
                if prev_hash != prev:
                    return ChainReport(
                        False,
                        expected - 1 - anchor.seq,
                        expected - 1,
                        seq,
                        "prev_hash does not match the previous entry",
                        prev,
                    )
                # SQLite's stored "YYYY-MM-DD HH:MM:SS.ffffff" (UTC) -> "YYYY-MM-DDTHH:MM:SS.ffffff";
                # the slicing is one-to-one, so a changed stored value always changes the hash
                if at.__class__ is str and len(at) == 26 and at[10] == " ":
                    ts = f"{at[:10]}T{at[11:]}"
                elif at.__class__ is not str and at.utcoffset() is not None and not at.utcoffset():
                    ts = at.isoformat(timespec="microseconds")[:26]
                else:
                    try:
                        ts = _at_text(at.astimezone(utc) if isinstance(at, _dt.datetime) else at)
                    except (ValueError, TypeError):
                        return ChainReport(
                            False, expected - 1 - anchor.seq, expected - 1, seq, "entry time is not a time", prev
                        )
                body = (
                    f'{prev}{{"action":{enc(action)},"actor":{enc(actor)},"at":"{ts}Z","details":{enc(details)},'
                    f'"object_id":{enc(object_id)},"object_type":{enc(object_type)},'
                    f'"outcome":{enc(outcome)},"seq":{seq}}}'
                )
                if sha256(body.encode("utf-8")).hexdigest() != hash_:
                    return ChainReport(
                        False,
                        expected - 1 - anchor.seq,
                        expected - 1,
                        seq,
                        "entry content does not match its hash",
                        prev,
                    )
                prev = hash_
                expected += 1
    finally:
        chunks.close()
    last = expected - 1
    head = conn.execute(select(_T_HEAD.c.seq, _T_HEAD.c.hash).where(_T_HEAD.c.id == 1)).first()
    if head is None:
        return ChainReport(False, last - anchor.seq, last, None, "audit_head row is missing", prev)
    if head.seq < last:  # entries beyond the head were added behind the writers' backs
        return ChainReport(
            False,
            head.seq - anchor.seq,
            head.seq,
            head.seq + 1,
            f"the head says {head.seq} but the chain goes on to {last}",
            prev,
        )
    if head.seq > last:  # the tail was cut
        return ChainReport(
            False, last - anchor.seq, last, last + 1, f"chain ends at {last} but the head says {head.seq}", prev
        )
    if head.hash != prev:
        return ChainReport(
            False, last - anchor.seq, last, last, f"entry {last}'s hash is not the one the head records", prev
        )
    return ChainReport(True, last - anchor.seq, last, head_hash=prev)
