"""Officials' second way in: a sign-in name, an argon2id password and a sealed TOTP secret
(:mod:`authz.official_signin`)."""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from govpki.db import Base, UTCDateTime


class OfficialCredential(Base):
    """An official's password + TOTP sign-in. Made while signed in with a certificate
    (``set_up_with``: its serial); usable once ``enabled_at`` is set (TOTP confirmed).
    ``login_name`` shares one namespace with staff user names (checked by the services:
    unique across both). The TOTP secret is stored only sealed (as staff secrets,
    :mod:`authz.totp`, bound to the official's id); ``totp_last_step`` refuses a code twice."""

    __tablename__ = "official_credentials"
    __table_args__ = (CheckConstraint("enabled_at IS NULL OR totp_secret IS NOT NULL", name="enabled_totp"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    official_id: Mapped[int] = mapped_column(ForeignKey("officials.id", ondelete="CASCADE"), unique=True)
    login_name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text())
    totp_key_id: Mapped[int] = mapped_column(ForeignKey("totp_keys.id"))
    totp_secret: Mapped[bytes] = mapped_column(LargeBinary())  # sealed; see authz.totp
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger())
    set_up_with: Mapped[str] = mapped_column(String(42))  # the certificate serial of the set-up session
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    enabled_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
