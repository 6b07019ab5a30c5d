"""``govpki staff create | set-role | list | unlock | reset-totp``: staff accounts from the command line.

The operator at the machine (the CLI acts as SYSTEM, like ``govpki init``) may administer
any account; in the portal 三员分立 splits the work: a security administrator administers RA
staff (``/staff``), a system administrator every other account (``/accounts``). RA staff
(``ra_clerk``, ``ra_officer``) need ``--prefecture``; other roles take none. Registered at
the end of web.cli with one ``main.add_command(staff)``; helpers come from web.cli_common,
imported when a command runs."""

from __future__ import annotations

import click

from govpki.errors import GovpkiError
from govpki.principal import Role

ACCOUNT_ROLES = [role.value for role in Role]


@click.group("staff")
def staff() -> None:
    """Staff accounts: RA clerks and officers (one prefecture each) and the other roles."""


@staff.command("create")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(ACCOUNT_ROLES), help="The account's one role.")
@click.option("--prefecture", default=None, help="Area code of the prefecture (RA staff only), e.g. 650100.")
@click.option("--display-name", default=None, help="The person's full name (default: the user name).")
def create(username: str, role: str, prefecture: str | None, display_name: str | None) -> None:
    """Create account USERNAME; prints its one-time password (shown only this once)."""
    from authz.services import one_time_password
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    password = one_time_password()
    with services.sessions() as session:
        try:
            services.accounts.create(
                session,
                cli_principal(),
                username=username,
                display_name=display_name or username,
                role=Role(role),
                password=password,
                prefecture=prefecture,
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    where = f" in prefecture {prefecture}" if prefecture else ""
    click.echo(f"account {username} ({role}{where}) created")
    click.echo(
        f"one-time password (shown once; at {services.config.base_url}/login replace it, "
        f"then set up an authenticator app): {password}"
    )


@staff.command("set-role")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(ACCOUNT_ROLES), help="The account's new (one) role.")
@click.option("--prefecture", default=None, help="Area code of the prefecture (RA staff only), e.g. 650100.")
def set_role(username: str, role: str, prefecture: str | None) -> None:
    """Give USERNAME another role. 三员分立: a system administrator, security administrator or
    security auditor never changes role, and an account that ever was one never becomes one
    again (that takes a new account)."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            services.accounts.change_role(
                session, cli_principal(), username=username, role=Role(role), prefecture=prefecture
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    where = f" in prefecture {prefecture}" if prefecture else ""
    click.echo(f"account {username} is now {role}{where}")


@staff.command("list")
def list_accounts() -> None:
    """List the accounts: user name, role, prefecture, second factor, state."""
    from web.cli_common import load_services

    services = load_services()
    with services.sessions() as session:
        for account in services.accounts.list_staff(session):
            state = "disabled" if account.disabled else "one-time password" if account.must_change_password else "ok"
            locked = services.accounts.locked_until(session, account.username)
            if locked is not None:
                state += f", locked until {locked:%Y-%m-%d %H:%M} UTC"
            totp = "totp" if account.totp_enrolled else "no totp yet"
            click.echo(
                f"{account.username}\t{account.role}\t{account.prefecture_code or '-'}\t{totp}\t{state}"
                f"\t{account.display_name}"
            )


@staff.command("unlock")
@click.argument("username")
def unlock(username: str) -> None:
    """End the sign-in lock of USERNAME now (after too many failures)."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            services.accounts.unlock(session, cli_principal(), username)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(f"{username} may sign in again")


@staff.command("reset-totp")
@click.argument("username")
def reset_totp(username: str) -> None:
    """Forget USERNAME's authenticator (a lost phone): it sets up a new one at its next sign-in."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            services.accounts.reset_totp(session, cli_principal(), username)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    click.echo(f"{username}'s authenticator was reset; a new one is set up at the next sign-in")
