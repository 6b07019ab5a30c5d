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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ca.events import CaEvent
from ca.models import CertificateRecord, CertState
from ca.transparency import TransparencyLog
from govpki import audit
from govpki.clock import Clock
from govpki.db import WriteGate
from govpki.errors import UnavailableError
from govpki.principal import Principal
from keymgmt.services import KeyService

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
    ca_id: int
    profile: str
    profile_version: int
    subject: str
    sans: str

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.serial)


_T = cast(Table, CertificateRecord.__table__)
_RESERVE = insert(_T).returning(_T.c.id)
_ADVANCE = update(_T).where(_T.c.id == bindparam("record_id"))


def _links(prefecture_code: str | None, contact_email: str | None, renewed_from_id: int | None) -> dict[str, Any]:
    """Who the certificate serves and what it renews, for the reservation's audit entry (only those set)."""
    values = {"prefecture": prefecture_code, "contact_email": contact_email, "renewed_from_id": renewed_from_id}
    return {key: value for key, value in values.items() if value is not None}


class IssuanceLedger:
    """Each method is one short transaction through the write gate, in Core SQL
    (this is the hot critical section of issuance)."""

    def __init__(
        self, engine: Engine, clock: Clock, gate: WriteGate, tlog: TransparencyLog, keys: KeyService | None = None
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._gate = gate
        self._tlog = tlog
        self._keys = keys

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
        prefecture_code: str | None = None,
        contact_email: str | None = None,
        renewed_from_id: int | None = None,
    ) -> Reservation:
        for _attempt in range(5):
            serial = new_serial()
            now = self._clock.now()
            with self._gate, self._engine.connect() as conn:
                try:
                    with conn.begin():
                        record_id = conn.execute(
                            _RESERVE,
                            {
                                "serial": serial_hex(serial),
                                "ca_id": ca_id,
                                "profile": profile,
                                "profile_version": profile_version,
                                "state": CertState.RESERVED.value,
                                "requester": principal.audit_name,
                                "csr_der": csr_der,
                                "subject": subject,
                                "sans": sans,
                                "key_type": key_type,
                                "spki_sha256": spki_sha256,
                                "prefecture_code": prefecture_code,
                                "contact_email": contact_email,
                                "renewed_from_id": renewed_from_id,
                                "created_at": now,
                                "updated_at": now,
                            },
                        ).scalar_one()
                        audit.record(
                            conn,
                            principal,
                            CaEvent.CERT_RESERVE.value,
                            object_type="certificate",
                            object_id=serial_hex(serial),
                            details={
                                "ca_id": ca_id,
                                "profile": profile,
                                "profile_version": profile_version,
                                "subject": subject,
                                **_links(prefecture_code, contact_email, renewed_from_id),
                            },
                            clock=self._clock,
                        )
                except IntegrityError:
                    taken = select(_T.c.id).where(_T.c.serial == serial_hex(serial))
                    if conn.execute(taken).first() is not None:
                        continue  # a serial collision: draw again
                    raise
                return Reservation(record_id, serial, ca_id, profile, profile_version, subject, sans)
        raise UnavailableError("could not reserve a unique serial number; try again")

    def _transition(
        self,
        principal: Principal,
        reservation: Reservation,
        event: CaEvent,
        values: dict[str, Any],
        details: dict[str, Any],
        outcome: str = "success",
        after: Callable[[Connection], object] | None = None,
    ) -> None:
        with self._gate, self._engine.begin() as conn:
            now = self._clock.now()
            changed = conn.execute(_ADVANCE, {"record_id": reservation.record_id, "updated_at": now, **values})
            if changed.rowcount != 1:
                raise UnavailableError(f"certificate record {reservation.serial_hex} vanished during issuance")
            audit.record(
                conn,
                principal,
                event.value,
                object_type="certificate",
                object_id=reservation.serial_hex,
                details=details,
                outcome=outcome,
                clock=self._clock,
            )
            if after is not None:  # after the audit entry: its head-row lock serialises the log's appenders
                after(conn)

    def approve(
        self,
        principal: Principal,
        reservation: Reservation,
        *,
        tbs_der: bytes,
        not_before: _dt.datetime,
        not_after: _dt.datetime,
    ) -> None:
        self._transition(
            principal,
            reservation,
            CaEvent.CERT_APPROVE,
            {"state": CertState.APPROVED.value, "tbs_der": tbs_der, "not_before": not_before, "not_after": not_after},
            {"not_before": not_before.isoformat(), "not_after": not_after.isoformat()},
        )

    def issued(
        self,
        principal: Principal,
        reservation: Reservation,
        *,
        cert_der: bytes,
        fingerprint: str,
        not_after: _dt.datetime,
        signed_with: tuple[str, str] | None = None,
    ) -> None:
        """``signed_with``: the CA key's (store, handle), whose usage counter goes up by one."""

        def after(conn: Connection) -> None:
            self._tlog.append_issue(
                conn, ca_id=reservation.ca_id, serial=reservation.serial_hex, cert_sha256=fingerprint
            )
            if self._keys is not None and signed_with is not None:
                self._keys.count_use(conn, *signed_with)

        self._transition(
            principal,
            reservation,
            CaEvent.CERT_ISSUE,
            {
                "state": CertState.ISSUED.value,
                "cert_der": cert_der,
                "fingerprint_sha256": fingerprint,
                "issued_at": self._clock.now(),
            },
            {
                "ca_id": reservation.ca_id,
                "profile": reservation.profile,
                "profile_version": reservation.profile_version,
                "subject": reservation.subject,
                "sans": reservation.sans,
                "fingerprint_sha256": fingerprint,
                "not_after": not_after.isoformat(),
            },
            after=after,
        )

    def fail(self, principal: Principal, reservation: Reservation, reason: str) -> None:
        self._transition(
            principal,
            reservation,
            CaEvent.CERT_REFUSE,
            {"state": CertState.FAILED.value, "failure": reason},
            {"reason": reason},
            outcome="failure",
        )
