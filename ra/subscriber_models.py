"""Subscribers registered by a prefecture RA (officials and services) and their
certificate requests with the history of who did what when."""

from __future__ import annotations

import datetime as _dt
import enum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from govpki.db import Base, UTCDateTime


class SubscriberDataKey(Base):
    """The keys protecting officials' ID numbers: an AES-256 secret key in a key store
    (``key_store``/``key_handle``) that encrypts the numbers, and an HMAC-SHA256 key for
    the lookup hash, kept here only sealed under that AES key (``wrapped_hmac_key``)."""

    __tablename__ = "subscriber_data_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_store: Mapped[str] = mapped_column(String(20))
    key_handle: Mapped[str] = mapped_column(String(200))
    wrapped_hmac_key: Mapped[bytes] = mapped_column(LargeBinary())
    active: Mapped[bool] = mapped_column()
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class Official(Base):
    """A civil servant (公务人员). The ID number is stored only encrypted (AES-GCM under the
    subscriber data key, bound to its lookup hash) and as an HMAC-SHA256 lookup hash that is
    unique across the network; the masked form (first 4, last 4) is what people see. The
    birth date is not stored apart: with the masked number it would give the number away."""

    __tablename__ = "officials"
    __table_args__ = (CheckConstraint("gender IN ('male', 'female')", name="gender"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefecture_code: Mapped[str] = mapped_column(ForeignKey("prefectures.code"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    id_number_hash: Mapped[str] = mapped_column(String(64), unique=True)
    id_number_encrypted: Mapped[bytes] = mapped_column(LargeBinary())
    id_number_masked: Mapped[str] = mapped_column(String(18))
    data_key_id: Mapped[int] = mapped_column(ForeignKey("subscriber_data_keys.id"))
    gender: Mapped[str] = mapped_column(String(6))
    department: Mapped[str] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(String(64))
    phone: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(254))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())

    data_key: Mapped[SubscriberDataKey] = relationship()


class ServiceSubscriber(Base):
    """A service or application on the network, with its host names and IP addresses
    (space-separated) and the official responsible for it (same prefecture)."""

    __tablename__ = "subscriber_services"
    __table_args__ = (UniqueConstraint("prefecture_code", "name", name="uq_subscriber_services_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefecture_code: Mapped[str] = mapped_column(ForeignKey("prefectures.code"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    department: Mapped[str] = mapped_column(String(64))
    host_names: Mapped[str] = mapped_column(Text())
    ip_addresses: Mapped[str] = mapped_column(Text())
    responsible_official_id: Mapped[int] = mapped_column(ForeignKey("officials.id"), index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())

    responsible: Mapped[Official] = relationship()

    @property
    def host_name_list(self) -> list[str]:
        return self.host_names.split()

    @property
    def ip_address_list(self) -> list[str]:
        return self.ip_addresses.split()


class RequestKind(enum.StrEnum):
    NEW = "new"
    RENEW = "renew"
    SUSPEND = "suspend"
    RESUME = "resume"
    REVOKE = "revoke"


class RequestState(enum.StrEnum):
    SUBMITTED = "submitted"
    APPROVED = "approved"  # claimed by an officer's approval; the CA is being asked
    REJECTED = "rejected"
    COMPLETED = "completed"
    FAILED = "failed"


class RaRequest(Base):
    """One request of a prefecture RA: submitted by a clerk, approved or rejected by an
    officer of the same prefecture who is not the submitter; approval carries it out."""

    __tablename__ = "ra_requests"
    __table_args__ = (
        CheckConstraint("kind IN ('new', 'renew', 'suspend', 'resume', 'revoke')", name="kind"),
        CheckConstraint("state IN ('submitted', 'approved', 'rejected', 'completed', 'failed')", name="state"),
        CheckConstraint("(official_id IS NULL) != (service_id IS NULL)", name="one_subscriber"),
        CheckConstraint("kind = 'new' OR target_serial IS NOT NULL", name="target_needed"),
        CheckConstraint("kind != 'revoke' OR reason IS NOT NULL", name="reason_needed"),
        Index("ix_ra_requests_prefecture_state", "prefecture_code", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))
    prefecture_code: Mapped[str] = mapped_column(ForeignKey("prefectures.code"))
    official_id: Mapped[int | None] = mapped_column(ForeignKey("officials.id"), index=True)
    service_id: Mapped[int | None] = mapped_column(ForeignKey("subscriber_services.id"), index=True)
    profile: Mapped[str | None] = mapped_column(String(64))
    csr_pem: Mapped[str | None] = mapped_column(Text())
    csr_spki_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    target_serial: Mapped[str | None] = mapped_column(String(42))
    reason: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(Text())
    submitted_by: Mapped[str] = mapped_column(String(200))  # the submitter's audit name
    submitter_key: Mapped[str] = mapped_column(String(200))  # kind:id, to refuse self-approval
    submitted_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    comment: Mapped[str | None] = mapped_column(Text())
    completed_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    failure: Mapped[str | None] = mapped_column(Text())  # English, for the audit and the CLI
    failure_code: Mapped[str | None] = mapped_column(String(64))  # the error's code and values,
    failure_params: Mapped[dict[str, Any] | None] = mapped_column(JSON())  # to show it translated
    certificate_serial: Mapped[str | None] = mapped_column(String(42), index=True)
    encryption_serial: Mapped[str | None] = mapped_column(String(42), index=True)
    escrow_id: Mapped[int | None] = mapped_column(Integer)

    official: Mapped[Official | None] = relationship()
    service: Mapped[ServiceSubscriber | None] = relationship()
    events: Mapped[list[RaRequestEvent]] = relationship(
        order_by="RaRequestEvent.id", back_populates="request", viewonly=True
    )


class RaRequestEvent(Base):
    """The request's history: who did what when (submit, approve, reject, complete, fail)."""

    __tablename__ = "ra_request_events"
    __table_args__ = (CheckConstraint("action IN ('submit', 'approve', 'reject', 'complete', 'fail')", name="action"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("ra_requests.id"), index=True)
    at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(10))
    detail: Mapped[str | None] = mapped_column(Text())
    code: Mapped[str | None] = mapped_column(String(64))  # a failure's code and values (see RaRequest)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON())

    request: Mapped[RaRequest] = relationship(back_populates="events")
