"""``govpki keys``: list, show, rotate, retire and destroy through the CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from govpki.audit import AuditEntry
from web.cli import main
from web.container import Services


def run(services: Services, *args: str):
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _listed(services: Services, *args: str) -> list[dict[str, object]]:
    result = run(services, "keys", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_list_show_rotate_retire_destroy(services: Services):
    keys = _listed(services)
    assert {k["purpose"] for k in keys} == {"root", "issuing_ca", "ocsp_signing", "subscriber_data"}
    root = _listed(services, "--purpose", "root")[0]
    assert root["store"] == "root" and root["state"] == "active" and root["use_until"]
    table = run(services, "keys", "list")
    assert table.exit_code == 0 and "issuing_ca" in table.output and "used " in table.output

    shown = run(services, "keys", "show", str(root["id"]))
    assert shown.exit_code == 0 and f"spki_sha256   {root['spki_sha256']}" in shown.output
    missing = run(services, "keys", "show", "999")
    assert missing.exit_code == 2 and "id: no key record with id 999" in missing.output

    first = run(services, "keys", "rotate", "audit_signing")
    assert first.exit_code == 0 and "new audit_signing key" in first.output, first.output
    second = run(services, "keys", "rotate", "audit_signing")
    assert second.exit_code == 0, second.output
    old, new = _listed(services, "--purpose", "audit_signing")
    assert old["state"] == new["state"] == "active"

    refused = run(services, "keys", "destroy", str(old["id"]), "--yes")
    assert refused.exit_code == 2 and "is active; retire it before destroying it" in refused.output
    unconfirmed = run(services, "keys", "destroy", str(old["id"]))
    assert unconfirmed.exit_code == 2 and "--yes" in unconfirmed.output

    retired = run(services, "keys", "retire", str(old["id"]), "--reason", "superseded")
    assert retired.exit_code == 0 and f"retired key {old['id']}" in retired.output
    destroyed = run(services, "keys", "destroy", str(old["id"]), "--yes")
    assert destroyed.exit_code == 0 and f"destroyed key {old['id']}" in destroyed.output
    assert not services.keystores["online"].has(str(old["handle"]))
    assert [k["id"] for k in _listed(services, "--state", "destroyed")] == [old["id"]]
    with services.sessions() as s:
        actions = list(s.scalars(select(AuditEntry.action).where(AuditEntry.object_id == str(old["id"]))))
    assert "keymgmt:key:retire" in actions and "keymgmt:key:destroy" in actions

    bad = run(services, "keys", "rotate", "root")
    assert bad.exit_code == 2 and "Invalid value" in bad.output


def test_the_jobs_run_the_key_rotation_step(services: Services):
    result = run(services, "jobs", "run")
    assert result.exit_code == 0, result.output
    assert "keys: nothing due" in result.output
    lines = result.output.splitlines()
    assert lines.index("keys: nothing due") < next(
        i for i, line in enumerate(lines) if line.startswith("audit-checkpoint")
    )
