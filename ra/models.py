"""Prefectures and their registration authorities (one RA per prefecture)."""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import ForeignKey, Integer, String, Text
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
