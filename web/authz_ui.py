"""The "explain a decision" page (security administrators and auditors): a form with
subject, application, action and resource → the decision, its reason and every
candidate rule and assignment with each check. A read-only GET; the service checks the
role (a 403 comes from there)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, g, render_template, request
from flask.typing import ResponseReturnValue

from authz.policy_schema import DecisionRequest, parse
from govpki.errors import InvalidError
from web.ui import _user, field_message, login_required, services

bp = Blueprint("authz_ui", __name__, url_prefix="/authz")

FIELDS = ("subject", "application", "action", "type", "id", "attributes")


@bp.get("/explain")
@login_required
def explain() -> ResponseReturnValue:
    user = _user()
    svc = services()
    svc.decisions.check_asker(user.principal, "")  # the role first: nothing is read for other roles
    values = {name: request.args.get(name, "").strip() for name in FIELDS}
    errors: dict[str, str] = {}
    result: dict[str, Any] | None = None
    if values["subject"] or values["application"]:
        try:
            try:
                attributes = json.loads(values["attributes"]) if values["attributes"] else {}
            except ValueError:
                raise InvalidError("is not a JSON object", field="resource.attributes") from None
            item = parse(
                DecisionRequest,
                {
                    "subject": values["subject"],
                    "application": values["application"],
                    "action": values["action"],
                    "resource": {"type": values["type"], "id": values["id"] or "-", "attributes": attributes},
                },
            )
            result = svc.decisions.explain(g.db, user.principal, item).as_dict()
        except InvalidError as error:
            for p in error.problems:
                name = (p.field or "").removeprefix("resource.")
                name = "attributes" if name.startswith("attributes") else name
                errors[name if name in FIELDS else "subject"] = field_message(p.reason)
    return render_template("authz/explain.html", values=values, errors=errors, result=result)
