"""``govpki app register | list | disable | enable | rotate-secret | update | bind-cert``:
registered applications (client credentials).

Registered at the end of web.cli with one ``main.add_command(app)``; helpers come from
web.cli_common (never from web.cli), imported when a command runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from govpki.errors import GovpkiError


@click.group("app")
def app_group() -> None:
    """Registered applications: client credentials for the application APIs (audit events)."""


@app_group.command("register")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=("audit:write",),
    show_default=True,
    help="What the application may do; repeat for several (OIDC clients: openid, profile, offline_access).",
)
@click.option(
    "--type",
    "client_type",
    type=click.Choice(["confidential", "public"]),
    default="confidential",
    show_default=True,
    help="confidential: has a client secret; public (browser or native app): no secret, must use PKCE.",
)
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="An exact OIDC redirect URI; repeatable.")
@click.option(
    "--post-logout-redirect-uri",
    "post_logout_redirect_uris",
    multiple=True,
    help="An exact URI to return to after RP-initiated logout; repeatable.",
)
def register(
    name: str,
    scopes: tuple[str, ...],
    client_type: str,
    redirect_uris: tuple[str, ...],
    post_logout_redirect_uris: tuple[str, ...],
) -> None:
    """Register application NAME; prints its client_id and client secret (shown only this once)."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            application, secret = services.applications.register(
                session,
                cli_principal(),
                name=name,
                scopes=scopes,
                client_type=client_type,
                redirect_uris=redirect_uris,
                post_logout_redirect_uris=post_logout_redirect_uris,
            )
            client_id = application.client_id
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(
        f"registered {client_type} application {name!r} (scopes: {' '.join(sorted(set(scopes))) or '-'})", err=True
    )
    click.echo(f"client_id={client_id}")
    if secret is not None:
        click.echo("the client secret is shown only now; store it safely", err=True)
        click.echo(f"client_secret={secret}")


@app_group.command("list")
def list_apps() -> None:
    """List registered applications."""
    from web.cli_common import load_services

    services = load_services()
    with services.sessions() as session:
        apps = services.applications.list(session)
        click.echo(f"{'client_id':30} {'name':24} {'type':12} {'scopes':16} {'state':9} {'created':20} created by")
        for a in apps:
            state = "disabled" if a.disabled else "active"
            created = a.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(
                f"{a.client_id:30} {a.name:24} {a.client_type:12} {a.scopes or '-':16} {state:9} {created:20} "
                f"{a.created_by}"
            )
            for uri in json.loads(a.redirect_uris or "[]"):
                click.echo(f"    redirect_uri={uri}")
            for uri in json.loads(a.post_logout_redirect_uris or "[]"):
                click.echo(f"    post_logout_redirect_uri={uri}")


@app_group.command("disable")
@click.argument("client_id")
def disable(client_id: str) -> None:
    """Disable the application CLIENT_ID: its credentials stop working at once."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            application = services.applications.disable(session, cli_principal(), client_id)
            name = application.name
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(f"disabled application {name!r} ({client_id})")


@app_group.command("enable")
@click.argument("client_id")
def enable(client_id: str) -> None:
    """Re-enable the disabled application CLIENT_ID: its credentials work again. OIDC tokens
    granted before it was disabled are revoked (its users sign in again)."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            application, revoked = services.applications.enable(session, cli_principal(), client_id)
            name = application.name
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(
        f"enabled application {name!r} ({client_id})" + (f"; {revoked} old OIDC tokens revoked" if revoked else "")
    )


@app_group.command("rotate-secret")
@click.argument("client_id")
def rotate_secret(client_id: str) -> None:
    """A new client secret for the confidential application CLIENT_ID, printed once; the old
    secret stops working at once (no overlap: give the application the new one first thing)."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            application, secret = services.applications.rotate_secret(session, cli_principal(), client_id)
            name = application.name
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(f"new client secret for application {name!r}; the old one no longer works", err=True)
    click.echo("the client secret is shown only now; store it safely", err=True)
    click.echo(f"client_secret={secret}")


@app_group.command("update")
@click.argument("client_id")
@click.option("--scope", "scopes", multiple=True, help="Replaces the scopes; repeat for several.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Replaces the redirect URIs; repeatable.")
@click.option(
    "--post-logout-redirect-uri",
    "post_logout_redirect_uris",
    multiple=True,
    help="Replaces the post-logout redirect URIs; repeatable.",
)
@click.option("--no-redirect-uris", is_flag=True, help="Remove every redirect URI (when dropping openid).")
@click.option("--no-post-logout-redirect-uris", is_flag=True, help="Remove every post-logout redirect URI.")
def update_app(
    client_id: str,
    scopes: tuple[str, ...],
    redirect_uris: tuple[str, ...],
    post_logout_redirect_uris: tuple[str, ...],
    no_redirect_uris: bool,
    no_post_logout_redirect_uris: bool,
) -> None:
    """Change the scopes and URIs of application CLIENT_ID: each option given replaces that
    whole list (checked as at registration; the client type never changes). OIDC tokens
    granted with a scope no longer registered are revoked."""
    from web.cli_common import cli_principal, load_services, report_error

    if no_redirect_uris and redirect_uris:
        raise click.UsageError("give --redirect-uri or --no-redirect-uris, not both")
    if no_post_logout_redirect_uris and post_logout_redirect_uris:
        raise click.UsageError("give --post-logout-redirect-uri or --no-post-logout-redirect-uris, not both")
    new_redirects = () if no_redirect_uris else (redirect_uris or None)
    new_after_logout = () if no_post_logout_redirect_uris else (post_logout_redirect_uris or None)
    if not scopes and new_redirects is None and new_after_logout is None:
        raise click.UsageError("nothing to change: give --scope, --redirect-uri or --post-logout-redirect-uri")
    services = load_services()
    with services.sessions() as session:
        try:
            done = services.applications.update(
                session,
                cli_principal(),
                client_id,
                scopes=scopes or None,
                redirect_uris=new_redirects,
                post_logout_redirect_uris=new_after_logout,
            )
            name, changed, revoked = done.app.name, done.changed, done.tokens_revoked
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    if not changed:
        click.echo(f"application {name!r} ({client_id}): nothing changed")
        return
    click.echo(f"updated application {name!r}: {', '.join(changed)}")
    if revoked:
        click.echo(f"{revoked} OIDC tokens granted with a scope no longer registered were revoked")


@app_group.command("bind-cert")
@click.argument("client_id")
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--remove", is_flag=True, help="Remove the bound certificate instead.")
def bind_cert(client_id: str, certificate: Path | None, remove: bool) -> None:
    """Bind the client certificate in CERTIFICATE (PEM or DER) to application CLIENT_ID: it may then
    authenticate with it by mutual TLS through the trusted TLS front (replaces any bound before)."""
    from web.cli_common import cli_principal, load_services, report_error

    if remove == (certificate is not None):
        raise click.UsageError("give either a CERTIFICATE file or --remove")
    data = certificate.read_bytes() if certificate is not None else None
    services = load_services()
    with services.sessions() as session:
        try:
            application = services.applications.bind_certificate(session, cli_principal(), client_id, data)
            name, fingerprint, serial = application.name, application.cert_sha256, application.cert_serial
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    if fingerprint is None:
        click.echo(f"removed the bound certificate of application {name!r} ({client_id})")
    else:
        click.echo(f"bound certificate serial {serial} (SHA-256 {fingerprint}) to application {name!r} ({client_id})")
