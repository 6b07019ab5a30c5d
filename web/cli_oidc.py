"""``govpki oidc rotate | keys``: the OpenID Connect provider's token-signing key.

Registered at the end of web.cli with one ``main.add_command(oidc_group)``; helpers come
from web.cli_common, imported when a command runs."""

from __future__ import annotations

import click

from govpki.errors import GovpkiError


@click.group("oidc")
def oidc_group() -> None:
    """The OpenID Connect provider (token-signing key)."""


@oidc_group.command("rotate")
def rotate() -> None:
    """Make a new token-signing key now; the previous one stays in the JWKS until its end of use."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            lines = services.oidc.rotate_key(session, cli_principal())
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    for line in lines:
        click.echo(line)


@oidc_group.command("keys")
def keys() -> None:
    """The published signing keys (JWKS): kid and algorithm, the current one first."""
    from web.cli_common import load_services

    services = load_services()
    with services.sessions() as session:
        for key in services.oidc.signer.verification_keys(session):
            click.echo(f"{key.kid} {key.alg} key {key.record_id}")
