"""``govpki ca …`` (key rollover, listing) and ``govpki ceremony …`` (recorded key ceremonies).

Registered on the main command at the end of :mod:`web.cli`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ca.ceremony import CeremonyKind, Outcome, render
from govpki.errors import GovpkiError
from web import rollover as steps
from web.container import Services

# The shared helpers of web.cli are imported inside the commands: web.cli imports this
# module at its end to register the commands, so either may be imported first.


@click.group(name="ca")
def ca_group() -> None:
    """Certificate authorities: key rollover and listing."""


@ca_group.command(name="rollover")
@click.option(
    "--root",
    is_flag=True,
    help="Root key update (RFC 4210): a new root, cross-certificates both ways, then a new issuing CA under it.",
)
def ca_rollover(root: bool) -> None:
    """Roll the issuing CA key over: a new issuing CA under the root signs every new
    certificate at once; the old one keeps signing CRLs and OCSP responses for its
    certificates until the last expires, then the 'ca-retire' job retires it. Needs the
    root key store (a ceremony; 'govpki ceremony root-rollover' records one)."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    outcome = Outcome()
    try:
        steps.rollover(services, cli_principal(), outcome, root=root)
    except GovpkiError as exc:
        for line in outcome.actions:
            click.echo(f"done before the error: {line}")
        report_error(exc)
    finally:
        services.dispose()
    for line in outcome.actions:
        click.echo(line)
    for ca in outcome.cas:
        click.echo(f"{ca.kind} CA {ca.id}: {ca.subject} sha256:{ca.fingerprint_sha256}")
    for cross in outcome.crosses:
        click.echo(f"cross-certificate {cross.id} ({cross.direction}): sha256:{cross.fingerprint_sha256}")


@ca_group.command(name="list")
def ca_list() -> None:
    """Every CA (issuing / serving / retired) and the cross-certificates between roots."""
    from web.cli_common import load_services

    services = load_services()
    try:
        with services.sessions() as session:
            for ca in services.ca.list_cas(session):
                parent = f" under CA {ca.parent_id}" if ca.parent_id is not None else ""
                click.echo(
                    f"{ca.id:>4}  {ca.kind:<8} {ca.state.value:<8} {ca.name}{parent}  "
                    f"until {ca.not_after:%Y-%m-%d}  sha256:{ca.fingerprint_sha256}"
                )
            for cross in services.ca.cross_certificates(session):
                click.echo(
                    f"cross {cross.id:>2}  {cross.direction:<12} CA {cross.subject_ca_id} under CA "
                    f"{cross.issuer_ca_id}  until {cross.not_after:%Y-%m-%d}  sha256:{cross.fingerprint_sha256}"
                )
    finally:
        services.dispose()


@click.group()
def ceremony() -> None:
    """Recorded key ceremonies, each before at least two witnesses: the record (what was done,
    key and certificate fingerprints, who was present) is printed, written to the audit
    log and, with --record, to a JSON file."""


def _run(kind: CeremonyKind, witnesses: tuple[str, ...], record_file: Path | None, work: Callable[..., Any]) -> None:
    from web.cli_common import cli_principal, fail, load_services, report_error

    if record_file is not None and record_file.exists():
        fail(f"--record: {record_file} exists; a ceremony record is never overwritten")
    services = load_services()
    principal = cli_principal()
    try:
        try:
            held = services.ceremonies.begin(principal, kind, witnesses)
        except GovpkiError as exc:
            report_error(exc)
        failure: GovpkiError | None = None
        try:
            work(services, principal, held.outcome)
        except GovpkiError as exc:
            failure = exc
        with services.sessions() as session:
            document = services.ceremonies.record(
                session, principal, held, failure=failure.reason if failure is not None else None
            )
            session.commit()
        for line in render(document):
            click.echo(line)
        if record_file is not None:
            _write_record(record_file, document)
            click.echo(f"record written to {record_file}")
        if failure is not None:
            report_error(failure)
    finally:
        services.dispose()


def _write_record(path: Path, document: dict[str, Any]) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(document, out, ensure_ascii=False, indent=2)
        out.write("\n")


def _witness_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--record",
        "record_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the ceremony record here as JSON (never overwritten).",
    )(function)
    return click.option(
        "--witness",
        "witnesses",
        multiple=True,
        metavar="NAME",
        help="A person present (repeat; at least two besides the operator).",
    )(function)


@ceremony.command(name="root-key")
@_witness_options
def ceremony_root_key(witnesses: tuple[str, ...], record_file: Path | None) -> None:
    """Generate the root key in the root key store, self-sign the root CA, sign its first ARL."""
    _run(CeremonyKind.ROOT_KEY, witnesses, record_file, steps.root_key)


@ceremony.command(name="sign-issuing")
@_witness_options
def ceremony_sign_issuing(witnesses: tuple[str, ...], record_file: Path | None) -> None:
    """Sign a new issuing CA with the root key: the first one, or a rollover of the active one."""
    _run(CeremonyKind.SIGN_ISSUING, witnesses, record_file, steps.sign_issuing)


@ceremony.command(name="root-rollover")
@_witness_options
def ceremony_root_rollover(witnesses: tuple[str, ...], record_file: Path | None) -> None:
    """Root key update: new root, cross-certificates both ways, new issuing CA under the new root."""

    def work(services: Services, principal: Any, outcome: Outcome) -> None:
        steps.rollover(services, principal, outcome, root=True)

    _run(CeremonyKind.ROOT_ROLLOVER, witnesses, record_file, work)
