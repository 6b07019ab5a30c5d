"""``govpki policy …``: the access-decision policy (security administration) and its
decisions (explain, decide).

Registered at the end of web.cli with one ``main.add_command(policy)``; helpers come
from web.cli_common, imported when a command runs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click

from govpki.errors import GovpkiError, InvalidError
from web.cli_common import ROW_ID


@click.group("policy")
def policy() -> None:
    """Access policy: application roles, rules, assignments, subjects; explain a decision."""


def _commit(action: Any) -> Any:
    """Run ``action(services, session, principal)`` as one unit of work; report a domain error."""
    from web.cli_common import cli_principal, load_services, report_error

    services = load_services()
    with services.sessions() as session:
        try:
            result = action(services, session, cli_principal())
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    return result


@policy.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def load(file: Path) -> None:
    """Load a policy FILE (TOML, or JSON when it ends in .json): it replaces every role of the
    applications it names (with their rules and assignments) and sets the subjects it lists."""
    from web.cli_common import fail

    try:
        raw = file.read_bytes()
        data = json.loads(raw) if file.suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"{file}: not valid {'JSON' if file.suffix == '.json' else 'TOML'}: {exc}")
    report = _commit(lambda svc, s, who: svc.policy.load(s, who, data, source=file.name))
    click.echo(
        f"loaded {file.name}: {report.applications} applications, {report.roles} roles, {report.permissions} rules, "
        f"{report.subjects} subjects, {report.assignments} assignments; policy version {report.version} "
        f"(sha256 {report.sha256})"
    )


@policy.command("subject")
@click.argument("subject_id")
@click.option("--prefecture", default=None, help="Area code, e.g. 6501.")
@click.option("--department", default=None)
@click.option("--title", default=None)
def subject(subject_id: str, prefecture: str | None, department: str | None, title: str | None) -> None:
    """Create or replace SUBJECT_ID's attributes (unset ones are cleared)."""
    _commit(
        lambda svc, s, who: svc.policy.set_subject(
            s, who, subject_id, prefecture=prefecture, department=department, title=title
        )
    )
    click.echo(f"subject {subject_id!r} set")


@policy.command("role")
@click.argument("application")
@click.argument("name")
@click.option("--description", default="")
@click.option("--delete", is_flag=True, help="Delete the role with its rules and assignments.")
def role(application: str, name: str, description: str, delete: bool) -> None:
    """Create (or --delete) the role NAME of APPLICATION."""
    if delete:
        _commit(lambda svc, s, who: svc.policy.delete_role(s, who, application, name))
        click.echo(f"deleted role {application}/{name}")
        return
    made = _commit(lambda svc, s, who: svc.policy.create_role(s, who, application, name, description))
    click.echo(f"created role {application}/{name} (#{made.id})")


@policy.command("rule")
@click.argument("application")
@click.argument("role_name", metavar="ROLE")
@click.argument("name")
@click.option("--action", required=True)
@click.option("--type", "resource_type", required=True, help="Resource type.")
@click.option(
    "--conditions",
    default="[]",
    help='JSON list, e.g. \'[{"kind": "title_in", "titles": ["科长"]}]\'. Kinds: same_prefecture_as_resource, '
    "same_department_as_resource, title_in, time_window, resource_attribute_equals.",
)
def rule(application: str, role_name: str, name: str, action: str, resource_type: str, conditions: str) -> None:
    """Add rule NAME to ROLE of APPLICATION: it grants ACTION on TYPE when every condition holds."""
    from web.cli_common import report_error

    try:
        parsed = json.loads(conditions)
    except ValueError as exc:
        report_error(InvalidError(f"is not JSON: {exc}", field="conditions"))
    if not isinstance(parsed, list):
        report_error(InvalidError("must be a JSON list", field="conditions"))
    made = _commit(
        lambda svc, s, who: svc.policy.add_permission(
            s, who, application, role_name, name=name, action=action, resource_type=resource_type, conditions=parsed
        )
    )
    click.echo(f"added rule {application}/{role_name}/{name} (#{made.id})")


@policy.command("unrule")
@click.argument("rule_id", type=ROW_ID)
def unrule(rule_id: int) -> None:
    """Remove the rule RULE_ID."""
    _commit(lambda svc, s, who: svc.policy.remove_permission(s, who, rule_id))
    click.echo(f"removed rule #{rule_id}")


@policy.command("assign")
@click.argument("subject_id")
@click.argument("application")
@click.argument("role_name", metavar="ROLE")
@click.option("--prefecture", default=None, help="Only for resources of this prefecture.")
@click.option("--department", default=None, help="Only for resources of this department.")
def assign(subject_id: str, application: str, role_name: str, prefecture: str | None, department: str | None) -> None:
    """Give SUBJECT_ID the ROLE of APPLICATION (optionally scoped)."""
    made = _commit(
        lambda svc, s, who: svc.policy.assign(
            s, who, subject_id, application, role_name, prefecture=prefecture, department=department
        )
    )
    click.echo(f"assignment #{made.id}: {subject_id} holds {application}/{role_name}")


