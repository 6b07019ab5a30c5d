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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    event,
    insert,
    select,
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


@dataclass(frozen=True)
class AuditRef:
    seq: int
    hash: str


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _timestamp(at: _dt.datetime) -> str:
    return at.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
            "at": _timestamp(at),
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


def verify_chain(session: Session, batch: int = 5000) -> ChainReport:
    """Walk the whole chain; name the first entry that does not fit."""
    prev = GENESIS_HASH
    expected = 1
    count = 0
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.seq >= expected).order_by(AuditEntry.seq).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected:
                return ChainReport(False, count, last, expected, f"entry {expected} is missing (next is {row.seq})")
            if row.prev_hash != prev:
                return ChainReport(False, count, last, row.seq, "prev_hash does not match the previous entry")
            digest = entry_hash(
                prev,
                seq=row.seq,
                at=row.at,
                actor=row.actor,
                action=row.action,
                object_type=row.object_type,
                object_id=row.object_id,
                outcome=row.outcome,
                details=row.details,
            )
            if digest != row.hash:
                return ChainReport(False, count, last, row.seq, "entry content does not match its hash")
            prev = row.hash
            last = row.seq
            expected += 1
            count += 1
    head = session.get(AuditHead, 1)
    if head is None:
        return ChainReport(False, count, last, None, "audit_head row is missing")
    if head.seq != last or head.hash != prev:
        return ChainReport(False, count, last, last + 1, f"chain ends at {last} but the head says {head.seq}")
    return ChainReport(True, count, last)
