"""Key records: one row for every key the system holds, whatever the store.

A record names the key's purpose, algorithm, store ("root", "online", …) and handle,
the SHA-256 of its SubjectPublicKeyInfo, its state (pre_active → active → retired →
destroyed, each with its time), the planned end of use from the key policy and how
many signatures it made. The key material itself stays in its key store.
"""

from __future__ import annotations

import datetime as _dt
import enum

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from govpki.db import Base, UTCDateTime
from keymgmt.policy import KeyPurpose


class KeyState(enum.StrEnum):
    PRE_ACTIVE = "pre_active"
    ACTIVE = "active"
    RETIRED = "retired"
    DESTROYED = "destroyed"


def _in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class KeyRecord(Base):
    __tablename__ = "key_records"
    __table_args__ = (
        UniqueConstraint("store", "handle", name="uq_key_records_store_handle"),
        CheckConstraint(_in("purpose", [p.value for p in KeyPurpose]), name="purpose"),
        CheckConstraint(_in("state", [s.value for s in KeyState]), name="state"),
        CheckConstraint("state != 'active' OR activated_at IS NOT NULL", name="active_has_time"),
        CheckConstraint("state != 'retired' OR retired_at IS NOT NULL", name="retired_has_time"),
        CheckConstraint("state != 'destroyed' OR destroyed_at IS NOT NULL", name="destroyed_has_time"),
        Index("ix_key_records_purpose_state", "purpose", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    algorithm: Mapped[str] = mapped_column(String(20))
    store: Mapped[str] = mapped_column(String(20))
    handle: Mapped[str] = mapped_column(String(200))
    spki_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    description: Mapped[str] = mapped_column(String(200), default="", server_default="")
    state: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    activated_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    retired_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    destroyed_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    # planned end of use (activation + the policy's lifetime; for an OCSP responder key,
    # its certificate's notAfter). NULL on records backfilled by the migration: the
    # policy's lifetime from activation then applies.
    use_until: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    usage_count: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), default=0, server_default="0"
    )
