"""``POST /api/v1/authz/decide`` and ``…/decide/batch``: access decisions for registered
applications (thin views: client credentials, strict JSON, one service call, render).

An application authenticates with its client credentials (HTTP Basic, as for
``/api/v1/audit/events``) and needs the scope ``authz:decide`` (decisions about its own
application name) or ``authz:decide:any`` (about any application). Decisions are not
written to the audit chain one by one; every policy change behind them is.

What the endpoints do is :mod:`web.decide_core` (shared with the dedicated decision
server, ``govpki authz serve``); the views give it the request and the request's
database session."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel, Field

from authz.decisions import Decision
from authz.policy_schema import DecisionBatch, DecisionRequest
from govpki.principal import Principal
from web import api_events, decide_core
from web.container import Services
from web.decide_core import MAX_BATCH_BODY, MAX_BATCH_ITEMS, MAX_DECIDE_BODY
from web.openapi import Response as Doc
from web.openapi import operation

bp = Blueprint("api_authz", __name__, url_prefix="/api/v1/authz")

__all__ = ["MAX_BATCH_BODY", "MAX_BATCH_ITEMS", "MAX_DECIDE_BODY", "bp"]


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


class _Decider:
    """Credentials and decisions through the request's database session."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def authenticate(self, client_id: str, secret: str) -> Principal:
        return self._services.applications.authenticate(g.db, client_id, secret)

    def certificate_client(self) -> Principal | None:
        return api_events.certificate_client()

    def decide(self, principal: Principal, item: DecisionRequest) -> Decision:
        return self._services.decisions.decide(g.db, principal, item)

    def decide_many(self, principal: Principal, items: Sequence[DecisionRequest]) -> list[Decision]:
        return self._services.decisions.decide_many(g.db, principal, items)


def _answer(batch: bool) -> Response:
    def read_body() -> bytes:
        # Werkzeug also enforces the limit on a body sent without Content-Length
        request.max_content_length = decide_core.limit_of(batch)
        return request.get_data(cache=False)

    result = decide_core.answer(
        request.path,
        batch=batch,
        authorization=request.headers.get("Authorization"),
        content_type=request.content_type,
        content_length=request.content_length,
        read_body=read_body,
        decider=_Decider(_services()),
    )
    response = Response(result.body, status=result.status, content_type=result.content_type)
    for name, value in result.headers:
        response.headers[name] = value
    return response


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
    return _answer(batch=False)


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
    return _answer(batch=True)
