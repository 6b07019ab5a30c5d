"""Revocation: revoke with an RFC 5280 reason, suspend (certificateHold) and resume.

Every status change, in the caller's unit of work: bumps the CA's status sequence
(``ca_status``, row-locked, so changes and CRL generation are serialised per CA),
stamps the record with it, writes its audit entry, and tells the listeners (the
OCSP responder re-signs the certificate's response) — all in one transaction.

Records left ``approved`` by a crash were possibly signed, so they can be revoked
and are treated as issued everywhere (see ``ca.models.POSSIBLY_ISSUED``).
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ca.events import CaEvent
from ca.models import POSSIBLY_ISSUED, CaStatus, CertificateRecord, RevocationReason
from ca.services import can_issue, can_request, normalize_serial
from ca.transparency import TransparencyLog
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from govpki.principal import Principal

HOLD = RevocationReason.CERTIFICATE_HOLD
# Reasons an operator may give to ``revoke`` (certificateHold is ``hold``; removeFromCRL
# is not a revocation but how a delta CRL says a hold was released).
REVOKE_REASONS = tuple(r.value for r in RevocationReason if r is not HOLD)

StatusListener = Callable[[Session, CertificateRecord], None]


class Status(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    ON_HOLD = "on_hold"
    UNKNOWN = "unknown"  # not a certificate this CA may have signed


@dataclass(frozen=True)
class CertStatus:
    """The status relying parties see (OCSP, the validation API)."""

    status: Status
    serial: str
    ca_id: int | None = None
    reason: str | None = None
    revoked_at: _dt.datetime | None = None
    invalidity_date: _dt.datetime | None = None
    not_after: _dt.datetime | None = None
    status_seq: int = 0

    @property
    def is_revoked(self) -> bool:
        """Revoked or on hold: OCSP says ``revoked`` for both (a hold with reason certificateHold)."""
        return self.status in (Status.REVOKED, Status.ON_HOLD)


def status_of(record: CertificateRecord | None, serial: str = "") -> CertStatus:
    if record is None or record.state not in POSSIBLY_ISSUED:
        return CertStatus(Status.UNKNOWN, record.serial if record else serial, record.ca_id if record else None)
    if record.revocation_reason is None:
        status = Status.GOOD
    elif record.revocation_reason == HOLD:
        status = Status.ON_HOLD
    else:
        status = Status.REVOKED
    return CertStatus(
        status,
        record.serial,
        record.ca_id,
        record.revocation_reason,
        record.revoked_at,
        record.invalidity_date,
        record.not_after,
        record.status_seq,
    )


def parse_reason(value: str) -> RevocationReason:
    for reason in RevocationReason:
        if reason.value.lower() == value.strip().lower() or reason.name.lower() == value.strip().lower():
            if reason is HOLD:
                raise InvalidError("use hold (suspend) for certificateHold", field="reason")
            return reason
    raise InvalidError(f"{value!r} is not an RFC 5280 reason; one of {', '.join(REVOKE_REASONS)}", field="reason")


class RevocationService:
    def __init__(self, clock: Clock, tlog: TransparencyLog) -> None:
        self._clock = clock
        self._tlog = tlog
        self._listeners: list[StatusListener] = []

    def on_change(self, listener: StatusListener) -> None:
        """Call ``listener(session, record)`` after every status change, in its transaction."""
        self._listeners.append(listener)

    # ----- reading ---------------------------------------------------------

    def status(self, session: Session, serial: str, *, ca_id: int | None = None) -> CertStatus:
        """Status of a serial (hex), optionally only if that CA issued it. No principal: public information."""
        normalized = normalize_serial(serial)
        record = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == normalized)).first()
        if record is not None and ca_id is not None and record.ca_id != ca_id:
            record = None
        return status_of(record, normalized)

    # ----- changing --------------------------------------------------------

    def revoke(
        self,
        session: Session,
        principal: Principal,
        serial: str,
        *,
        reason: RevocationReason | str = RevocationReason.UNSPECIFIED,
        invalidity_date: _dt.datetime | None = None,
        ca_id: int | None = None,
    ) -> CertificateRecord:
        chosen = reason if isinstance(reason, RevocationReason) else parse_reason(reason)
        if chosen is HOLD:
            raise InvalidError("use hold (suspend) for certificateHold", field="reason")
        record = self._find(session, principal, serial, ca_id)
        now = self._clock.now()
        if invalidity_date is not None:
            if invalidity_date.tzinfo is None:
                raise InvalidError("must carry a time zone (RFC 3339)", field="invalidity_date")
            if invalidity_date > now:
                raise InvalidError("is in the future", field="invalidity_date")
        current = record.revocation_reason
        if current is not None and current != HOLD:
            assert record.revoked_at is not None
            raise ConflictError(
                f"certificate {record.serial} was already revoked at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ} "
                f"({current})",
                field="serial",
                code="ca.already_revoked",
                params={"serial": record.serial},
            )
        self._not_expired(record, now)
        record.revocation_reason = chosen.value
        record.revoked_at = now.replace(microsecond=0)
        record.invalidity_date = invalidity_date
        self._changed(
            session,
            principal,
            record,
            CaEvent.CERT_REVOKE,
            {
                "reason": chosen.value,
                "invalidity_date": invalidity_date.isoformat() if invalidity_date else None,
                "was_on_hold": current == HOLD,
            },
            before=current,
        )
        return record

    def hold(
        self, session: Session, principal: Principal, serial: str, *, ca_id: int | None = None
    ) -> CertificateRecord:
        record = self._find(session, principal, serial, ca_id)
        now = self._clock.now()
        if record.revocation_reason == HOLD:
            raise ConflictError(
                f"certificate {record.serial} is already on hold",
                field="serial",
                code="ca.already_on_hold",
                params={"serial": record.serial},
            )
        if record.revocation_reason is not None:
            raise ConflictError(
                f"certificate {record.serial} is revoked ({record.revocation_reason}); it cannot be put on hold",
                field="serial",
                code="ca.already_revoked",
                params={"serial": record.serial},
            )
        self._not_expired(record, now)
        record.revocation_reason = HOLD.value
        record.revoked_at = now.replace(microsecond=0)
        record.invalidity_date = None
        self._changed(session, principal, record, CaEvent.CERT_HOLD, {"reason": HOLD.value}, before=None)
        return record

    def release(
        self, session: Session, principal: Principal, serial: str, *, ca_id: int | None = None
    ) -> CertificateRecord:
        record = self._find(session, principal, serial, ca_id)
        if record.revocation_reason != HOLD:
            what = "revoked for good" if record.revocation_reason else "not on hold"
            raise ConflictError(
                f"certificate {record.serial} is {what}; only a hold can be released",
                field="serial",
                code="ca.not_on_hold",
                params={"serial": record.serial},
            )
        held_at = record.revoked_at
        record.revocation_reason = None
        record.revoked_at = None
        record.released_at = self._clock.now().replace(microsecond=0)
        record.released_hold_at = held_at
        self._changed(
            session,
            principal,
            record,
            CaEvent.CERT_RELEASE,
            {"held_at": held_at.isoformat() if held_at else None},
            before=HOLD.value,
        )
        return record

    # ----- helpers ---------------------------------------------------------

    def _find(self, session: Session, principal: Principal, serial: str, ca_id: int | None) -> CertificateRecord:
        if not can_request(principal):
            raise ForbiddenError("your role may not revoke or suspend certificates", field="serial")
        normalized = normalize_serial(serial)
        record = session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial == normalized).with_for_update()
        ).first()
        if record is not None and not can_issue(principal) and record.prefecture_code != principal.prefecture:
            record = None  # an RA officer acts on its own prefecture's certificates only
        if record is None or (ca_id is not None and record.ca_id != ca_id):
            where = f" issued by CA {ca_id}" if ca_id is not None else ""
            raise NotFoundError(f"no certificate with serial {serial}{where}", field="serial")
        if record.state not in POSSIBLY_ISSUED:
            raise ConflictError(
                f"certificate {record.serial} is in state {record.state}: it was never signed",
                field="serial",
                code="ca.not_issued",
                params={"serial": record.serial},
            )
        return record

    @staticmethod
    def _not_expired(record: CertificateRecord, now: _dt.datetime) -> None:
        if record.not_after is not None and record.not_after < now:
            raise ConflictError(
                f"certificate {record.serial} expired at {record.not_after:%Y-%m-%dT%H:%M:%SZ}; "
                "an expired certificate is no longer on CRLs or in OCSP, so its status cannot change",
                field="serial",
                code="ca.expired",
                params={"serial": record.serial},
            )

    def _changed(
        self,
        session: Session,
        principal: Principal,
        record: CertificateRecord,
        event: CaEvent,
        details: dict[str, object],
        *,
        before: str | None,
    ) -> None:
        """``before``: the revocation reason before the change (None: good), for the audit
        entry's before/after values."""
        now = self._clock.now()
        seq = session.execute(
            update(CaStatus)
            .where(CaStatus.ca_id == record.ca_id)
            .values(status_seq=CaStatus.status_seq + 1, updated_at=now)
            .returning(CaStatus.status_seq)
        ).scalar_one_or_none()
        if seq is None:  # pragma: no cover - every CA gets its row when it is created
            raise NotFoundError(f"CA {record.ca_id} has no status row", field="ca")
        record.status_seq = seq
        record.updated_at = now
        session.flush()
        audit.record(
            session,
            principal,
            event.value,
            object_type="certificate",
            object_id=record.serial,
            details={
                "ca_id": record.ca_id,
                "status_seq": seq,
                **details,
                "before": _status_value(before),
                "after": _status_value(record.revocation_reason),
            },
            clock=self._clock,
        )
        if record.revocation_reason is not None:  # a revocation or a hold (a release is not logged)
            self._tlog.append_revoke(session, record)
        for listener in self._listeners:
            listener(session, record)


def _status_value(reason: str | None) -> dict[str, str]:
    if reason is None:
        return {"status": "good"}
    if reason == HOLD:
        return {"status": "on_hold"}
    return {"status": "revoked", "reason": reason}
