"""Prefectures and their registration authorities (one RA per prefecture)."""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from govpki.db import Base, UTCDateTime


class Prefecture(Base):
    __tablename__ = "prefectures"

    code: Mapped[str] = mapped_column(String(12), primary_key=True)  # GB/T 2260 area code
    name: Mapped[str] = mapped_column(String(64), unique=True)
    name_en: Mapped[str] = mapped_column(String(128))
    region: Mapped[str] = mapped_column(String(64))


class RegistrationAuthority(Base):
    __tablename__ = "registration_authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefecture_code: Mapped[str] = mapped_column(ForeignKey("prefectures.code"), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    allowed_profiles: Mapped[str] = mapped_column(Text())  # space-separated profile names
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())

    prefecture: Mapped[Prefecture] = relationship()


class ExpiryNotice(Base):
    """One expiry notice of one certificate at one threshold (days left) on one channel:
    ``contact`` (the subscriber's mail) or ``ra`` (the line in its prefecture RA's summary).
    ``sent`` rows are never sent again; ``failed`` ones are retried by the next run."""

    __tablename__ = "expiry_notices"
    __table_args__ = (
        UniqueConstraint("certificate_id", "threshold_days", "channel", name="uq_expiry_notices_once"),
        CheckConstraint("channel IN ('contact', 'ra')", name="channel"),
        CheckConstraint("state IN ('sent', 'failed')", name="state"),
        CheckConstraint("state != 'sent' OR sent_at IS NOT NULL", name="sent_has_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"), index=True)
    threshold_days: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(10))
    recipient: Mapped[str] = mapped_column(String(254))
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text())
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
