"""Accounts and operator API tokens.

One role column per account is how 三员分立 is kept at the database level: an
account holds exactly one role, so no principal can be, say, both security
administrator and security auditor (CHECK constraint on the allowed values).
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from govpki.db import Base, UTCDateTime

RA_ROLES_SQL = "role IN ('ra_clerk', 'ra_officer')"


class Account(Base):
    """A staff account. RA staff (``ra_clerk``, ``ra_officer``) belong to exactly one
    prefecture; every other role to none (CHECK ``ra_prefecture``). The TOTP secret is
    stored only sealed (AES-256-GCM under a key in the online key store, see
    :mod:`authz.totp`); ``totp_last_step`` is the time step of the last accepted code,
    so a code is never accepted twice."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(
            "role IN ('system_admin', 'security_admin', 'security_auditor', 'ca_operator', 'key_recovery_officer', "
            "'ra_clerk', 'ra_officer')",
            name="role",
        ),
        CheckConstraint(
            f"({RA_ROLES_SQL} AND prefecture_code IS NOT NULL) OR (NOT {RA_ROLES_SQL} AND prefecture_code IS NULL)",
            name="ra_prefecture",
        ),
        CheckConstraint(
            "totp_enrolled_at IS NULL OR (totp_secret IS NOT NULL AND totp_key_id IS NOT NULL)", name="totp_enrolled"
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
    prefecture_code: Mapped[str | None] = mapped_column(ForeignKey("prefectures.code"))
    totp_key_id: Mapped[int | None] = mapped_column(ForeignKey("totp_keys.id"))
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary())  # sealed; see authz.totp
    totp_enrolled_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger())

    @property
    def totp_enrolled(self) -> bool:
        return self.totp_enrolled_at is not None


class TotpKey(Base):
    """An AES-256 key in a key store that seals TOTP secrets (made at the first enrolment)."""

    __tablename__ = "totp_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_store: Mapped[str] = mapped_column(String(20))
    key_handle: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class SignInFailure(Base):
    """A failed sign-in (wrong password or TOTP code) for a user name, known or not:
    lock-out counts these within the window. Rows older than the window are removed
    when the next failure of the same name is recorded, or at a successful sign-in."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        CheckConstraint("factor IN ('password', 'totp')", name="factor"),
        Index("ix_sign_in_failures_username_failed_at", "username", "failed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    factor: Mapped[str] = mapped_column(String(10))
    source: Mapped[str] = mapped_column(String(100))


class SignInLock(Base):
    """A user name (known or not, so a lock says nothing about whether it exists) that may
    not sign in until ``locked_until``."""

    __tablename__ = "sign_in_locks"
    __table_args__ = (Index("ix_sign_in_locks_username_locked_until", "username", "locked_until"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    locked_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    failures: Mapped[int] = mapped_column(Integer)


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
    """A registered application: an OAuth 2.0 / OpenID Connect client.

    A *confidential* client has a client secret (shown once, at registration; only its
    SHA-256 is stored); a *public* client (a browser or native app) has none and must use
    PKCE. ``scopes`` is a space-separated list of what it may do (``audit:write``: append
    its own events to the audit chain; ``openid profile offline_access``: sign users in
    with the OIDC provider, :mod:`authz.oidc`). ``redirect_uris`` and
    ``post_logout_redirect_uris`` are JSON lists of exact URIs. With a bound client
    certificate (``cert_sha256``) it may authenticate by mutual TLS instead of its secret."""

    __tablename__ = "applications"
    __table_args__ = (
        CheckConstraint("client_type IN ('confidential', 'public')", name="client_type"),
        CheckConstraint("client_type = 'public' OR secret_sha256 IS NOT NULL", name="confidential_secret"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(48), unique=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_sha256: Mapped[str | None] = mapped_column(String(64))
    client_type: Mapped[str] = mapped_column(String(12), server_default=text("'confidential'"))
    redirect_uris: Mapped[str] = mapped_column(Text(), server_default=text("'[]'"))
    post_logout_redirect_uris: Mapped[str] = mapped_column(Text(), server_default=text("'[]'"))
    scopes: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    disabled: Mapped[bool] = mapped_column(default=False)
    disabled_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    # a bound client certificate (mutual TLS through the trusted front, authz/certlogin.py):
    # its SHA-256 fingerprint (what is matched), issuer and serial (what people read)
    cert_sha256: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    cert_issuer: Mapped[str | None] = mapped_column(Text())
    cert_serial: Mapped[str | None] = mapped_column(String(42))
    cert_bound_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
