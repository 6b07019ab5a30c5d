"""``govpki policy …``: load a TOML policy, change it, explain and decide."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import select

from govpki.audit import AuditEntry
from web.cli import main
from web.container import Services

POLICY_TOML = """
[[subjects]]
id = "zhang.san"
prefecture = "6501"
title = "科长"

[[applications]]
name = "e-docs"

[[applications.roles]]
name = "reader"

[[applications.roles.permissions]]
name = "read-own-prefecture"
action = "read"
resource_type = "document"
conditions = [{ kind = "same_prefecture_as_resource" }]

[[assignments]]
subject = "zhang.san"
application = "e-docs"
role = "reader"
"""


def run(services: Services, *args: str) -> Result:
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
        "GOVPKI_AUTHZ_POLICY_REFRESH_MS": "0",
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_load_explain_decide(bare_services: Services, tmp_path: Path):
    file = tmp_path / "policy.toml"
    file.write_text(POLICY_TOML, encoding="utf-8")
    result = run(bare_services, "policy", "load", str(file))
    assert result.exit_code == 0, result.output
    assert "1 applications, 1 roles, 1 rules, 1 subjects, 1 assignments; policy version 1" in result.output
    ask = ["--subject", "zhang.san", "--application", "e-docs", "--action", "read", "--type", "document"]
    result = run(bare_services, "policy", "decide", *ask, "--attr", "prefecture=6501")
    assert result.exit_code == 0 and result.output.startswith("permit: role 'reader'"), result.output
    result = run(bare_services, "policy", "decide", *ask, "--attr", "prefecture=6502")
    assert result.exit_code == 1 and result.output.startswith("deny: "), result.output
    result = run(bare_services, "policy", "explain", *ask, "--attributes", '{"prefecture": "6502"}')
    assert result.exit_code == 0, result.output
    assert "DENY" in result.output and "FAIL same_prefecture_as_resource" in result.output
    assert "ok   scope" in result.output
    # small changes, one command each
    assert run(bare_services, "policy", "subject", "li.si", "--prefecture", "6502").exit_code == 0
    assert run(bare_services, "policy", "role", "e-docs", "clerk").exit_code == 0
    result = run(
        bare_services, "policy", "rule", "e-docs", "clerk", "edit-chief", "--action", "edit", "--type", "document",
        "--conditions", '[{"kind": "title_in", "titles": ["科长"]}]',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run(bare_services, "policy", "assign", "li.si", "e-docs", "clerk", "--prefecture", "6502")
    assert result.exit_code == 0, result.output
    result = run(bare_services, "policy", "show")
    assert "policy version 5" in result.output and "edit-chief: edit on document" in result.output
    with bare_services.sessions() as s:
        actions = s.scalars(
            select(AuditEntry.action).where(AuditEntry.action.like("authz:policy:%")).order_by(AuditEntry.seq)
        ).all()
    assert actions == [
        "authz:policy:load",
        "authz:policy:subject_set",
        "authz:policy:role_create",
        "authz:policy:permission_add",
        "authz:policy:assignment_create",
    ]


def test_bad_input_names_the_field(bare_services: Services, tmp_path: Path):
    file = tmp_path / "policy.toml"
    file.write_text(POLICY_TOML.replace('kind = "same_prefecture_as_resource"', 'kind = "full_moon"'), encoding="utf-8")
    result = run(bare_services, "policy", "load", str(file))
    assert result.exit_code == 2
    assert "applications[0].roles[0].permissions[0].conditions[0]: kind must be one of" in result.output
    file.write_text("[[subjects]\n", encoding="utf-8")
    result = run(bare_services, "policy", "load", str(file))
    assert result.exit_code == 2 and "not valid TOML" in result.output
    result = run(
        bare_services, "policy", "rule", "e-docs", "r", "n", "--action", "a", "--type", "t", "--conditions", "{nope"
    )
    assert result.exit_code == 2 and "conditions: is not JSON" in result.output
    result = run(bare_services, "policy", "assign", "ghost", "e-docs", "reader")
    assert result.exit_code == 2 and "subject: subject 'ghost' is not known" in result.output
