"""CA storage: the certificate authorities and every certificate record.

A certificate record exists *before* the CA key signs (state ``reserved``), holds
the exact to-be-signed content before signing (state ``approved``: the lint copy,
whose TBS equals the real certificate's), and the certificate after (``issued``).
A record left in ``reserved`` or ``approved`` by a crash says how far it got.
"""

from __future__ import annotations

import datetime as _dt
import enum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from govpki.db import Base, UTCDateTime


class CaKind(enum.StrEnum):
    ROOT = "root"
    ISSUING = "issuing"


class CaState(enum.StrEnum):
    """What a CA does now (derived from ``active``, ``superseded_at`` and ``retired_at``)."""

    ISSUING = "issuing"  # signs new certificates (``active``), CRLs and OCSP
    SERVING = "serving"  # superseded by a rollover: no new certificates; still CRLs/ARL, OCSP, trust
    RETIRED = "retired"  # every certificate it issued has expired; nothing signed any more


class CertState(enum.StrEnum):
    RESERVED = "reserved"  # serial reserved, request stored, nothing signed
    APPROVED = "approved"  # linted; exact TBS stored; the CA key may sign next
    ISSUED = "issued"  # signed and stored
    FAILED = "failed"  # refused after reservation (lint); never signed


# A certificate that may exist in the wild: ``approved`` records were possibly
# signed before a crash, so revocation, CRLs and OCSP treat them as issued.
POSSIBLY_ISSUED = (CertState.APPROVED.value, CertState.ISSUED.value)

BigId = BigInteger().with_variant(Integer(), "sqlite")


