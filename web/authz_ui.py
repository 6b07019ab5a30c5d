"""The "explain a decision" page (security administrators only: it shows policy subjects'
attributes and assignments, which auditors — who read the audit only — may not see): a
form with subject, application, action and resource → the decision, its reason and every
candidate rule and assignment with each check. A read-only GET; the service checks the
role (a 403 comes from there).

Everything is shown in the reader's language from the codes and values the services
give (``authz.field.*`` for bad input, the decision's and each check's ``code``); rule
names, ids and policy values are shown as they are. The JSON API keeps its English
reasons."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, g, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l

from authz.decisions import Candidate, Check, Decision, Explanation
from authz.policy_schema import DecisionRequest, parse
from govpki.errors import FieldProblem, ForbiddenError, GovpkiError, InvalidError
from web.problems import STATUS
from web.ui import _, _error_page, _user, login_required, render_error, services

bp = Blueprint("authz_ui", __name__, url_prefix="/authz")

FIELDS = ("subject", "application", "action", "type", "id", "attributes")
LABELS = {
    "subject": _l("Subject"),
    "application": _l("Application name"),
    "action": _l("Action"),
    "type": _l("Resource type"),
    "id": _l("Resource id"),
    "attributes": _l("Resource attributes"),
}

Params = Mapping[str, Any]

# ----- bad input: by the problem's code (authz.policy_schema.problem_code) ---------------

_FORMATS: dict[str, Callable[[str], str]] = {
    "application": lambda f: _(
        "%(field)s: use 3 to 48 lower-case letters, digits or hyphens, starting with a letter.", field=f
    ),
    "name": lambda f: _(
        "%(field)s: use 1 to 64 lower-case letters, digits, '_', '.' or '-', starting with a letter.", field=f
    ),
    "action": lambda f: _(
        "%(field)s: use 1 to 64 lower-case letters, digits, '_', '.', ':' or '-', starting with a letter.", field=f
    ),
    "text": lambda f: _("%(field)s: enter 1 to 128 characters, without control characters.", field=f),
}
_TYPES = {
    "object": _l('a JSON object, e.g. {"prefecture": "6501"}'),
    "text": _l("text"),
    "integer": _l("a whole number"),
    "boolean": _l("true or false"),
    "list": _l("a list"),
}


def input_message(name: str, problem: FieldProblem) -> str:
    """A bad value of form field ``name`` in the reader's language, naming the field."""
    label = str(LABELS.get(name, LABELS["subject"]))
    p = problem.params
    code = problem.code or ""
    if code == "authz.field.pattern":
        if p.get("format") == "attribute" and "key" in p:
            return _(
                "%(field)s: the name \"%(key)s\" is not allowed; use 1 to 64 lower-case letters, digits or '_', "
                "starting with a letter.",
                field=label,
                key=p["key"],
            )
        render = _FORMATS.get(str(p.get("format")))
        if render is not None:
            return render(label)
        return _("%(field)s has characters or a form that is not allowed.", field=label)
    if code == "authz.field.attribute_value":
        return _(
            '%(field)s: the value of "%(key)s" must be text of at most %(count)s characters, a whole number, '
            "or true or false.",
            field=label,
            key=p.get("key", ""),
            count=p.get("max_length", 256),
        )
    if code == "authz.field.json":
        return _('%(field)s is not valid JSON: enter a JSON object, e.g. {"prefecture": "6501"}.', field=label)
    if code == "authz.field.type":
        expected = _TYPES.get(str(p.get("expected")))
        if expected is not None:
            return _("%(field)s must be %(expected)s.", field=label, expected=expected)
    if code == "authz.field.required":
        return _("%(field)s is required.", field=label)
    if code == "authz.field.too_short":
        return _("%(field)s: enter at least %(count)s characters.", field=label, count=p.get("min_length", 1))
    if code == "authz.field.too_long":
        return _("%(field)s: at most %(count)s characters.", field=label, count=p.get("max_length", 0))
    if code == "authz.field.too_many":
        return _("%(field)s: at most %(count)s entries.", field=label, count=p.get("max_length", 0))
    return _("%(field)s is not valid.", field=label)


# ----- the decision and its checks -------------------------------------------------------

_ATTRIBUTES = {"prefecture": _l("prefecture"), "department": _l("department")}


def _attr(name: Any) -> str:
    known = _ATTRIBUTES.get(str(name))
    return str(known) if known is not None else str(name)


def scope_text(prefecture: str | None, department: str | None) -> str:
    """An assignment's scope in the reader's language (its values as they are)."""
    parts = []
    if prefecture:
        parts.append(_("prefecture %(value)s", value=prefecture))
    if department:
        parts.append(_("department %(value)s", value=department))
    return _(", ").join(parts) if parts else _("no scope limit")


def decision_reason(decision: Decision) -> str:
    p = decision.params
    if decision.code == "no_application":
        return _("Application %(application)s has no roles in the policy.", application=p["application"])
    if decision.code == "no_rule":
        return _(
            "No role of application %(application)s grants the action %(action)s on resource type %(type)s.",
            application=p["application"],
            action=p["action"],
            type=p["type"],
        )
    if decision.code == "unknown_subject":
        return _("Subject %(subject)s is not known to the policy.", subject=p["subject"])
    if decision.code == "permit":
        return _(
            "Role %(role)s (assignment #%(assignment)s, scope: %(scope)s) grants %(action)s on %(type)s "
            "by rule %(rule)s.",
            role=p["role"],
            assignment=p["assignment"],
            scope=scope_text(p.get("prefecture"), p.get("department")),
            action=p["action"],
            type=p["type"],
            rule=p["rule"],
        )
    if decision.code == "conditions_fail":
        return _(
            "Rules grant %(action)s on %(type)s, but none of them holds for this subject and resource; "
            "the failed checks are listed below.",
            action=p["action"],
            type=p["type"],
        )
    if decision.code == "no_role":
        return _(
            "Subject %(subject)s holds no role of application %(application)s that grants %(action)s on %(type)s "
            "(roles that do: %(roles)s).",
            subject=p["subject"],
            application=p["application"],
            action=p["action"],
            type=p["type"],
            roles=p["roles"],
        )
    return decision.reason


