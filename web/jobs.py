"""Scheduled work (new CRLs, OCSP responder rotation, re-signing OCSP responses,
key rotation by the key policy, signed tree heads of the transparency log, retiring
superseded CAs, certificate expiry notices, RA requests and imports left
hanging by a crash, audit archival, signed audit checkpoints):
each job is a domain service's ``refresh_due``, run as its own unit of work.

``govpki jobs run`` runs the due jobs once; ``--loop`` keeps running them, and
``govpki serve`` starts that loop in a child process beside gunicorn (the loop
stops when its parent goes away). Running the jobs twice at once is harmless:
each service serialises its writes on database rows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from govpki.principal import SYSTEM, Principal
from web.container import Services

log = logging.getLogger("govpki.jobs")

JobFunction = Callable[[Services, Session, Principal], Sequence[str]]


@dataclass(frozen=True)
class Job:
    name: str
    run: JobFunction


@dataclass(frozen=True)
class JobResult:
    name: str
    ok: bool
    lines: tuple[str, ...]


def _crls(services: Services, session: Session, principal: Principal) -> list[str]:
    return [
        f"signed {crl.kind} CRL #{crl.number} of CA {crl.ca_id} ({crl.entries} entries, next update "
        f"{crl.next_update:%Y-%m-%d %H:%M:%SZ})"
        for crl in services.crl.refresh_due(session, principal)
    ]


def _ocsp(services: Services, session: Session, principal: Principal) -> list[str]:
    # commits after the rotation and after every batch, so a long first run keeps its progress
    report = services.ocsp.refresh_due(session, principal, checkpoint=session.commit)
    lines = [f"rotated the OCSP responder of CA {ca_id}" for ca_id in report.rotated]
    if report.resigned or report.presigned:
        lines.append(f"re-signed {report.resigned} and pre-signed {report.presigned} OCSP responses")
    return lines


def _tlog(services: Services, session: Session, principal: Principal) -> list[str]:
    """Sign a tree head when the log grew and the newest head is at least GOVPKI_TLOG_STH_MINUTES old."""
    if not services.tlog.due(session):
        return []
    head = services.tlog.sign_tree_head(session, principal)
    return [f"signed the transparency log tree head at size {head.tree_size}"] if head else []


def _keys(services: Services, session: Session, principal: Principal) -> list[str]:
    """Key rotation by the key policy: a new audit/tlog/token signing key when the current one
    reaches its end of use minus the overlap; keys past their end of use are retired."""
    return services.keys.rotate_due(session, principal).lines


def _ca_retire(services: Services, session: Session, principal: Principal) -> list[str]:
    """Retire the CAs superseded by a rollover once the last certificate they issued has expired."""
    return [
        f"retired {ca.kind} CA {ca.id} ({ca.name}): nothing it issued is valid any more"
        for ca in services.ca.retire_due(session, principal)
    ]


def _audit_checkpoint(services: Services, session: Session, principal: Principal) -> list[str]:
    """Every GOVPKI_AUDIT_CHECKPOINT_MINUTES: sign the chain head, commit, then export it
    (exported only once it is in the database, so the file never holds a checkpoint the database lacks)."""
    if not services.auditing.due(session):
        return []
    made = services.auditing.checkpoint(session, principal)
    if made is None:
        return []
    session.commit()
    where = services.auditing.export(made)
    return [
        f"signed audit checkpoint at entry {made.seq} (head {made.head_hash[:16]}…), exported to {', '.join(where)}"
    ]


def _audit_archive(services: Services, session: Session, principal: Principal) -> list[str]:
    """At most daily: archive the audit entries older than GOVPKI_AUDIT_RETENTION_DAYS (up to
    a checkpoint) to a signed file, then remove them from the log (committed by the runner)."""
    if not services.archive.due(session):
        return []
    made = services.archive.archive(session, principal)
    if made is None:
        return []
    row = made.row
    return [f"archived audit entries {row.first_seq}..{row.last_seq} ({row.entries}) to {made.path} and removed them"]


def _expiry_notices(services: Services, session: Session, principal: Principal) -> list[str]:
    """Mail the expiry notices that are due (GOVPKI_EXPIRY_NOTICE_DAYS); without SMTP, only count.
    Commits after each claim and each mail, so a restart never sends one twice."""
    return services.expiry.send_due(session, principal, checkpoint=session.commit).lines


def _ra_requests(services: Services, session: Session, principal: Principal) -> list[str]:
    """Settle the RA requests an interruption left ``approved`` (older than ra.requests.RECOVERY_GRACE)."""
    return [
        f"settled RA request {s.request_id} left approved by an interruption: {s.state} ({s.detail})"
        for s in services.requests.sweep_approved(session, principal)
    ]


def _ra_imports(services: Services, session: Session, principal: Principal) -> list[str]:
    """Resume the RA import jobs a crash left running or queued (no heartbeat for
    ra.imports.IMPORT_GRACE) and finish them here; each chunk commits on its own."""
    return [
        f"resumed RA import {job.id} ({job.filename}) left behind by an interruption: {job.state}, "
        f"{job.registered} registered, {job.duplicates} already registered, {job.invalid} invalid "
        f"of {job.total_rows} rows"
        for job in services.ra_imports.resume_stale(services.sessions, principal)
    ]


def default_jobs() -> list[Job]:
    # the checkpoint last, so that it covers the audit entries of the jobs before it
    return [
        Job("crl", _crls),
        Job("ocsp", _ocsp),
        Job("keys", _keys),
        Job("tlog", _tlog),
        Job("ca-retire", _ca_retire),
        Job("expiry-notices", _expiry_notices),
        Job("ra-requests", _ra_requests),
        Job("ra-imports", _ra_imports),
        Job("audit-archive", _audit_archive),
        Job("audit-checkpoint", _audit_checkpoint),
    ]


def run_due(services: Services, jobs: Sequence[Job] | None = None, principal: Principal = SYSTEM) -> list[JobResult]:
    """Run each job in its own transaction; one failing job does not stop the others."""
    results = []
    for job in default_jobs() if jobs is None else jobs:
        with services.sessions() as session:
            try:
                lines = tuple(job.run(services, session, principal))
                session.commit()
            except Exception as exc:  # a job must not take the loop down; the error is logged
                session.rollback()
                log.exception("job %s failed", job.name)
                results.append(JobResult(job.name, False, (f"failed: {exc}",)))
                continue
        results.append(JobResult(job.name, True, lines))
    return results


def run_forever(
    services: Services,
    interval: float,
    *,
    jobs: Sequence[Job] | None = None,
    parent_pid: int | None = None,
    rounds: int | None = None,
) -> None:
    """Run the due jobs every ``interval`` seconds until the parent process is gone."""
    done = 0
    while rounds is None or done < rounds:
        for result in run_due(services, jobs):
            for line in result.lines:
                log.info("%s: %s", result.name, line)
        done += 1
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline:
            if parent_pid is not None and os.getppid() != parent_pid:
                return
            time.sleep(min(1.0, interval))
