"""``govpki kmc``: the key-management centre from the command line.

Set-up and issuance act as the local operator (like ``govpki issue``). Recovery steps are
taken by named people: ``--as USERNAME`` signs that account in (the password is asked
for, never taken from the command line or the environment), so each key-recovery
officer approves at the console with their own credentials and the audit log names them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from authz.services import account_principal
from govpki.errors import GovpkiError
from govpki.principal import Principal, Role
from web.cli_common import ROW_ID, cli_principal, fail, load_services, report_error
from web.container import Services


@click.group()
def kmc() -> None:
    """Key-management centre: escrowed encryption keys and their M-of-N recovery."""


def _new_file(path: Path) -> Path:
    """Refuse before anything is done if the output file cannot be made."""
    if path.exists():
        fail(f"--out: {path} exists; choose a new file name")
    if not path.parent.is_dir():
        fail(f"--out: folder {path.parent} does not exist")
    return path


def _write_secret_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _sign_in(services: Services, username: str) -> Principal:
    """Ask for ``username``'s password (and TOTP code, once enrolled) and sign the account in
    (audited either way; failures count towards the lock-out as at the portal)."""
    password = click.prompt(f"password for {username}", hide_input=True, err=True)
    with services.sessions() as session:
        try:
            account = services.accounts.sign_in_password(session, username=username, password=password, source="cli")
            if account.totp_enrolled:
                code = click.prompt(f"TOTP code for {username}", err=True)
                account = services.accounts.sign_in_totp(session, account.id, code=code, source="cli")
        except GovpkiError as exc:
            session.commit()  # the failed sign-in stays on record
            report_error(exc)
        session.commit()
    if account.must_change_password:
        fail(f"{username} must first replace the one-time password: sign in at {services.config.base_url}/login")
    return account_principal(account)


@kmc.command(name="init")
def kmc_init() -> None:
    """Make the KMC's storage key (AES-256 in the configured key store) if there is none."""
    services = load_services()
    with services.sessions() as session:
        try:
            key, created = services.kmc.ensure_storage_key(session, cli_principal())
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(
        f"{'created' if created else 'already present:'} KMC storage key {key.key_handle} ({key.key_store} store)"
    )