class RevocationReason(enum.StrEnum):
    """RFC 5280 CRLReason names, as in ``cryptography.x509.ReasonFlags`` values."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"


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
    # ``active``: this CA issues new certificates (the newest active CA of a kind is
    # "the" root or issuing CA). A rollover clears it and sets ``superseded_at``; the
    # CA keeps signing CRLs and OCSP responses (and, a root, stays a trust anchor)
    # until ``retired_at``, set once the last certificate it issued has expired.
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    superseded_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    retired_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())

    parent: Mapped[CertificateAuthority | None] = relationship(remote_side=[id])

    @property
    def state(self) -> CaState:
        if self.retired_at is not None:
            return CaState.RETIRED
        return CaState.ISSUING if self.active else CaState.SERVING

    @property
    def serving(self) -> bool:
        """Not retired: it still signs CRLs (ARL) and OCSP responses for what it issued."""
        return self.retired_at is None


class CrossDirection(enum.StrEnum):
    """RFC 4210 section 4.4 root CA key update."""

    NEW_WITH_OLD = "new_with_old"  # the new root's name and key, signed by the old root key
    OLD_WITH_NEW = "old_with_new"  # the old root's name and key, signed by the new root key


class CrossCertificate(Base):
    """A cross-certificate between two of our roots, made at a root rollover: the
    subject root's name and public key, signed by the issuer root's key. Clients that
    trust only one root reach CAs under the other through it."""

    __tablename__ = "cross_certificates"
    __table_args__ = (CheckConstraint("direction IN ('new_with_old', 'old_with_new')", name="direction"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    direction: Mapped[str] = mapped_column(String(20))
    subject_ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), index=True)
    issuer_ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), index=True)
    serial: Mapped[str] = mapped_column(String(42))
    subject: Mapped[str] = mapped_column(Text())
    issuer: Mapped[str] = mapped_column(Text())
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    cert_der: Mapped[bytes] = mapped_column(LargeBinary())
    not_before: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())

    subject_ca: Mapped[CertificateAuthority] = relationship(foreign_keys=[subject_ca_id])
    issuer_ca: Mapped[CertificateAuthority] = relationship(foreign_keys=[issuer_ca_id])


class CertificateRecord(Base):
    __tablename__ = "certificates"
    __table_args__ = (
        CheckConstraint("state IN ('reserved', 'approved', 'issued', 'failed')", name="state"),
        CheckConstraint("state != 'issued' OR cert_der IS NOT NULL", name="issued_has_cert"),
        CheckConstraint("state NOT IN ('approved', 'issued') OR tbs_der IS NOT NULL", name="approved_has_tbs"),
        CheckConstraint("(revocation_reason IS NULL) = (revoked_at IS NULL)", name="revoked_has_time"),
        Index("ix_certificates_ca_revoked", "ca_id", "revocation_reason"),
        Index("ix_certificates_ca_status_seq", "ca_id", "status_seq"),
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
    # Revocation status. ``revocation_reason`` NULL: not revoked; "certificateHold":
    # suspended; any other RFC 5280 reason: revoked for good.
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    invalidity_date: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    # When a hold was last released, and the time that hold began (delta CRLs list
    # the certificate with removeFromCRL when the hold was on their base CRL).
    released_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    released_hold_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    # The issuing CA's status sequence number at this record's last status change
    # (0: never changed). Delta CRLs list the records changed after their base.
    status_seq: Mapped[int] = mapped_column(BigId, default=0, server_default="0")
    # Whom the certificate serves, set at issuance (the RA portal fills them): the prefecture
    # whose RA gets its expiry notices (a table of the ``ra`` layer, referred to by name only),
    # the subscriber's contact address, and the certificate this one renews.
    prefecture_code: Mapped[str | None] = mapped_column(ForeignKey("prefectures.code"), index=True)
    contact_email: Mapped[str | None] = mapped_column(String(254))
    renewed_from_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"), index=True)

    ca: Mapped[CertificateAuthority] = relationship()
    renewed_from: Mapped[CertificateRecord | None] = relationship(remote_side=[id])


class CaStatus(Base):
    """Per-CA counters, one row per CA, updated (and so row-locked) by every status
    change and every CRL: status changes and CRL generation are serialised per CA,
    which keeps delta CRLs exact."""

    __tablename__ = "ca_status"

    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), primary_key=True)
    status_seq: Mapped[int] = mapped_column(BigId, default=0)
    crl_number: Mapped[int] = mapped_column(BigId, default=0)  # the last CRL number used (full and delta share it)
    updated_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class CrlKind(enum.StrEnum):
    FULL = "full"
    DELTA = "delta"


class CrlRecord(Base):
    """Every CRL a CA signed, kept (the latest of each kind is served)."""

    __tablename__ = "crls"
    __table_args__ = (
        UniqueConstraint("ca_id", "number", name="uq_crls_ca_id_number"),
        CheckConstraint("kind IN ('full', 'delta')", name="kind"),
        CheckConstraint("kind = 'full' OR base_number IS NOT NULL", name="delta_has_base"),
        Index("ix_crls_ca_kind_number", "ca_id", "kind", "number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"))
    number: Mapped[int] = mapped_column(BigId)
    kind: Mapped[str] = mapped_column(String(10))
    base_number: Mapped[int | None] = mapped_column(BigId)
    status_seq: Mapped[int] = mapped_column(BigId)  # the CA's status sequence this CRL reflects
    this_update: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    next_update: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    entries: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary())
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class OcspResponder(Base):
    """A delegated OCSP signing certificate (id-kp-OCSPSigning, ocsp-nocheck) of one
    CA, its key in the online key store. The newest active one signs."""

    __tablename__ = "ocsp_responders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), index=True)
    key_store: Mapped[str] = mapped_column(String(20))
    key_handle: Mapped[str] = mapped_column(String(200))
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"))
    cert_der: Mapped[bytes] = mapped_column(LargeBinary())
    not_before: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class OcspResponse(Base):
    """A pre-signed OCSP response for one certificate and CertID hash algorithm.
    The responder's hot path looks these up and returns the bytes."""

    __tablename__ = "ocsp_responses"
    __table_args__ = (PrimaryKeyConstraint("ca_id", "serial", "hash_algorithm"),)

    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"))
    serial: Mapped[str] = mapped_column(String(42))
    hash_algorithm: Mapped[str] = mapped_column(String(10))  # "sha1" or "sha256"
    status_seq: Mapped[int] = mapped_column(BigId)
    responder_id: Mapped[int] = mapped_column(ForeignKey("ocsp_responders.id"))
    this_update: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    next_update: Mapped[_dt.datetime] = mapped_column(UTCDateTime(), index=True)
    der: Mapped[bytes] = mapped_column(LargeBinary())


class TlogEntry(Base):
    """A leaf of the issuance transparency log (RFC 9162 hashing): every issued
    certificate and every revocation, in order. ``idx`` is the leaf index (0-based);
    ``leaf`` the exact bytes hashed as ``SHA-256(0x00 || leaf)``. Appended in the same
    transaction as the issuance/revocation, after its audit entry (whose head-row lock
    serialises appenders, so ``max(idx) + 1`` is safe)."""

    __tablename__ = "tlog_entries"

    idx: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(10))  # "issue" or "revoke"
    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"))
    serial: Mapped[str] = mapped_column(String(42), index=True)
    leaf: Mapped[bytes] = mapped_column(LargeBinary())
    leaf_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class TlogTreeHead(Base):
    """A signed tree head (RFC 6962 style): size, root hash, time, signature."""

    __tablename__ = "tlog_tree_heads"

    tree_size: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    root_hash: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    key_store: Mapped[str] = mapped_column(String(20))
    key_handle: Mapped[str] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(40))
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary())
    signed_data: Mapped[bytes] = mapped_column(LargeBinary())
    signature: Mapped[bytes] = mapped_column(LargeBinary())
