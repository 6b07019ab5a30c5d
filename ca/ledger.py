"""The issuance ledger: the CA's narrow storage interface (boulder's SA).

Each method runs and commits its own short transaction, with its audit entry in
that same transaction, independent of the caller's unit of work — like a
write-ahead log: the serial and the intent to sign are durable *before* the CA
key signs, and the certificate is durable before anyone sees it. If the process
dies between two ledger writes, the record stays and says how far issuance got.

Because the ledger commits on its own connection, a caller must not hold
uncommitted writes when it asks the CA to issue (SQLite has one writer, and the
audit chain head is a single row): call the CA first, then write.
"""

from __future__ import annotations

import datetime as _dt
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ca.events import CaEvent
from ca.models import CertificateRecord, CertState
from govpki import audit
from govpki.clock import Clock
from govpki.errors import UnavailableError
from govpki.principal import Principal

SERIAL_BITS = 127  # positive, at most 16 octets DER, far above the 64-bit floor


def new_serial() -> int:
    while True:
        value = secrets.randbits(SERIAL_BITS)
        if value >= 1 << 64:  # keep at least 64 bits of entropy in every serial
            return value


def serial_hex(value: int) -> str:
    return format(value, "x")


@dataclass(frozen=True)
class Reservation:
    record_id: int
    serial: int


class IssuanceLedger:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    def reserve(
        self,
        principal: Principal,
        *,
        ca_id: int,
        profile: str,
        profile_version: int,
        csr_der: bytes | None,
        subject: str,
        sans: str,
        key_type: str,
        spki_sha256: str,
    ) -> Reservation:
        for _attempt in range(5):
            serial = new_serial()
            now = self._clock.now()
            with self._sessions() as session:
                record = CertificateRecord(
                    serial=serial_hex(serial),
                    ca_id=ca_id,
                    profile=profile,
                    profile_version=profile_version,
                    state=CertState.RESERVED.value,
                    requester=principal.audit_name,
                    csr_der=csr_der,
                    subject=subject,
                    sans=sans,
                    key_type=key_type,
                    spki_sha256=spki_sha256,
                    created_at=now,
                    updated_at=now,
                )
                session.add(record)
                try:
                    session.flush()
                except IntegrityError:
                    session.rollback()
                    if session.scalar(
                        select(CertificateRecord.id).where(CertificateRecord.serial == serial_hex(serial))
                    ):
                        continue  # a serial collision: draw again
                    raise
                audit.record(
                    session,
                    principal,
                    CaEvent.CERT_RESERVE.value,
                    object_type="certificate",
                    object_id=record.serial,
                    details={
                        "ca_id": ca_id,
                        "profile": profile,
                        "profile_version": profile_version,
                        "subject": subject,
                    },
                    clock=self._clock,
                )
                session.commit()
                return Reservation(record.id, serial)
        raise UnavailableError("could not reserve a unique serial number; try again")

    def approve(
        self,
        principal: Principal,
        reservation: Reservation,
        *,
        tbs_der: bytes,
        not_before: _dt.datetime,
        not_after: _dt.datetime,
    ) -> None:
        with self._sessions() as session:
            record = session.get_one(CertificateRecord, reservation.record_id)
            record.state = CertState.APPROVED.value
            record.tbs_der = tbs_der
            record.not_before = not_before
            record.not_after = not_after
            record.updated_at = self._clock.now()
            audit.record(
                session,
                principal,
                CaEvent.CERT_APPROVE.value,
                object_type="certificate",
                object_id=record.serial,
                details={"not_before": not_before.isoformat(), "not_after": not_after.isoformat()},
                clock=self._clock,
            )
            session.commit()

    def issued(self, principal: Principal, reservation: Reservation, *, cert_der: bytes, fingerprint: str) -> None:
        with self._sessions() as session:
            record = session.get_one(CertificateRecord, reservation.record_id)
            record.state = CertState.ISSUED.value
            record.cert_der = cert_der
            record.fingerprint_sha256 = fingerprint
            record.issued_at = self._clock.now()
            record.updated_at = record.issued_at
            audit.record(
                session,
                principal,
                CaEvent.CERT_ISSUE.value,
                object_type="certificate",
                object_id=record.serial,
                details={
                    "ca_id": record.ca_id,
                    "profile": record.profile,
                    "profile_version": record.profile_version,
                    "subject": record.subject,
                    "sans": record.sans,
                    "fingerprint_sha256": fingerprint,
                    "not_after": record.not_after.isoformat() if record.not_after else None,
                },
                clock=self._clock,
            )
            session.commit()

    def fail(self, principal: Principal, reservation: Reservation, reason: str) -> None:
        with self._sessions() as session:
            record = session.get_one(CertificateRecord, reservation.record_id)
            record.state = CertState.FAILED.value
            record.failure = reason
            record.updated_at = self._clock.now()
            audit.record(
                session,
                principal,
                CaEvent.CERT_REFUSE.value,
                object_type="certificate",
                object_id=record.serial,
                details={"reason": reason},
                outcome="failure",
                clock=self._clock,
            )
            session.commit()
