"""``govpki keys``: the key records (every key the system holds), rotation and destruction.

Thin adapters over :class:`keymgmt.services.KeyService`; each command commits once.
Helpers come from ``web.cli_common`` (``web.cli`` imports this module at its end).
"""

from __future__ import annotations

import json
from typing import Any

import click

from keymgmt.models import KeyRecord, KeyState
from keymgmt.policy import ROTATING, KeyPurpose
from web.cli_common import ROW_ID


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _as_dict(record: KeyRecord, planned_end: Any) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": record.id,
        "purpose": record.purpose,
        "algorithm": record.algorithm,
        "store": record.store,
        "handle": record.handle,
        "spki_sha256": record.spki_sha256,
        "description": record.description,
        "state": record.state,
        "created_at": iso(record.created_at),
        "activated_at": iso(record.activated_at),
        "retired_at": iso(record.retired_at),
        "destroyed_at": iso(record.destroyed_at),
        "use_until": iso(planned_end),
        "usage_count": record.usage_count,
    }


@click.group()
def keys() -> None:
    """Key records: every key the system holds (purpose, store, state, use), rotation, destruction."""


@keys.command(name="list")
@click.option("--purpose", type=click.Choice([p.value for p in KeyPurpose]), help="Only keys of this purpose.")
@click.option("--state", type=click.Choice([s.value for s in KeyState]), help="Only keys in this state.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def keys_list(purpose: str | None, state: str | None, as_json: bool) -> None:
    """List key records, oldest first."""
    from govpki.errors import GovpkiError
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            records = services.keys.list_keys(session, cli_principal(), purpose=purpose, state=state)
        except GovpkiError as exc:
            report_error(exc)
        for r in records:
            end = services.keys.planned_end(r)
            if as_json:
                click.echo(json.dumps(_as_dict(r, end), ensure_ascii=False))
            else:
                click.echo(
                    f"{r.id:>4}  {r.purpose:19} {r.state:10} {r.algorithm:8} {r.store}:{r.handle}  "
                    f"until {_when(end)}  used {r.usage_count}"
                )


@keys.command(name="show")
@click.argument("record_id", metavar="ID", type=ROW_ID)
def keys_show(record_id: int) -> None:
    """Show one key record."""
    from govpki.errors import GovpkiError
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            record = services.keys.find(session, cli_principal(), record_id)
        except GovpkiError as exc:
            report_error(exc)
        for key, value in _as_dict(record, services.keys.planned_end(record)).items():
            click.echo(f"{key:13} {'-' if value in (None, '') else value}")


@keys.command(name="rotate")
@click.argument("purpose", type=click.Choice([p.value for p in ROTATING]))
def keys_rotate(purpose: str) -> None:
    """Make a new current key for PURPOSE now (the old one verifies until its end of use)."""
    from govpki.errors import GovpkiError
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            lines = services.keys.rotate(session, cli_principal(), purpose, checkpoint=session.commit)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    for line in lines:
        click.echo(line)


@keys.command(name="retire")
@click.argument("record_id", metavar="ID", type=ROW_ID)
@click.option("--reason", default="", help="Why (written to the audit log).")
def keys_retire(record_id: int, reason: str) -> None:
    """Retire a key: it signs nothing more; what it signed stays verifiable."""
    from govpki.errors import GovpkiError
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            record = services.keys.retire(session, cli_principal(), record_id, reason=reason)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
        click.echo(f"retired key {record.id} ({record.purpose}, {record.store}:{record.handle})")


@keys.command(name="destroy")
@click.argument("record_id", metavar="ID", type=ROW_ID)
@click.option("--yes", is_flag=True, help="Confirm: the key is destroyed in its store for good.")
def keys_destroy(record_id: int, yes: bool) -> None:
    """Destroy a retired (or pre-active) key in its store (key file, or the token's objects)."""
    from govpki.errors import GovpkiError
    from web.cli_common import cli_principal, fail, load_services, report_error

    if not yes:
        fail("destroying a key cannot be undone: add --yes")
    services = load_services()
    with services.sessions() as session:
        try:
            record = services.keys.destroy(session, cli_principal(), record_id)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
        click.echo(f"destroyed key {record.id} ({record.purpose}, {record.store}:{record.handle})")
