"""CA storage: the certificate authorities and every certificate record.

A certificate record exists *before* the CA key signs (state ``reserved``), holds
the exact to-be-signed content before signing (state ``approved``: the lint copy,
whose TBS equals the real certificate's), and the certificate after (``issued``).
A record left in ``reserved`` or ``approved`` by a crash says how far it got.
"""

from __future__ import annotations

import datetime as _dt
import enum

from sqlalchemy import CheckConstraint, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from govpki.db import Base, UTCDateTime


class CaKind(enum.StrEnum):
    ROOT = "root"
    ISSUING = "issuing"


class CertState(enum.StrEnum):
    RESERVED = "reserved"  # serial reserved, request stored, nothing signed
    APPROVED = "approved"  # linted; exact TBS stored; the CA key may sign next
    ISSUED = "issued"  # signed and stored
    FAILED = "failed"  # refused after reservation (lint); never signed


class CertificateAuthority(Base):
    __tablename__ = "certificate_authorities"
    __table_args__ = (CheckConstraint("kind IN ('root', 'issuing')", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("certificate_authorities.id"))
    key_store: Mapped[str] = mapped_column(String(20))  # "root" or "online"
    key_handle: Mapped[str] = mapped_column(String(200))
    key_algorithm: Mapped[str] = mapped_column(String(20))
    serial: Mapped[str] = mapped_column(String(42))
    subject: Mapped[str] = mapped_column(Text())
    ski: Mapped[str] = mapped_column(String(128))
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    cert_der: Mapped[bytes] = mapped_column(LargeBinary())
    not_before: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())

    parent: Mapped[CertificateAuthority | None] = relationship(remote_side=[id])


class CertificateRecord(Base):
    __tablename__ = "certificates"
    __table_args__ = (
        CheckConstraint("state IN ('reserved', 'approved', 'issued', 'failed')", name="state"),
        CheckConstraint("state != 'issued' OR cert_der IS NOT NULL", name="issued_has_cert"),
        CheckConstraint("state NOT IN ('approved', 'issued') OR tbs_der IS NOT NULL", name="approved_has_tbs"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(42), unique=True)  # lower-case hex, no leading zeros
    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), index=True)
    profile: Mapped[str] = mapped_column(String(64))
    profile_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), index=True)
    requester: Mapped[str] = mapped_column(String(200))
    csr_der: Mapped[bytes | None] = mapped_column(LargeBinary())
    subject: Mapped[str] = mapped_column(Text())
    sans: Mapped[str] = mapped_column(Text(), default="")
    key_type: Mapped[str] = mapped_column(String(20))
    spki_sha256: Mapped[str] = mapped_column(String(64), index=True)
    tbs_der: Mapped[bytes | None] = mapped_column(LargeBinary())
    cert_der: Mapped[bytes | None] = mapped_column(LargeBinary())
    fingerprint_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    not_before: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    not_after: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    failure: Mapped[str | None] = mapped_column(Text())
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    issued_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())

    ca: Mapped[CertificateAuthority] = relationship()
