"""What every ``govpki`` command module shares: the CLI's principal, failing with a
message, loading the services, reporting a domain error. Command modules import these
from here, not from ``web.cli``, so that ``python -m web.cli`` (how ``serve`` starts the
job loop) imports no module twice."""

from __future__ import annotations

import getpass
import sys
from typing import NoReturn

import click

from govpki.config import Config
from govpki.errors import ConfigError, GovpkiError
from govpki.principal import Principal, PrincipalKind, Role
from web.container import Services, build_services

# a row id given on the command line: integer primary keys are 32-bit on PostgreSQL, so a
# larger number is a usage error (exit 2, the option named), never a database error
ROW_ID = click.IntRange(1, 2**31 - 1)


def cli_principal() -> Principal:
    """A local operator with access to the instance folder (and so to the keys)."""
    return Principal(PrincipalKind.SYSTEM, "cli", f"cli:{getpass.getuser()}", frozenset(Role))


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"govpki: {message}", err=True)
    sys.exit(code)


def load_services() -> Services:
    try:
        return build_services(Config.from_env())
    except ConfigError as exc:
        fail(f"configuration error: {exc}")
    except GovpkiError as exc:  # a key store that cannot be opened, for one
        fail(f"cannot start: {exc.reason}")


def report_error(exc: GovpkiError) -> NoReturn:
    lines = [f"{p.field}: {p.reason}" if p.field else p.reason for p in exc.problems]
    fail("; ".join(lines))
