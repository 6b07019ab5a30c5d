"""Tables of the OpenID Connect provider (:mod:`authz.oidc`).

Only SHA-256 digests of authorization codes, access tokens and refresh tokens are
stored: a database dump hands out no usable token. ``claims`` is the signed-in user's
identity at sign-in (canonical JSON: name, prefecture, department, amr, auth_time and
the certificate serial when a certificate was used), copied from the code to every
token issued from it, so userinfo and refresh answer the same identity the ID token
named; roles are looked up in the access policy each time.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from govpki.db import Base, UTCDateTime


class OidcCode(Base):
    """An authorization code (one use: ``used_at`` is set when it is exchanged; a second
    exchange is refused and revokes every token issued from it)."""

    __tablename__ = "oidc_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    subject: Mapped[str] = mapped_column(String(128))
    claims: Mapped[str] = mapped_column(Text())
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(500))
    nonce: Mapped[str | None] = mapped_column(String(255))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())


class OidcToken(Base):
    """An access token with its refresh token (if any). Refresh rotates: the presented
    refresh token is marked ``refreshed_at`` and a new row (same ``family_id``) is made;
    presenting a rotated refresh token again revokes the whole family."""

    __tablename__ = "oidc_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    subject: Mapped[str] = mapped_column(String(128), index=True)
    claims: Mapped[str] = mapped_column(Text())
    scope: Mapped[str] = mapped_column(String(500))
    access_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    code_id: Mapped[int | None] = mapped_column(ForeignKey("oidc_codes.id"), index=True)
    family_id: Mapped[int | None] = mapped_column(Integer, index=True)
    issued_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    access_expires_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    refresh_expires_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    refreshed_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_reason: Mapped[str | None] = mapped_column(String(100))
