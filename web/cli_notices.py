"""``govpki renew`` and ``govpki expiring``: certificate renewal and the expiry list.

Registered at the bottom of web.cli (``register(main)``). The helpers of web.cli are imported
when a command runs, not at import, so ``python -m web.cli`` (where web.cli is ``__main__``)
imports no half-made module."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from govpki.errors import GovpkiError


@click.command()
@click.argument("serial")
@click.option(
    "--csr",
    "csr_file",
    type=click.File("rb"),
    help="A new PKCS#10 request (PEM or DER; '-' for stdin), with the same or a new key. "
    "Without it the key stays and the original request is used again.",
)
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the certificate (PEM) here."
)
def renew(serial: str, csr_file: Any, out_file: Path | None) -> None:
    """Renew a certificate: same profile, subject, SANs, prefecture and contact; recorded, linted, audited."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    data = csr_file.read() if csr_file is not None else None
    with services.sessions() as session:
        try:
            record = services.ca.renew(session, cli_principal(), serial, csr=data)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    assert record.cert_der is not None
    pem = x509.load_der_x509_certificate(record.cert_der).public_bytes(serialization.Encoding.PEM).decode()
    click.echo(f"renewed {serial} as serial {record.serial} ({record.profile}) for {record.subject}", err=True)
    if out_file is not None:
        out_file.write_text(pem, encoding="ascii")
    else:
        click.echo(pem, nl=False)


@click.command()
@click.option("--days", type=int, default=None, help="Window in days (default: the largest GOVPKI_EXPIRY_NOTICE_DAYS).")
@click.option("--prefecture", help="Only this prefecture (area code, e.g. 650100).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per certificate and line.")
def expiring(days: int | None, prefecture: str | None, as_json: bool) -> None:
    """List good certificates that expire within the window, per prefecture, soonest first."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    within = None if days is None else _dt.timedelta(days=days)
    with services.sessions() as session:
        try:
            groups = services.expiry.expiring(session, cli_principal(), within, prefecture)
        except GovpkiError as exc:
            report_error(exc)
    now = services.clock.now()
    for group in groups:
        if not as_json:
            title = f"{group.code} {group.name} ({group.name_en})" if group.code else "(no prefecture)"
            click.echo(f"{title}: {len(group.certificates)}")
        for c in group.certificates:
            if as_json:
                item = {
                    "prefecture": group.code,
                    "serial": c.serial,
                    "profile": c.profile,
                    "subject": c.subject,
                    "not_after": c.not_after.isoformat(),
                    "days_left": c.days_left(now),
                    "contact_email": c.contact_email,
                }
                click.echo(json.dumps(item, ensure_ascii=False))
            else:
                click.echo(
                    f"  {c.not_after:%Y-%m-%d %H:%M:%SZ} {c.days_left(now):>4}d  {c.serial:>34}  "
                    f"{c.profile:20} {c.subject}  {c.contact_email or '-'}"
                )
    if not groups and not as_json:
        click.echo("no certificates expire in that window")


def register(main: click.Group) -> None:
    main.add_command(renew)
    main.add_command(expiring)
