"""Crash recovery of the RA workflow: a request left ``approved`` by a process that died
between the approval's claim and the completion is settled by the sweep (the scheduled
jobs, ``govpki ra sweep-requests``) from what the CA's records show, never issuing twice.

The crash is a ``BaseException`` raised inside the approval at the chosen step (the only
mock: a process dying cannot otherwise be caused in a test); everything else is real."""

from __future__ import annotations

import datetime as _dt
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from ca.models import CertificateRecord
from govpki.audit import AuditEntry, verify_chain
from govpki.errors import ForbiddenError, InvalidError
from govpki.principal import SYSTEM
from ra.requests import RECOVERY_GRACE, RequestInput
from ra.subscriber_models import RaRequest
from tests.helpers import csr_pem
from tests.ra.conftest import CLERK, OFFICER
from tests.ra.test_requests import approve, certificate_count, official, service_request, submit
from web.cli import main
from web.container import Services
from web.jobs import run_due


class Crash(BaseException):
    """The process dies here (not an Exception: nothing in the code under test catches it)."""


def crash(*_args: Any, **_kwargs: Any) -> Any:
    raise Crash


def after(real: Any) -> Any:
    """Do the real step (committed by the CA's ledger), then die."""

    def step(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise Crash

    return step


def interrupted_approval(
    ra: Services, request_id: int, monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, fault: Any
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(obj, name, fault)
        with pytest.raises(Crash):
            approve(ra, request_id)
    with ra.sessions() as session:
        assert session.get_one(RaRequest, request_id).state == "approved"


def age(ra: Services, request_id: int, minutes: int = 11) -> None:
    """The approval happened ``minutes`` ago (there is no adjustable clock)."""
    with ra.sessions() as session:
        decided = session.get_one(RaRequest, request_id).decided_at
        assert decided is not None
        session.execute(
            update(RaRequest)
            .where(RaRequest.id == request_id)
            .values(decided_at=decided - _dt.timedelta(minutes=minutes))
        )
        session.commit()


def sweep(ra: Services) -> list[tuple[int, str]]:
    with ra.sessions() as session:
        settled = ra.requests.sweep_approved(session, SYSTEM)
        session.commit()
    return [(s.request_id, s.state) for s in settled]


def settled_request(ra: Services, request_id: int) -> RaRequest:
    with ra.sessions() as session:
        request = ra.requests.get_request(session, OFFICER, request_id)
        _ = request.events
        session.expunge_all()
        return request


def recovery_audit(ra: Services, request_id: int) -> AuditEntry:
    with ra.sessions() as session:
        entries = [
            e
            for e in session.scalars(
                select(AuditEntry).where(
                    AuditEntry.object_type == "ra_request", AuditEntry.object_id == str(request_id)
                )
            )
            if json.loads(e.details).get("recovered")
        ]
        assert len(entries) == 1, entries
        assert verify_chain(session).ok
        session.expunge_all()
        return entries[0]


def test_a_service_certificate_issued_before_the_crash_completes_the_request(
    ra: Services, monkeypatch: pytest.MonkeyPatch
):
    _service_id, request_id = service_request(ra)
    before = certificate_count(ra)
    interrupted_approval(ra, request_id, monkeypatch, ra.ca, "issue", after(ra.ca.issue))
    assert certificate_count(ra) == before + 1
    with ra.sessions() as session:
        issued = session.scalars(select(CertificateRecord).order_by(CertificateRecord.id.desc())).first()
        assert issued is not None and issued.state == "issued"
        serial = issued.serial
    assert sweep(ra) == []  # still inside the grace period: an approval may be running
    age(ra, request_id)
    assert sweep(ra) == [(request_id, "completed")]
    assert certificate_count(ra) == before + 1  # nothing issued by the sweep
    request = settled_request(ra, request_id)
    assert request.certificate_serial == serial and request.failure is None and request.completed_at is not None
    assert [e.action for e in request.events] == ["submit", "approve", "complete"]
    assert serial in (request.events[-1].detail or "")
    entry = recovery_audit(ra, request_id)
    assert entry.action == "ra:request:complete" and entry.outcome == "success"
    assert entry.actor == SYSTEM.audit_name and json.loads(entry.details)["certificate_serial"] == serial
    assert sweep(ra) == []  # settled once


def test_a_crash_before_the_ca_issued_fails_the_request(ra: Services, monkeypatch: pytest.MonkeyPatch):
    request_id = submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[])))
    before = certificate_count(ra)
    interrupted_approval(ra, request_id, monkeypatch, ra.ca, "issue", crash)
    age(ra, request_id)
    assert sweep(ra) == [(request_id, "failed")]
    assert certificate_count(ra) == before
    request = settled_request(ra, request_id)
    assert request.failure == "interrupted before the CA issued anything; submit the request again"
    assert request.failure_code == "ra.interrupted_before_issue" and request.failure_params == {}
    assert request.certificate_serial is None and request.encryption_serial is None
    assert [e.action for e in request.events] == ["submit", "approve", "fail"]
    entry = recovery_audit(ra, request_id)
    assert entry.action == "ra:request:fail" and entry.outcome == "failure"
    # the key is free again: the same CSR can be submitted anew and goes through
    with ra.sessions() as session:
        csr = session.get_one(RaRequest, request_id).csr_pem
    again = submit(ra, RequestInput(kind="new", official_id=request.official_id, csr=csr))
    assert approve(ra, again).request.state == "completed"