CHECK_LABELS = {
    "assignment": _l("Role assignment"),
    "scope": _l("Assignment scope"),
    "same_prefecture_as_resource": _l("Same prefecture as the resource"),
    "same_department_as_resource": _l("Same department as the resource"),
    "title_in": _l("Title is one of"),
    "time_window": _l("Time window"),
    "resource_attribute_equals": _l("Resource attribute equals"),
}


def check_label(check: Check) -> str:
    known = CHECK_LABELS.get(check.what)
    return str(known) if known is not None else check.what


_CHECKS: dict[str, Callable[[Params], str]] = {
    "no_assignment": lambda p: _("The subject does not hold the role %(role)s.", role=p["role"]),
    "subject_lacks": lambda p: _("The subject has no %(attribute)s.", attribute=_attr(p["attribute"])),
    "resource_lacks": lambda p: _("The resource has no attribute %(attribute)s.", attribute=p["attribute"]),
    "differs": lambda p: _(
        "The subject's %(attribute)s '%(mine)s' is not the resource's '%(theirs)s'.",
        attribute=_attr(p["attribute"]),
        mine=p["mine"],
        theirs=p["theirs"],
    ),
    "same": lambda p: _(
        "The subject's %(attribute)s '%(mine)s' is the resource's.", attribute=_attr(p["attribute"]), mine=p["mine"]
    ),
    "no_title": lambda p: _("The subject has no title (one of %(titles)s is needed).", titles=p["titles"]),
    "title_not_in": lambda p: _(
        "The subject's title '%(title)s' is not one of %(titles)s.", title=p["title"], titles=p["titles"]
    ),
    "title_in": lambda p: _(
        "The subject's title '%(title)s' is one of %(titles)s.", title=p["title"], titles=p["titles"]
    ),
    "outside": lambda p: _("%(at)s is outside the window %(window)s.", at=p["at"], window=p["window"]),
    "within": lambda p: _("%(at)s is within the window %(window)s.", at=p["at"], window=p["window"]),
    "value_differs": lambda p: _(
        "The resource's %(attribute)s is %(got)s, not %(want)s.", attribute=p["attribute"], got=p["got"], want=p["want"]
    ),
    "value_equals": lambda p: _("The resource's %(attribute)s is %(got)s.", attribute=p["attribute"], got=p["got"]),
    "scope_resource_lacks": lambda p: _(
        "The assignment is for %(attribute)s '%(want)s'; the resource has no %(attribute)s.",
        attribute=_attr(p["attribute"]),
        want=p["want"],
    ),
    "scope_differs": lambda p: _(
        "The assignment is for %(attribute)s '%(want)s'; the resource's is '%(got)s'.",
        attribute=_attr(p["attribute"]),
        want=p["want"],
        got=p["got"],
    ),
    "scope_covers": lambda p: _(
        "The assignment covers the resource (scope: %(scope)s).",
        scope=scope_text(p.get("prefecture"), p.get("department")),
    ),
}


def check_message(check: Check) -> str:
    render = _CHECKS.get(check.code)
    return render(check.params) if render is not None else check.why


def candidate_scope(candidate: Candidate) -> str:
    if candidate.assignment_id is None:
        return "—"
    return scope_text(candidate.scope_prefecture, candidate.scope_department)


# ----- the page -----------------------------------------------------------------------------


@bp.errorhandler(ForbiddenError)
def _forbidden(error: GovpkiError) -> ResponseReturnValue:
    if error.code == "authz.explain_forbidden":
        return _error_page(
            STATUS[error.kind],
            _(
                "Only security administrators may explain access decisions: the page shows people's "
                "attributes and role assignments."
            ),
        )
    return render_error(error)


@bp.get("/explain")
@login_required
def explain() -> ResponseReturnValue:
    user = _user()
    svc = services()
    svc.decisions.check_explainer(user.principal)  # the role first: nothing is read for other roles
    values = {name: request.args.get(name, "").strip() for name in FIELDS}
    errors: dict[str, str] = {}
    result: Explanation | None = None
    if values["subject"] or values["application"]:
        try:
            try:
                attributes = json.loads(values["attributes"]) if values["attributes"] else {}
            except (ValueError, RecursionError):  # RecursionError: nested too deeply
                raise InvalidError(
                    "is not a JSON object", field="resource.attributes", code="authz.field.json"
                ) from None
            item = parse(
                DecisionRequest,
                {
                    "subject": values["subject"],
                    "application": values["application"],
                    "action": values["action"],
                    "resource": {"type": values["type"], "id": values["id"] or "-", "attributes": attributes},
                },
            )
            result = svc.decisions.explain(g.db, user.principal, item)
        except InvalidError as error:
            for p in error.problems:
                name = (p.field or "").removeprefix("resource.")
                name = "attributes" if name.startswith("attributes") else name
                name = name if name in FIELDS else "subject"
                errors.setdefault(name, input_message(name, p))  # the first problem of each field
    return render_template(
        "authz/explain.html",
        values=values,
        errors=errors,
        result=result,
        labels=LABELS,
        decision_reason=decision_reason,
        check_label=check_label,
        check_message=check_message,
        candidate_scope=candidate_scope,
    )
