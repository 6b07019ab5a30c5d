"""The job runner: each job its own unit of work; a failing job is reported, not fatal."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from govpki import audit
from govpki.audit import AuditEntry
from govpki.principal import Principal
from web.container import Services
from web.jobs import Job, run_due, run_forever


def _writes(services: Services, session: Session, principal: Principal) -> Sequence[str]:
    audit.record(session, principal, "test:job:run", object_type="job", object_id="writes")
    return ["wrote one entry"]


def _breaks(services: Services, session: Session, principal: Principal) -> Sequence[str]:
    audit.record(session, principal, "test:job:run", object_type="job", object_id="breaks")
    raise RuntimeError("boom")


def _entries(services: Services) -> int:
    with services.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry)) or 0


def test_jobs_commit_alone_and_failures_roll_back(services: Services) -> None:
    before = _entries(services)
    results = run_due(services, [Job("breaks", _breaks), Job("writes", _writes)])
    assert [(r.name, r.ok) for r in results] == [("breaks", False), ("writes", True)]
    assert results[0].lines == ("failed: boom",)
    assert _entries(services) == before + 1  # the failed job's entry was rolled back


def test_run_forever_runs_rounds(services: Services) -> None:
    before = _entries(services)
    run_forever(services, 0.01, jobs=[Job("writes", _writes)], rounds=3)
    assert _entries(services) == before + 3


def test_the_default_jobs_sign_due_crls_and_ocsp_responses(services: Services) -> None:
    """Right after init the issuing CA's full CRL exists, so only the first delta is due;
    the certificates issued so far (the OCSP responder's own) get pre-signed responses."""
    first = run_due(services)
    assert all(r.ok for r in first), first
    crl_lines = next(r.lines for r in first if r.name == "crl")
    assert any("delta CRL" in line for line in crl_lines), crl_lines
    ocsp_lines = next(r.lines for r in first if r.name == "ocsp")
    assert any("pre-signed" in line for line in ocsp_lines), ocsp_lines
    tlog_lines = next(r.lines for r in first if r.name == "tlog")
    assert tlog_lines == ("signed the transparency log tree head at size 2",), tlog_lines
    checkpoint_lines = next(r.lines for r in first if r.name == "audit-checkpoint")
    assert any("signed audit checkpoint" in line for line in checkpoint_lines), checkpoint_lines
    assert services.config.checkpoint_file.exists()
    again = run_due(services)
    assert [(r.name, r.lines) for r in again] == [
        ("crl", ()),
        ("ocsp", ()),
        ("keys", ()),
        ("tlog", ()),
        ("ca-retire", ()),
        ("expiry-notices", ()),
        ("ra-requests", ()),
        ("ra-imports", ()),
        ("audit-archive", ()),
        ("audit-checkpoint", ()),
    ]
