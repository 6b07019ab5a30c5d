"""Tables of the key-management centre: its storage keys, the escrowed (wrapped)
encryption keys, and recovery requests with the officers' decisions.

No clear key material is ever stored: ``escrowed_keys.wrapped_key`` is the PKCS#8
private key sealed (AES-256-GCM) under a storage key that stays in its key store.
The certificate is named by CA id and serial only (keymgmt sits below ``ca``)."""

from __future__ import annotations

import datetime as _dt
import enum

from sqlalchemy import CheckConstraint, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from govpki.db import Base, UTCDateTime


class RecoveryKind(enum.StrEnum):
    SUBSCRIBER = "subscriber"  # the official lost the key (card, device)
    JUDICIAL = "judicial"  # a legal request; needs a case reference


class RecoveryState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # M officers approved; the requester may release once
    REJECTED = "rejected"
    RELEASED = "released"


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class KmcStorageKey(Base):
    """A secret (AES-256) key in a key store that wraps escrowed keys and does nothing else."""

    __tablename__ = "kmc_storage_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_store: Mapped[str] = mapped_column(String(20))
    key_handle: Mapped[str] = mapped_column(String(200), unique=True)
    active: Mapped[bool] = mapped_column()
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class EscrowedKey(Base):
    __tablename__ = "escrowed_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_ref: Mapped[str] = mapped_column(String(32), unique=True)  # random; bound into the wrapping's AAD
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    profile: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text())
    algorithm: Mapped[str] = mapped_column(String(20))
    spki_sha256: Mapped[str] = mapped_column(String(64), index=True)
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary())
    storage_key_id: Mapped[int] = mapped_column(ForeignKey("kmc_storage_keys.id"))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary())
    ca_id: Mapped[int] = mapped_column(Integer)
    cert_serial: Mapped[str] = mapped_column(String(42), index=True)

    storage_key: Mapped[KmcStorageKey] = relationship()


class RecoveryRequest(Base):
    __tablename__ = "kmc_recovery_requests"
    __table_args__ = (
        CheckConstraint("kind IN ('subscriber', 'judicial')", name="kind"),
        CheckConstraint("state IN ('pending', 'approved', 'rejected', 'released')", name="state"),
        CheckConstraint("kind <> 'judicial' OR case_reference IS NOT NULL", name="judicial_case"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    escrow_id: Mapped[int] = mapped_column(ForeignKey("escrowed_keys.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    case_reference: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text())
    state: Mapped[str] = mapped_column(String(20))
    required_approvals: Mapped[int] = mapped_column(Integer)
    requester: Mapped[str] = mapped_column(String(100))  # "<principal kind>:<id>": who may not approve
    requested_by: Mapped[str] = mapped_column(String(200))  # the audit name
    requested_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    released_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    released_by: Mapped[str | None] = mapped_column(String(200))

    escrow: Mapped[EscrowedKey] = relationship()
    decisions: Mapped[list[RecoveryDecision]] = relationship(
        back_populates="request", order_by="RecoveryDecision.id", lazy="selectin"
    )

    @property
    def approvals(self) -> int:
        return sum(1 for d in self.decisions if d.decision == Decision.APPROVE.value)


class RecoveryDecision(Base):
    """One officer's approval or rejection of one request (at most one each)."""

    __tablename__ = "kmc_recovery_decisions"
    __table_args__ = (
        UniqueConstraint("request_id", "officer", name="uq_kmc_recovery_decisions_request_officer"),
        CheckConstraint("decision IN ('approve', 'reject')", name="decision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("kmc_recovery_requests.id"))
    officer: Mapped[str] = mapped_column(String(100))
    officer_name: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(10))
    comment: Mapped[str | None] = mapped_column(Text())
    decided_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())

    request: Mapped[RecoveryRequest] = relationship(back_populates="decisions")