@policy.command("unassign")
@click.argument("assignment_id", type=ROW_ID)
def unassign(assignment_id: int) -> None:
    """Remove the assignment ASSIGNMENT_ID."""
    _commit(lambda svc, s, who: svc.policy.unassign(s, who, assignment_id))
    click.echo(f"removed assignment #{assignment_id}")


@policy.command("show")
@click.option("--application", default=None)
def show(application: str | None) -> None:
    """List the roles and their rules (of one application, or all)."""
    from web.cli_common import load_services

    services = load_services()
    with services.sessions() as session:
        click.echo(f"policy version {services.policy.version(session)}")
        for r in services.policy.roles(session, application):
            click.echo(f"{r.application}/{r.name}  {r.description}")
            for p in services.policy.permissions(session, r.id):
                click.echo(f"  #{p.id} {p.name}: {p.action} on {p.resource_type} if {p.conditions}")


def _request(
    subject_id: str, application: str, action: str, rtype: str, rid: str, attrs: tuple[str, ...], attributes: str
) -> Any:
    from authz.policy_schema import DecisionRequest, parse
    from web.cli_common import report_error

    values: dict[str, Any] = {}
    if attributes:
        try:
            values.update(json.loads(attributes))
        except (ValueError, TypeError) as exc:
            report_error(InvalidError(f"is not a JSON object: {exc}", field="attributes"))
    for item in attrs:
        key, sep, value = item.partition("=")
        if not sep:
            report_error(InvalidError(f"{item!r} is not KEY=VALUE", field="attr"))
        values[key] = value
    try:
        return parse(
            DecisionRequest,
            {
                "subject": subject_id,
                "application": application,
                "action": action,
                "resource": {"type": rtype, "id": rid, "attributes": values},
            },
        )
    except GovpkiError as exc:
        report_error(exc)


_decision_options = [
    click.option("--subject", "subject_id", required=True),
    click.option("--application", required=True),
    click.option("--action", required=True),
    click.option("--type", "rtype", required=True, help="Resource type."),
    click.option("--id", "rid", default="-", show_default=True, help="Resource id."),
    click.option("--attr", "attrs", multiple=True, help="Resource attribute KEY=VALUE (a string); repeat."),
    click.option("--attributes", default="", help="Resource attributes as a JSON object (typed values)."),
]


def _with_decision_options(f: Any) -> Any:
    for option in reversed(_decision_options):
        f = option(f)
    return f


@policy.command("explain")
@_with_decision_options
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(
    subject_id: str,
    application: str,
    action: str,
    rtype: str,
    rid: str,
    attrs: tuple[str, ...],
    attributes: str,
    as_json: bool,
) -> None:
    """Why a decision comes out as it does: every candidate rule and assignment, each check."""
    from web.cli_common import cli_principal, load_services, report_error

    request = _request(subject_id, application, action, rtype, rid, attrs, attributes)
    services = load_services()
    with services.sessions() as session:
        try:
            out = services.decisions.explain(session, cli_principal(), request)
        except GovpkiError as exc:
            report_error(exc)
    if as_json:
        click.echo(json.dumps(out.as_dict(), ensure_ascii=False, indent=2))
        return
    d = out.decision
    click.echo(f"{d.effect.upper()}: {d.reason}")
    click.echo(f"rule: {d.rule or '-'}   assignment: {d.assignment_id or '-'}   policy version: {d.policy_version}")
    for c in out.candidates:
        mark = "MATCH" if c.matched else "no   "
        click.echo(f"{mark} {c.rule} (assignment {c.assignment_id or '-'}, scope {c.scope})")
        for check in c.checks:
            click.echo(f"      {'ok  ' if check.ok else 'FAIL'} {check.what}: {check.why}")


@policy.command("decide")
@_with_decision_options
def decide(
    subject_id: str, application: str, action: str, rtype: str, rid: str, attrs: tuple[str, ...], attributes: str
) -> None:
    """Print permit or deny and why; exit status 0 for permit, 1 for deny."""
    import sys

    from web.cli_common import cli_principal, load_services, report_error

    request = _request(subject_id, application, action, rtype, rid, attrs, attributes)
    services = load_services()
    with services.sessions() as session:
        try:
            d = services.decisions.decide(session, cli_principal(), request)
        except GovpkiError as exc:
            report_error(exc)
    click.echo(f"{d.effect}: {d.reason}")
    sys.exit(0 if d.permitted else 1)