@kmc.command(name="add-officer")
@click.argument("username")
@click.option("--display-name", default=None, help="The officer's full name (default: the user name).")
def kmc_add_officer(username: str, display_name: str | None) -> None:
    """Create a key-recovery officer account; its one-time password is printed once."""
    from authz.services import one_time_password

    services = load_services()
    password = one_time_password()
    with services.sessions() as session:
        try:
            services.accounts.create(
                session,
                cli_principal(),
                username=username,
                display_name=display_name or username,
                role=Role.KEY_RECOVERY_OFFICER,
                password=password,
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(f"key-recovery officer {username} created")
    click.echo(f"one-time password (shown once; change it at {services.config.base_url}/login): {password}")


@kmc.command(name="issue-encryption")
@click.option("--cn", "common_name", required=True, help="The official's name (CN).")
@click.option("--ou", "organizational_unit", default=None, help="Department (OU).")
@click.option("--locality", default=None, help="Locality (L).")
@click.option("--email", default=None, help="E-mail address for the subjectAltName.")
@click.option("--algorithm", type=click.Choice(["rsa-2048", "rsa-3072", "ec-p256"]), default=None)
@click.option(
    "--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="New PKCS#12 file."
)
def kmc_issue_encryption(
    common_name: str,
    organizational_unit: str | None,
    locality: str | None,
    email: str | None,
    algorithm: str | None,
    out_file: Path,
) -> None:
    """Make and escrow an official's encryption key, issue its certificate, write the PKCS#12."""
    services = load_services()
    _new_file(out_file)
    with services.sessions() as session:
        try:
            services.kmc.ensure_storage_key(session, cli_principal())
            session.commit()
            issued = services.encryption.issue(
                session,
                cli_principal(),
                common_name=common_name,
                organizational_unit=organizational_unit,
                locality=locality,
                email=email,
                algorithm=algorithm,
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    _write_secret_file(out_file, issued.pkcs12.data)
    click.echo(f"issued serial {issued.record.serial} for {issued.record.subject}")
    click.echo(f"escrowed key id {issued.escrow.id} ({issued.escrow.algorithm}); PKCS#12 written to {out_file}")
    click.echo(f"one-time password for the PKCS#12 (shown once, stored nowhere): {issued.pkcs12.password}")


@kmc.command(name="escrows")
@click.option("--limit", default=50, show_default=True)
def kmc_escrows(limit: int) -> None:
    """List escrowed keys (newest first)."""
    services = load_services()
    with services.sessions() as session:
        try:
            rows = services.kmc.list_escrows(session, cli_principal(), limit=limit)
        except GovpkiError as exc:
            report_error(exc)
        for e in rows:
            click.echo(f"{e.id}\t{e.created_at:%Y-%m-%d %H:%M}Z\t{e.algorithm}\tserial {e.cert_serial}\t{e.subject}")


@kmc.group()
def recovery() -> None:
    """Recovery of escrowed keys: request, approve (M of N officers), reject, release."""


def _as_option(f: Any) -> Any:
    return click.option("--as", "username", required=True, help="Your user name; your password is asked for.")(f)


@recovery.command(name="request")
@_as_option
@click.option("--escrow", "escrow_id", required=True, type=ROW_ID, help="Escrowed key id (govpki kmc escrows).")
@click.option("--kind", required=True, help="subscriber (lost key) or judicial (legal request).")
@click.option("--case-reference", default=None, help="Case reference of the legal request (judicial).")
@click.option("--reason", required=True, help="Why the key is to be recovered.")
def recovery_request(username: str, escrow_id: int, kind: str, case_reference: str | None, reason: str) -> None:
    """Ask for an escrowed key back (security administrator or CA operator)."""
    services = load_services()
    principal = _sign_in(services, username)
    with services.sessions() as session:
        try:
            request = services.kmc.request_recovery(
                session, principal, escrow_id=escrow_id, kind=kind, reason=reason, case_reference=case_reference
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(
        f"recovery request {request.id} ({request.kind}) for escrowed key {escrow_id}: "
        f"needs {request.required_approvals} approvals from key-recovery officers other than you"
    )


@recovery.command(name="approve")
@_as_option
@click.argument("request_id", type=ROW_ID)
@click.option("--comment", default=None)
def recovery_approve(username: str, request_id: int, comment: str | None) -> None:
    """Approve a recovery request (key-recovery officer, not the requester)."""
    services = load_services()
    principal = _sign_in(services, username)
    with services.sessions() as session:
        try:
            request = services.kmc.approve(session, principal, request_id, comment=comment)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(
        f"recovery request {request.id}: {request.approvals} of {request.required_approvals} approvals; {request.state}"
    )


@recovery.command(name="reject")
@_as_option
@click.argument("request_id", type=ROW_ID)
@click.option("--reason", required=True)
def recovery_reject(username: str, request_id: int, reason: str) -> None:
    """Reject a recovery request; nothing will be released for it."""
    services = load_services()
    principal = _sign_in(services, username)
    with services.sessions() as session:
        try:
            request = services.kmc.reject(session, principal, request_id, reason=reason)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(f"recovery request {request.id}: rejected")


@recovery.command(name="release")
@_as_option
@click.argument("request_id", type=ROW_ID)
@click.option(
    "--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="New PKCS#12 file."
)
def recovery_release(username: str, request_id: int, out_file: Path) -> None:
    """Release an approved key as a new PKCS#12 with a new one-time password (the requester, once)."""
    services = load_services()
    _new_file(out_file)
    principal = _sign_in(services, username)
    with services.sessions() as session:
        try:
            request, bundle = services.encryption.release(session, principal, request_id)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    _write_secret_file(out_file, bundle.data)
    click.echo(f"recovery request {request.id}: released; PKCS#12 written to {out_file}")
    click.echo(f"one-time password for the PKCS#12 (shown once, stored nowhere): {bundle.password}")


@recovery.command(name="list")
@click.option("--state", default=None, help="pending, approved, rejected or released")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def recovery_list(state: str | None, limit: int, as_json: bool) -> None:
    """List recovery requests (newest first) with their decisions."""
    services = load_services()
    with services.sessions() as session:
        try:
            rows = services.kmc.list_requests(session, cli_principal(), state=state, limit=limit)
        except GovpkiError as exc:
            report_error(exc)
        items = [
            {
                "id": r.id,
                "escrow_id": r.escrow_id,
                "kind": r.kind,
                "case_reference": r.case_reference,
                "state": r.state,
                "approvals": r.approvals,
                "required_approvals": r.required_approvals,
                "requested_by": r.requested_by,
                "requested_at": r.requested_at.isoformat(),
                "decisions": [
                    {"officer": d.officer_name, "decision": d.decision, "at": d.decided_at.isoformat()}
                    for d in r.decisions
                ],
            }
            for r in rows
        ]
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    for item in items:
        case = f" case {item['case_reference']}" if item["case_reference"] else ""
        click.echo(
            f"{item['id']}\t{item['state']}\t{item['kind']}{case}\tescrow {item['escrow_id']}\t"
            f"{item['approvals']}/{item['required_approvals']} approvals\tby {item['requested_by']}"
        )
