"""``POST /api/v1/authz/decide`` and ``…/decide/batch``: access decisions for registered
applications (thin views: client credentials, strict JSON, one service call, render).

An application authenticates with its client credentials (HTTP Basic, as for
``/api/v1/audit/events``) and needs the scope ``authz:decide`` (decisions about its own
application name) or ``authz:decide:any`` (about any application). Decisions are not
written to the audit chain one by one; every policy change behind them is."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, current_app, g, json, request
from pydantic import BaseModel, Field

from authz.decisions import Decision
from authz.policy_schema import DecisionBatch, DecisionRequest, parse_json
from govpki.errors import InvalidError, UnauthenticatedError
from govpki.principal import Principal
from web.api_events import BASIC_CHALLENGE, _client
from web.container import Services
from web.openapi import Response as Doc
from web.openapi import operation
from web.problems import from_error

bp = Blueprint("api_authz", __name__, url_prefix="/api/v1/authz")

MAX_DECIDE_BODY = 64 * 1024
MAX_BATCH_BODY = 1024 * 1024
MAX_BATCH_ITEMS = 1000


class RuleOut(BaseModel):
    id: int
    name: str = Field(description="application/role/rule")


class DecisionOut(BaseModel):
    decision: Literal["permit", "deny"]
    reason: str = Field(description="why, in words: the rule and assignment that permitted, or what failed")
    rule: RuleOut | None = Field(description="the rule that decided (a deny by a failed condition names the rule)")
    assignment_id: int | None
    policy_version: int = Field(description="the version of the policy the decision was made on")


class DecisionBatchOut(BaseModel):
    decisions: list[DecisionOut] = Field(description="one per item, in order")


def _services() -> Services:
    services: Services = current_app.extensions["govpki"]
    return services


def _authenticated() -> Principal | Response:
    try:
        return _client()
    except UnauthenticatedError as exc:
        response = from_error(exc, request.path)
        response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
        return response


def _body(limit: int) -> bytes:
    request.max_content_length = limit
    if not request.is_json:
        raise InvalidError("send the request body as application/json", field="body", code="api.media_type")
    return request.get_data(cache=False)


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, ensure_ascii=False), status=status, mimetype="application/json")


def _out(decision: Decision) -> dict[str, Any]:
    return decision.as_dict()


@bp.post("/decide")
@operation(
    "POST",
    "/api/v1/authz/decide",
    summary="Permit or deny one request (subject, application, action, resource), with the reason and the rule",
    tag="authz",
    body=DecisionRequest,
    security="applicationClient",
    responses={
        200: Doc("The decision (a deny is a 200 too)", DecisionOut),
        403: Doc("The application lacks authz:decide, or asks about another application without authz:decide:any"),
        413: Doc(f"The body is larger than {MAX_DECIDE_BODY} bytes"),
    },
)
def decide() -> Response:
    who = _authenticated()
    if isinstance(who, Response):
        return who
    item = parse_json(DecisionRequest, _body(MAX_DECIDE_BODY), code="authz.invalid_request")
    return _json(_out(_services().decisions.decide(g.db, who, item)))


@bp.post("/decide/batch")
@operation(
    "POST",
    "/api/v1/authz/decide/batch",
    summary=f"Decide 1-{MAX_BATCH_ITEMS} requests at once (one policy version for all)",
    tag="authz",
    body=DecisionBatch,
    security="applicationClient",
    responses={
        200: Doc("The decisions, in the order of the items", DecisionBatchOut),
        403: Doc("An item names an application this one may not ask about (field items[i].application)"),
        413: Doc(f"The body is larger than {MAX_BATCH_BODY} bytes"),
    },
)
def decide_batch() -> Response:
    who = _authenticated()
    if isinstance(who, Response):
        return who
    batch = parse_json(DecisionBatch, _body(MAX_BATCH_BODY), code="authz.invalid_request")
    decisions = _services().decisions.decide_many(g.db, who, batch.items)
    return _json({"decisions": [_out(d) for d in decisions]})