def test_an_official_whose_signing_certificate_was_issued_is_told_to_revoke_and_resubmit(
    ra: Services, monkeypatch: pytest.MonkeyPatch
):
    request_id = submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[])))
    before = certificate_count(ra)
    # the signing certificate is issued, then the process dies making the encryption key
    interrupted_approval(ra, request_id, monkeypatch, ra.requests._encryption, "issue", crash)
    assert certificate_count(ra) == before + 1
    age(ra, request_id)
    assert sweep(ra) == [(request_id, "failed")]
    assert certificate_count(ra) == before + 1  # nothing issued by the sweep
    request = settled_request(ra, request_id)
    assert request.certificate_serial is not None and request.escrow_id is None
    assert request.failure is not None
    assert f"signing certificate {request.certificate_serial}" in request.failure
    assert "submit the request again" in request.failure and "nothing to recover through the KMC" in request.failure
    assert request.failure_code == "ra.interrupted_before_escrow"
    assert request.failure_params == {"serial": request.certificate_serial}


def test_a_certificate_stopped_at_approved_is_named(ra: Services, monkeypatch: pytest.MonkeyPatch):
    _service_id, request_id = service_request(ra)
    interrupted_approval(ra, request_id, monkeypatch, ra.ca._ledger, "issued", crash)
    age(ra, request_id)
    assert sweep(ra) == [(request_id, "failed")]
    request = settled_request(ra, request_id)
    with ra.sessions() as session:
        record = session.scalars(select(CertificateRecord).order_by(CertificateRecord.id.desc())).first()
        assert record is not None and record.state == "approved"
    assert request.certificate_serial == record.serial
    assert request.failure is not None and "possibly signed" in request.failure


def test_renewal_and_status_change(ra: Services, monkeypatch: pytest.MonkeyPatch):
    done = approve(ra, submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[]))))
    serial = done.request.certificate_serial
    assert serial is not None
    # a renewal the CA carried out before the crash completes
    renew_id = submit(ra, RequestInput(kind="renew", serial=serial))
    interrupted_approval(ra, renew_id, monkeypatch, ra.ca, "renew", after(ra.ca.renew))
    age(ra, renew_id)
    before = certificate_count(ra)
    assert sweep(ra) == [(renew_id, "completed")]
    assert certificate_count(ra) == before
    renewed = settled_request(ra, renew_id)
    with ra.sessions() as session:
        record = session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial == renewed.certificate_serial)
        ).one()
        old = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == serial)).one()
        assert record.renewed_from_id == old.id and record.state == "issued"
    # a suspension interrupted: the status change is written with the completion, so nothing changed
    suspend_id = submit(ra, RequestInput(kind="suspend", serial=serial))
    interrupted_approval(ra, suspend_id, monkeypatch, ra.requests._revocation, "hold", crash)
    age(ra, suspend_id)
    assert sweep(ra) == [(suspend_id, "failed")]
    with ra.sessions() as session:
        assert ra.revocation.status(session, serial).status.value == "good"
    failure = settled_request(ra, suspend_id).failure
    assert failure is not None and "nothing was changed" in failure
    # the certificate is free for a new request
    assert approve(ra, submit(ra, RequestInput(kind="suspend", serial=serial))).request.state == "completed"


