"""``govpki ra sweep-requests`` and ``govpki ra resume-imports``: crash recovery of the RA workflow (the scheduled jobs
run the same every minute; this is for an operator who does not want to wait).

Registered at the bottom of web.cli. The helpers are imported when a command runs, not at
import, so ``python -m web.cli`` imports no half-made module."""

from __future__ import annotations

import datetime as _dt

import click

from govpki.errors import GovpkiError
from ra.imports import IMPORT_GRACE
from ra.requests import RECOVERY_GRACE


@click.group("ra")
def ra_group() -> None:
    """Prefecture RA maintenance."""


@ra_group.command("sweep-requests")
@click.option(
    "--grace-minutes",
    type=click.IntRange(min=0),
    default=int(RECOVERY_GRACE.total_seconds() // 60),
    show_default=True,
    help="Settle only requests approved at least this long ago (an approval still running is left alone).",
)
def sweep_requests(grace_minutes: int) -> None:
    """Settle requests left 'approved' by a crash: completed if the CA issued their certificate, else failed."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            settled = services.requests.sweep_approved(
                session, cli_principal(), grace=_dt.timedelta(minutes=grace_minutes)
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    for item in settled:
        click.echo(f"request {item.request_id}: {item.state}: {item.detail}")
    click.echo(f"settled {len(settled)} interrupted request(s)", err=True)


@ra_group.command("resume-imports")
@click.option(
    "--grace-minutes",
    type=click.IntRange(min=0),
    default=int(IMPORT_GRACE.total_seconds() // 60),
    show_default=True,
    help="Resume only imports without progress (heartbeat) for at least this long.",
)
def resume_imports(grace_minutes: int) -> None:
    """Resume bulk-enrollment imports left running or queued by a crash, and finish them here."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    try:
        jobs = services.ra_imports.resume_stale(
            services.sessions, cli_principal(), grace=_dt.timedelta(minutes=grace_minutes)
        )
    except GovpkiError as exc:
        report_error(exc)
    for job in jobs:
        click.echo(
            f"import {job.id} ({job.filename}): {job.state}, {job.registered} registered, "
            f"{job.duplicates} already registered, {job.invalid} invalid of {job.total_rows} rows"
        )
    click.echo(f"resumed {len(jobs)} interrupted import(s)", err=True)
