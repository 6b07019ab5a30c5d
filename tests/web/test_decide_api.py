"""``POST /api/v1/authz/decide`` and ``/decide/batch``: client credentials and scopes,
strict input (each bad input a problem naming the field), permit and deny answers."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from authz.applications import AUDIT_WRITE
from authz.decisions import AUTHZ_DECIDE, AUTHZ_DECIDE_ANY
from govpki.principal import SYSTEM
from tests.helpers import make_config
from web.api_authz import MAX_BATCH_BODY, MAX_DECIDE_BODY
from web.app import create_app
from web.container import Services, build_services

URL = "/api/v1/authz/decide"
BATCH = "/api/v1/authz/decide/batch"
POLICY: dict[str, Any] = {
    "subjects": [{"id": "zhang.san", "prefecture": "6501", "title": "科长"}, {"id": "li.si", "prefecture": "6502"}],
    "applications": [
        {
            "name": "e-docs",
            "roles": [
                {
                    "name": "reader",
                    "permissions": [
                        {
                            "name": "read-own-prefecture",
                            "action": "read",
                            "resource_type": "document",
                            "conditions": [{"kind": "same_prefecture_as_resource"}],
                        }
                    ],
                }
            ],
        }
    ],
    "assignments": [
        {"subject": "zhang.san", "application": "e-docs", "role": "reader"},
        {"subject": "li.si", "application": "e-docs", "role": "reader"},
    ],
}
ITEM: dict[str, Any] = {
    "subject": "zhang.san",
    "application": "e-docs",
    "action": "read",
    "resource": {"type": "document", "id": "DOC-1", "attributes": {"prefecture": "6501"}},
}


@pytest.fixture
def svc(tmp_path: Any, database_url: str) -> Any:
    services = build_services(make_config(tmp_path / "instance", database_url, GOVPKI_AUTHZ_POLICY_REFRESH_MS="0"))
    with services.sessions() as s:
        services.policy.load(s, SYSTEM, POLICY)
        s.commit()
    try:
        yield services
    finally:
        services.dispose()


@pytest.fixture
def client(svc: Services) -> FlaskClient:
    app: Flask = create_app(svc.config, services=svc)
    return app.test_client()


def register(services: Services, name: str = "e-docs", scopes: tuple[str, ...] = (AUTHZ_DECIDE,)) -> dict[str, str]:
    with services.sessions() as s:
        app, secret = services.applications.register(s, SYSTEM, name=name, scopes=scopes)
        client_id = app.client_id
        s.commit()
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["status"] == status and body["detail"]
    return body


def test_permit_and_deny(client: FlaskClient, svc: Services):
    creds = register(svc)
    r = client.post(URL, json=ITEM, headers=creds)
    assert r.status_code == 200, r.json
    assert r.json["decision"] == "permit" and r.json["rule"]["name"] == "e-docs/reader/read-own-prefecture"
    assert r.json["assignment_id"] and r.json["policy_version"] == 1 and "6501" in r.json["reason"]
    other = copy.deepcopy(ITEM)
    other["resource"]["attributes"]["prefecture"] = "6502"
    r = client.post(URL, json=other, headers=creds)
    assert r.status_code == 200 and r.json["decision"] == "deny"
    assert "'6501' is not the resource's '6502'" in r.json["reason"]
    other["action"] = "delete"
    r = client.post(URL, json=other, headers=creds)
    assert r.json == {
        "decision": "deny",
        "reason": "no role of application 'e-docs' grants action 'delete' on type 'document'",
        "rule": None,
        "assignment_id": None,
        "policy_version": 1,
    }


def test_batch(client: FlaskClient, svc: Services):
    creds = register(svc)
    other = copy.deepcopy(ITEM)
    other["subject"] = "li.si"
    r = client.post(BATCH, json={"items": [ITEM, other, ITEM]}, headers=creds)
    assert r.status_code == 200, r.json
    assert [d["decision"] for d in r.json["decisions"]] == ["permit", "deny", "permit"]


def test_authentication(client: FlaskClient, svc: Services):
    creds = register(svc)
    r = client.post(URL, json=ITEM)
    assert problem(r, 401)["code"] == "govpki.unauthenticated" and r.headers["WWW-Authenticate"].startswith("Basic")
    client_id = base64.b64decode(creds["Authorization"].split()[1]).decode().split(":")[0]
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{client_id}:nope".encode()).decode()}
    problem(client.post(URL, json=ITEM, headers=wrong), 401)
    unknown = {"Authorization": "Basic " + base64.b64encode(b"app_nobody:nope").decode()}
    problem(client.post(BATCH, json={"items": [ITEM]}, headers=unknown), 401)
    problem(client.post(URL, json=ITEM, headers={"Authorization": "Bearer gpk_x"}), 401)


def test_scopes(client: FlaskClient, svc: Services):
    writer = register(svc, "e-docs", (AUDIT_WRITE,))
    assert "lacks the scope 'authz:decide'" in problem(client.post(URL, json=ITEM, headers=writer), 403)["detail"]
    other_app = register(svc, "e-mail", (AUTHZ_DECIDE,))
    body = problem(client.post(URL, json=ITEM, headers=other_app), 403)
    assert body["errors"][0]["field"] == "application"
    body = problem(
        client.post(BATCH, json={"items": [{**ITEM, "application": "e-mail"}, ITEM]}, headers=other_app), 403
    )
    assert body["errors"][0]["field"] == "items[1].application"
    gateway = register(svc, "gateway", (AUTHZ_DECIDE_ANY,))
    assert client.post(URL, json=ITEM, headers=gateway).json["decision"] == "permit"
    # an application nobody wrote a policy for: a deny, not a 404
    r = client.post(URL, json={**ITEM, "application": "e-mail"}, headers=other_app)
    assert r.status_code == 200 and r.json["decision"] == "deny" and "has no roles in the policy" in r.json["reason"]


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({**ITEM, "extra": 1}, "extra", "is not a known field"),
        ({k: v for k, v in ITEM.items() if k != "subject"}, "subject", "is required"),
        ({**ITEM, "subject": ""}, "subject", "not allowed"),
        ({**ITEM, "subject": "x" * 129}, "subject", "not allowed"),
        ({**ITEM, "application": "E DOCS"}, "application", "not allowed"),
        ({**ITEM, "action": 7}, "action", "string"),
        ({**ITEM, "resource": {"type": "document"}}, "resource.id", "is required"),
        ({**ITEM, "resource": {"type": "Doc!", "id": "1"}}, "resource.type", "not allowed"),
        (
            {**ITEM, "resource": {"type": "document", "id": "1", "attributes": {"a": {"b": 1}}}},
            "resource.attributes.a",
            "",
        ),
        (
            {**ITEM, "resource": {"type": "document", "id": "1", "attributes": {"Bad-Key": "x"}}},
            "resource.attributes",
            "",
        ),
        (
            {**ITEM, "resource": {"type": "document", "id": "1", "attributes": {f"a{i}": i for i in range(33)}}},
            "resource.attributes",
            "at most 32",
        ),
        ([ITEM], "body", ""),
    ],
)
def test_malformed_names_the_field(client: FlaskClient, svc: Services, body: Any, field: str, reason: str):
    creds = register(svc)
    p = problem(client.post(URL, json=body, headers=creds), 422)
    assert p["errors"][0]["field"].startswith(field) and reason in p["errors"][0]["reason"], p
    assert p["code"] == "authz.invalid_request"


def test_bad_bodies(client: FlaskClient, svc: Services):
    creds = register(svc)
    p = problem(client.post(URL, data=b'{"subject": ', headers={**creds, "Content-Type": "application/json"}), 422)
    assert p["code"] == "api.malformed_json" and p["errors"][0]["field"] == "body"
    p = problem(client.post(URL, data=b"subject=x", headers={**creds, "Content-Type": "text/plain"}), 422)
    assert p["code"] == "api.media_type"
    big = {**ITEM, "resource": {**ITEM["resource"], "id": "x" * MAX_DECIDE_BODY}}
    assert "larger than" in problem(client.post(URL, json=big, headers=creds), 413)["detail"]
    huge = {"items": [{**ITEM, "resource": {**ITEM["resource"], "id": "x" * 200}}] * 5000}
    p = problem(client.post(BATCH, json=huge, headers=creds), 413)
    assert str(MAX_BATCH_BODY) in p["detail"]
    p = problem(client.post(BATCH, json={"items": [ITEM] * 1001}, headers=creds), 422)
    assert p["errors"][0]["field"] == "items" and "at most 1000" in p["errors"][0]["reason"]
    p = problem(client.post(BATCH, json={"items": []}, headers=creds), 422)
    assert p["errors"][0]["field"] == "items"
    p = problem(client.post(BATCH, json={"items": [ITEM, {**ITEM, "action": ""}]}, headers=creds), 422)
    assert p["errors"][0]["field"] == "items[1].action"


def test_openapi_describes_the_endpoints(client: FlaskClient):
    doc = client.get("/api/v1/openapi.json").json
    assert doc["paths"][URL]["post"]["security"] == [{"applicationClient": []}]
    assert "413" in doc["paths"][BATCH]["post"]["responses"]
    assert "DecisionRequest" in doc["components"]["schemas"]