def test_the_scheduled_jobs_and_the_cli_sweep(ra: Services, monkeypatch: pytest.MonkeyPatch):
    first = submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[])))
    interrupted_approval(ra, first, monkeypatch, ra.ca, "issue", crash)
    results = {r.name: r for r in run_due(ra)}
    assert results["ra-requests"].ok and results["ra-requests"].lines == ()  # fresh: left alone
    age(ra, first)
    results = {r.name: r for r in run_due(ra)}
    assert results["ra-requests"].ok
    assert len(results["ra-requests"].lines) == 1 and f"RA request {first}" in results["ra-requests"].lines[0]
    assert settled_request(ra, first).state == "failed"

    second = submit(ra, RequestInput(kind="new", official_id=official(ra, "124"), csr=csr_pem(cn=None, names=[])))
    interrupted_approval(ra, second, monkeypatch, ra.ca, "issue", crash)
    age(ra, second, minutes=3)
    env = {"GOVPKI_INSTANCE_DIR": str(ra.config.instance_dir), "GOVPKI_DATABASE_URL": ra.config.database_url}
    out = CliRunner().invoke(main, ["ra", "sweep-requests"], env=env, catch_exceptions=False)
    assert out.exit_code == 0 and "settled 0 interrupted" in out.output
    assert settled_request(ra, second).state == "approved"
    out = CliRunner().invoke(main, ["ra", "sweep-requests", "--grace-minutes", "2"], env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"request {second}: failed" in out.output
    assert settled_request(ra, second).state == "failed"


def test_only_the_system_or_a_system_admin_sweeps(ra: Services):
    with ra.sessions() as session:
        with pytest.raises(ForbiddenError) as refused:
            ra.requests.sweep_approved(session, CLERK)
        assert refused.value.code == "ra.sweep_forbidden"
        with pytest.raises(InvalidError) as negative:
            ra.requests.sweep_approved(session, SYSTEM, grace=-RECOVERY_GRACE)
        assert negative.value.field == "grace"


def test_an_approval_still_being_carried_out_is_not_swept(ra: Services, monkeypatch: pytest.MonkeyPatch):
    """PostgreSQL: the approval holds its request's row while the CA works, and the sweep
    skips locked rows, so even a sweep without grace leaves a slow approval alone."""
    with ra.sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("the row lock is PostgreSQL's; on SQLite the CA's first write serialises the two")
    _service_id, request_id = service_request(ra)
    inside, go_on = threading.Event(), threading.Event()
    real_issue = ra.ca.issue

    def slow_issue(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        assert go_on.wait(60)
        return real_issue(*args, **kwargs)

    monkeypatch.setattr(ra.ca, "issue", slow_issue)
    with ThreadPoolExecutor(max_workers=1) as pool:
        approval = pool.submit(approve, ra, request_id)
        assert inside.wait(60)
        with ra.sessions() as session:
            assert ra.requests.sweep_approved(session, SYSTEM, grace=_dt.timedelta(0)) == []
            session.commit()
        go_on.set()
        done = approval.result(timeout=120)
    assert done.request.state == "completed" and done.request.certificate_serial is not None
    request = settled_request(ra, request_id)
    assert request.state == "completed" and [e.action for e in request.events] == ["submit", "approve", "complete"]
    assert sweep(ra) == []  # and afterwards there is nothing to settle
