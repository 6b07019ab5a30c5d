"""``POST /api/v1/audit/events``: client credentials, one event or a batch, all or nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from authz.applications import AUDIT_WRITE
from govpki.audit import AuditEntry, AuditHead
from govpki.principal import SYSTEM
from web.api_events import MAX_EVENTS_BODY
from web.app import create_app
from web.container import Services

EVENT: dict[str, Any] = {
    "actor": "user:li.si",
    "action": "document:sign",
    "object_type": "document",
    "object_id": "DOC-1",
    "outcome": "success",
    "time": "2026-03-01T08:00:00Z",
    "details": {"pages": 2},
}
URL = "/api/v1/audit/events"


@pytest.fixture
def client(bare_services: Services) -> FlaskClient:
    app: Flask = create_app(bare_services.config, services=bare_services)
    return app.test_client()


def register(services: Services, name: str = "e-docs", scopes: tuple[str, ...] = (AUDIT_WRITE,)) -> tuple[str, str]:
    with services.sessions() as s:
        app, secret = services.applications.register(s, SYSTEM, name=name, scopes=scopes)
        client_id = app.client_id
        s.commit()
    assert secret is not None  # a confidential client
    return client_id, secret


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def head(services: Services) -> tuple[int, str]:
    with services.sessions() as s:
        row = s.get(AuditHead, 1)
        assert row is not None
        return row.seq, row.hash


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["status"] == status and body["detail"]
    return body


def test_single_event(client: FlaskClient, bare_services: Services):
    creds = basic(*register(bare_services))
    before = head(bare_services)
    response = client.post(URL, json=EVENT, headers=creds)
    assert response.status_code == 201, response.json
    body = response.json
    assert body["count"] == 1 and body["first_seq"] == body["last_seq"] == before[0] + 1
    assert body["first_hash"] == body["last_hash"] == head(bare_services)[1]
    with bare_services.sessions() as s:
        entry = s.get(AuditEntry, body["first_seq"])
        assert entry is not None and entry.action == "app:document:sign"
        assert entry.actor == "application:e-docs/user:li.si"
        details = json.loads(entry.details)
        assert details["source"]["application"] == "e-docs" and details["data"] == {"pages": 2}
        assert details["occurred_at"] == "2026-03-01T08:00:00.000000Z"


def test_batch_then_verify(client: FlaskClient, bare_services: Services):
    client_id, secret = register(bare_services)
    events = [{**EVENT, "object_id": f"DOC-{i}", "details": {"i": i}} for i in range(250)]
    response = client.post(URL, json={"events": events}, headers=basic(client_id, secret))
    assert response.status_code == 201, response.json
    body = response.json
    assert body["count"] == 250 and body["last_seq"] == body["first_seq"] + 249
    with bare_services.sessions() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.action == "app:document:sign")).all()
        assert [r.object_id for r in rows] == [f"DOC-{i}" for i in range(250)]
        assert all(json.loads(r.details)["source"]["client_id"] == client_id for r in rows)
        report = bare_services.auditing.verify(s, SYSTEM)  # what `govpki audit verify` runs
        assert report.ok, report


def test_bad_event_in_a_batch_changes_nothing(client: FlaskClient, bare_services: Services):
    creds = basic(*register(bare_services))
    before = head(bare_services)
    events = [EVENT, EVENT, {**EVENT, "actor": "evil\u0000"}, {**EVENT, "time": "noon"}]
    body = problem(client.post(URL, json={"events": events}, headers=creds), 422)
    assert [e["field"] for e in body["errors"]] == ["events[2].actor", "events[3].time"]
    assert body["detail"].startswith("events[2].actor: must not contain control characters")
    assert head(bare_services) == before


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**EVENT, "action": "ca:cert:issue"}, "action"),
        ({**EVENT, "action": "authz:application:register"}, "action"),
        ({**EVENT, "details": {"x": "y" * (16 * 1024)}}, "details"),
        ({**EVENT, "actor": "a\u2028b"}, "actor"),
        ({"events": []}, "events"),
        ({"events": [EVENT] * 1001}, "events"),
        ({"events": EVENT}, "events"),
        ({"events": [EVENT], "more": 1}, "more"),
        ({"events": [EVENT, "text"]}, "events[1]"),
        ([EVENT], "body"),
    ],
)
def test_bad_bodies(client: FlaskClient, bare_services: Services, payload: Any, field: str):
    creds = basic(*register(bare_services))
    before = head(bare_services)
    body = problem(client.post(URL, json=payload, headers=creds), 422)
    assert body["errors"][0]["field"] == field
    assert head(bare_services) == before


def test_not_json(client: FlaskClient, bare_services: Services):
    creds = basic(*register(bare_services))
    assert problem(client.post(URL, data="x", headers=creds), 422)["code"] == "api.media_type"
    bad = client.post(URL, data="{", headers={**creds, "Content-Type": "application/json"})
    assert problem(bad, 422)["code"] == "api.malformed_json"


def test_oversized_body(client: FlaskClient, bare_services: Services):
    creds = basic(*register(bare_services))
    before = head(bare_services)
    events = [{**EVENT, "details": {"blob": "z" * 15000}} for _ in range(300)]  # each event valid, ~4.5 MB in all
    data = json.dumps({"events": events})
    assert len(data) > MAX_EVENTS_BODY
    body = problem(client.post(URL, data=data, headers={**creds, "Content-Type": "application/json"}), 413)
    assert str(MAX_EVENTS_BODY) in body["detail"]
    assert head(bare_services) == before
    # between the service's general 1 MiB limit and this endpoint's 4 MiB: accepted
    fits = json.dumps({"events": events[:150]})
    assert 1024 * 1024 < len(fits) < MAX_EVENTS_BODY
    ok = client.post(URL, data=fits, headers={**creds, "Content-Type": "application/json"})
    assert ok.status_code == 201 and ok.json["count"] == 150


def test_credentials(client: FlaskClient, bare_services: Services):
    client_id, secret = register(bare_services)
    before = head(bare_services)
    for headers in (
        {},
        basic(client_id, secret + "x"),
        basic("app_unknown", secret),
        {"Authorization": "Bearer " + secret},
        {"Authorization": "Basic !!!"},
    ):
        response = client.post(URL, json=EVENT, headers=headers)
        problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    with bare_services.sessions() as s:
        bare_services.applications.disable(s, SYSTEM, client_id)
        s.commit()
    problem(client.post(URL, json=EVENT, headers=basic(client_id, secret)), 401)
    assert head(bare_services)[0] == before[0] + 1  # only the disable


def test_missing_scope_is_forbidden(client: FlaskClient, bare_services: Services):
    creds = basic(*register(bare_services, "reader", scopes=()))
    before = head(bare_services)
    body = problem(client.post(URL, json=EVENT, headers=creds), 403)
    assert "audit:write" in body["detail"]
    assert head(bare_services) == before


def test_openapi_documents_the_endpoint(client: FlaskClient):
    from openapi_spec_validator import validate

    doc = client.get("/api/v1/openapi.json").json
    assert doc is not None
    validate(doc)
    post = doc["paths"][URL]["post"]
    assert post["security"] == [{"applicationClient": []}]
    assert doc["components"]["securitySchemes"]["applicationClient"]["scheme"] == "basic"
    assert {"201", "401", "403", "413", "422"} <= set(post["responses"])
    assert set(doc["components"]["schemas"]["AuditEventIn"]["required"]) >= {"actor", "action", "time"}
