"""``govpki audit export`` and ``govpki audit verify-export``: signed evidence bundles of
the audit log (see ``authz.evidence``). ``web.cli`` adds them to its ``audit`` group with
:func:`register`; helpers come from ``web.cli_common`` (never from ``web.cli``, so that
``python -m web.cli`` imports no module twice)."""

from __future__ import annotations

from pathlib import Path

import click

from authz.archive import write_private
from authz.console import AuditFilter
from authz.evidence import verify_bundle
from ca.evidence import verify_transparency
from govpki.errors import GovpkiError
from web import cli_common
from web.cli_common import cli_principal, fail, report_error


@click.command(name="export")
@click.option("--since", help="From this time (UTC; YYYY-MM-DDTHH:MM or RFC 3339).")
@click.option("--until", help="Up to this time (UTC).")
@click.option("--actor", help="Actor contains this text, e.g. account:alice.")
@click.option("--action", help="Action starts with this, e.g. ca:certificate or authz:session:sign_in_fail.")
@click.option("--outcome", help="success or failure.")
@click.option("--object-type", help="Object type, e.g. certificate.")
@click.option("--object-id", help="Object id, e.g. a certificate serial.")
@click.option("--prefecture", help="Prefecture code or name (from the entry's details).")
@click.option("--application", help="Application name (from the entry's details).")
@click.option(
    "--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The bundle (.tar)."
)
def audit_export(out_file: Path, **params: str | None) -> None:
    """Export the matching entries, the chain range around them up to a signed checkpoint,
    the checkpoints and the certificates' transparency-log proofs as a signed bundle."""
    try:
        flt = AuditFilter.from_params(params)
    except GovpkiError as exc:
        report_error(exc)
    services = cli_common.load_services()
    with services.sessions() as session:
        try:
            bundle = services.evidence.export(session, cli_principal(), flt)
            write_private(out_file, bundle.data)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            out_file.unlink(missing_ok=True)
            report_error(exc)
        if bundle.checkpoint is not None:
            services.auditing.export(bundle.checkpoint)
    click.echo(f"{'entries':10} {bundle.first_seq}..{bundle.last_seq} ({bundle.entries}, {bundle.matched} matched)")
    click.echo(f"{'bundle':10} {out_file}")
    click.echo(f"{'sha256':10} {bundle.bundle_sha256} (bundle.json)")
    click.echo(f"{'key':10} {bundle.key_id}")
    click.echo(f"check with: govpki audit verify-export {out_file}")


@click.command(name="verify-export")
@click.argument("bundle_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Require the signature to be by this key (PEM), not just by the key in the bundle.",
)
def audit_verify_export(bundle_file: Path, public_key_file: Path | None) -> None:
    """Check an evidence bundle offline: signature, every entry's hash and link, the
    checkpoints, the inclusion proofs and tree heads. Exit status 1 names the first problem."""
    try:
        report = verify_bundle(bundle_file, public_key_path=public_key_file, checks=[verify_transparency])
    except GovpkiError as exc:
        report_error(exc)
    click.echo(f"signing key SHA-256 {report.key_id}")
    for note in report.notes:
        click.echo(f"note: {note}")
    if not report.ok:
        fail(report.summary, code=1)
    click.echo(report.summary)


def register(group: click.Group) -> None:
    """Add the commands to ``govpki audit``."""
    group.add_command(audit_export)
    group.add_command(audit_verify_export)
