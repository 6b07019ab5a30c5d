"""``POST /api/v1/audit/events``: a registered application appends its own events to
the audit chain (thin view: client credentials, JSON, one service call, render).

The schema check is the domain's (``authz.applications.check_event``), so every
caller gets the same rules; the pydantic models here describe the body and the
answer in the OpenAPI document."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Literal
from urllib.parse import unquote

from flask import Blueprint, Response, current_app, g, json, request
from pydantic import BaseModel, ConfigDict, Field, RootModel

from authz.applications import MAX_ACTOR, MAX_BATCH, MAX_DETAILS_BYTES, MAX_OBJECT_ID, MAX_OBJECT_TYPE
from authz.certlogin import CERT_HEADER, VERIFY_HEADER
from govpki.errors import InvalidError, UnauthenticatedError
from govpki.principal import Principal
from web.container import Services
from web.openapi import Response as Doc
from web.openapi import operation
from web.problems import from_error

bp = Blueprint("api_events", __name__, url_prefix="/api/v1")

MAX_EVENTS_BODY = 4 * 1024 * 1024
BASIC_CHALLENGE = 'Basic realm="govpki", charset="UTF-8"'


class AuditEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str = Field(
        min_length=1, max_length=MAX_ACTOR, description="Who acted, in the application's terms; no control characters"
    )
    action: str = Field(
        pattern=r"^(app:)?[a-z][a-z0-9_]{0,29}:[a-z][a-z0-9_]{0,29}$",
        description="'object:verb' (or 'app:object:verb'); stored as 'app:object:verb'",
    )
    object_type: str = Field(min_length=1, max_length=MAX_OBJECT_TYPE)
    object_id: str = Field(min_length=1, max_length=MAX_OBJECT_ID)
    outcome: Literal["success", "failure", "denied"] = "success"
    time: _dt.datetime = Field(
        description="RFC 3339 with a zone: when it happened, by the application's clock (kept as occurred_at)"
    )
    details: dict[str, Any] = Field(
        default_factory=dict, description=f"A JSON object, at most {MAX_DETAILS_BYTES} bytes as compact JSON"
    )


class AuditEventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[AuditEventIn] = Field(min_length=1, max_length=MAX_BATCH)


class AuditEventsRequest(RootModel[AuditEventIn | AuditEventBatch]):
    """One event, or ``{"events": [...]}`` with 1..1000 events (all or nothing)."""


class AuditEventsOut(BaseModel):
    count: int = Field(description="events appended")
    first_seq: int = Field(description="sequence number of the first appended entry (the rest follow without gaps)")
    last_seq: int
    first_hash: str = Field(description="hex SHA-256 chain hash of the first entry")
    last_hash: str


def _services() -> Services:
    services: Services = current_app.extensions["govpki"]
    return services


def certificate_client() -> Principal | None:
    """Mutual TLS: the application whose bound certificate the trusted TLS front passed on;
    ``None`` without one, or when the header came from another sender (then it is ignored).
    UnauthenticatedError when the certificate is not valid or bound to no application."""
    certificate = request.headers.get(CERT_HEADER)
    if not certificate:
        return None
    certlogin = _services().certlogin
    if not certlogin.trusted(request.remote_addr):
        return None
    return certlogin.authenticate_application(
        g.db,
        source=request.remote_addr or "unknown",  # the peer: whether the front's headers are believed
        cert_header=certificate,
        verify_header=request.headers.get(VERIFY_HEADER),
    )


def _client() -> Principal:
    """HTTP Basic client credentials (RFC 6749 2.3.1: each part form-urlencoded), or, without
    them, a client certificate bound to the application, passed on by the trusted TLS front."""
    auth = request.authorization
    if auth is None:
        by_certificate = certificate_client()
        if by_certificate is not None:
            return by_certificate
    if auth is None or auth.type != "basic":
        raise UnauthenticatedError(
            "client credentials are required: 'Authorization: Basic base64(client_id:client_secret)'",
            field="authorization",
        )
    return _services().applications.authenticate(g.db, unquote(auth.username or ""), unquote(auth.password or ""))


@bp.post("/audit/events")
@operation(
    "POST",
    "/api/v1/audit/events",
    summary="A registered application appends one event or a batch (1-1000, all or nothing) to the audit chain",
    tag="audit",
    body=AuditEventsRequest,
    security="applicationClient",
    responses={
        201: Doc("Appended: the entries' sequence numbers and hashes", AuditEventsOut),
        403: Doc("The application lacks the scope audit:write"),
        413: Doc(f"The body is larger than {MAX_EVENTS_BODY} bytes"),
    },
)
def append_audit_events() -> Response:
    try:
        who = _client()
    except UnauthenticatedError as exc:
        response = from_error(exc, request.path)
        response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
        return response
    request.max_content_length = MAX_EVENTS_BODY
    if not request.is_json:
        raise InvalidError("send the request body as application/json", field="body", code="api.media_type")
    data = request.get_json(silent=True)
    if data is None:
        raise InvalidError("is not valid JSON", field="body", code="api.malformed_json")
    if isinstance(data, dict) and "events" in data:
        extra = sorted(set(data) - {"events"})
        if extra:
            raise InvalidError("is not a field of a batch (send only 'events')", field=extra[0])
        events = data["events"]
        if not isinstance(events, list):
            raise InvalidError(f"must be a list of 1-{MAX_BATCH} events", field="events")
        batch = True
    else:
        events, batch = [data], False
    result = _services().applications.append_events(g.db, who, events, batch=batch)
    out = AuditEventsOut(
        count=len(result.refs),
        first_seq=result.first.seq,
        last_seq=result.last.seq,
        first_hash=result.first.hash,
        last_hash=result.last.hash,
    )
    return Response(json.dumps(out.model_dump(mode="json")), status=201, mimetype="application/json")
