"""Accounts and operator API tokens.

One role column per account is how 三员分立 is kept at the database level: an
account holds exactly one role, so no principal can be, say, both security
administrator and security auditor (CHECK constraint on the allowed values).
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from govpki.db import Base, UTCDateTime


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(
            "role IN ('system_admin', 'security_admin', 'security_auditor', 'ca_operator', 'key_recovery_officer')",
            name="role",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(Text())
    must_change_password: Mapped[bool] = mapped_column(default=True)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())

    owner: Mapped[Account | None] = relationship()


class Application(Base):
    """A registered application (an OAuth-style confidential client).

    Only the SHA-256 of its client secret is stored; the secret is shown once, at
    registration. ``scopes`` is a space-separated list of what it may do
    (``audit:write``: append its own events to the audit chain). The OIDC provider
    will add redirect URIs and public clients on top of this registry."""

    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(48), unique=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    disabled: Mapped[bool] = mapped_column(default=False)
    disabled_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
