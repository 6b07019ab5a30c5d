"""Revocation, hold and release: one record per change, audited in the same
transaction, refused clearly when the change makes no sense."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import func, select

from authz.console import changes_of
from ca.models import CaKind, CaStatus, CertificateRecord
from ca.revocation import Status
from govpki.audit import AuditEntry, verify_chain
from govpki.clock import UTC
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import csr_pem
from web.container import Services

AUDITOR = Principal(PrincipalKind.ACCOUNT, "9", "auditor", frozenset({Role.SECURITY_AUDITOR}))


def _issue(services: Services, cn: str = "rev.example.gov.cn") -> str:
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn))
        session.commit()
        return record.serial


def _audit_actions(services: Services, serial: str) -> list[str]:
    with services.sessions() as session:
        return list(
            session.scalars(select(AuditEntry.action).where(AuditEntry.object_id == serial).order_by(AuditEntry.seq))
        )


def test_revoke_records_reason_time_and_audit(services: Services) -> None:
    serial = _issue(services)
    compromised = dt.datetime(2026, 1, 1, tzinfo=UTC)
    with services.sessions() as session:
        record = services.revocation.revoke(
            session, SYSTEM, serial.upper(), reason="keyCompromise", invalidity_date=compromised
        )
        session.commit()
        assert record.revocation_reason == "keyCompromise"
        assert record.invalidity_date == compromised
        assert record.status_seq == 1
        status = services.revocation.status(session, serial)
        assert status.status is Status.REVOKED and status.reason == "keyCompromise"
        assert session.get_one(CaStatus, record.ca_id).status_seq == 1
    assert _audit_actions(services, serial)[-1] == "ca:certificate:revoke"
    with services.sessions() as session:
        assert verify_chain(session).ok


def test_revoking_twice_is_a_conflict_and_changes_nothing(services: Services) -> None:
    serial = _issue(services)
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, serial, reason="superseded")
        session.commit()
    before = _audit_actions(services, serial)
    with services.sessions() as session, pytest.raises(ConflictError) as caught:
        services.revocation.revoke(session, SYSTEM, serial, reason="keyCompromise")
    assert caught.value.field == "serial" and "already revoked" in caught.value.reason
    assert _audit_actions(services, serial) == before
    with services.sessions() as session:
        assert services.revocation.status(session, serial).reason == "superseded"


def test_hold_release_and_hold_then_revoke(services: Services) -> None:
    serial = _issue(services)
    with services.sessions() as session:
        services.revocation.hold(session, SYSTEM, serial)
        session.commit()
        assert services.revocation.status(session, serial).status is Status.ON_HOLD
    with services.sessions() as session, pytest.raises(ConflictError, match="already on hold"):
        services.revocation.hold(session, SYSTEM, serial)
    with services.sessions() as session:
        record = services.revocation.release(session, SYSTEM, serial)
        session.commit()
        assert record.revocation_reason is None and record.released_hold_at is not None
        assert services.revocation.status(session, serial).status is Status.GOOD
    with services.sessions() as session, pytest.raises(ConflictError, match="not on hold"):
        services.revocation.release(session, SYSTEM, serial)
    with services.sessions() as session:
        services.revocation.hold(session, SYSTEM, serial)
        services.revocation.revoke(session, SYSTEM, serial, reason="affiliationChanged")
        session.commit()
    with services.sessions() as session, pytest.raises(ConflictError, match="revoked"):
        services.revocation.release(session, SYSTEM, serial)
    assert _audit_actions(services, serial)[-4:] == [
        "ca:certificate:hold",
        "ca:certificate:release",
        "ca:certificate:hold",
        "ca:certificate:revoke",
    ]
    # each entry carries the status before and after (the auditors' console shows them)
    with services.sessions() as session:
        entries = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.object_id == serial, AuditEntry.action.like("ca:certificate:%"))
            .order_by(AuditEntry.seq)
        ).all()
        changes = [changes_of(json.loads(e.details)) for e in entries[-4:]]
    assert changes == [
        [("status", "good", "on_hold")],
        [("status", "on_hold", "good")],
        [("status", "good", "on_hold")],
        [("reason", None, "affiliationChanged"), ("status", "on_hold", "revoked")],
    ]


def test_wrong_ca_unknown_serial_and_bad_values(services: Services) -> None:
    serial = _issue(services)
    with services.sessions() as session:
        root = services.ca.active_ca(session, CaKind.ROOT)
        with pytest.raises(NotFoundError, match="issued by CA"):
            services.revocation.revoke(session, SYSTEM, serial, ca_id=root.id)
        with pytest.raises(NotFoundError):
            services.revocation.revoke(session, SYSTEM, "abcdef")
        with pytest.raises(InvalidError) as bad_serial:
            services.revocation.revoke(session, SYSTEM, "not-hex")
        assert bad_serial.value.field == "serial"
        with pytest.raises(InvalidError) as bad_reason:
            services.revocation.revoke(session, SYSTEM, serial, reason="because")
        assert bad_reason.value.field == "reason"
        with pytest.raises(InvalidError) as hold_reason:
            services.revocation.revoke(session, SYSTEM, serial, reason="certificateHold")
        assert hold_reason.value.field == "reason"
        future = dt.datetime.now(UTC) + dt.timedelta(days=1)
        with pytest.raises(InvalidError) as bad_date:
            services.revocation.revoke(session, SYSTEM, serial, invalidity_date=future)
        assert bad_date.value.field == "invalidity_date"
        with pytest.raises(ForbiddenError):
            services.revocation.revoke(session, AUDITOR, serial)
    with services.sessions() as session:
        assert services.revocation.status(session, serial).status is Status.GOOD
        assert session.scalar(select(func.max(CaStatus.status_seq))) == 0


def test_a_record_left_approved_by_a_crash_can_be_revoked(services: Services) -> None:
    serial = _issue(services)
    with services.sessions() as session:
        record = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == serial)).one()
        record.state = "approved"
        record.cert_der = None
        record.fingerprint_sha256 = None
        session.commit()
    with services.sessions() as session:
        assert services.revocation.status(session, serial).status is Status.GOOD  # possibly issued
        services.revocation.revoke(session, SYSTEM, serial, reason="cessationOfOperation")
        session.commit()
        assert services.revocation.status(session, serial).status is Status.REVOKED
