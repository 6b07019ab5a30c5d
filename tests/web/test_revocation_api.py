"""REST revocation: revoke, hold, release; 404/409/422 problems that change nothing."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.helpers import csr_pem
from tests.web.test_api import auth, counts, issue
from web.container import Services


def test_revoke_hold_release_over_rest(client: FlaskClient, operator_token: str, services: Services) -> None:
    serial = issue(client, operator_token, csr_pem(cn="r1.example.gov.cn")).json["serial"]
    url = f"/api/v1/certificates/{serial}"

    held = client.post(f"{url}/hold", headers=auth(operator_token))
    assert held.status_code == 200, held.json
    assert held.json["status"] == "on_hold" and held.json["revocation_reason"] == "certificateHold"
    again = client.post(f"{url}/hold", headers=auth(operator_token))
    assert again.status_code == 409 and again.json["errors"][0]["field"] == "serial"

    released = client.post(f"{url}/release", json={}, headers=auth(operator_token))
    assert released.status_code == 200 and released.json["status"] == "good"
    not_held = client.post(f"{url}/release", headers=auth(operator_token))
    assert not_held.status_code == 409 and "not on hold" in not_held.json["detail"]

    revoked = client.post(
        f"{url}/revoke",
        json={"reason": "keyCompromise", "invalidity_date": "2026-01-02T03:04:05Z"},
        headers=auth(operator_token),
    )
    assert revoked.status_code == 200, revoked.json
    assert revoked.json["status"] == "revoked" and revoked.json["invalidity_date"].startswith("2026-01-02T03:04:05")
    assert client.get(url, headers=auth(operator_token)).json["revocation_reason"] == "keyCompromise"

    before = counts(services)
    twice = client.post(f"{url}/revoke", json={"reason": "superseded"}, headers=auth(operator_token))
    assert twice.status_code == 409 and twice.json["code"] == "ca.already_revoked"
    assert counts(services) == before


def test_bad_revocation_requests(client: FlaskClient, operator_token: str, services: Services) -> None:
    serial = issue(client, operator_token, csr_pem(cn="r2.example.gov.cn")).json["serial"]
    url = f"/api/v1/certificates/{serial}/revoke"
    before = counts(services)
    cases = [
        (client.post(url, json={"reason": "because"}, headers=auth(operator_token)), 422, "reason"),
        (client.post(url, json={"invalidity_date": "yesterday"}, headers=auth(operator_token)), 422, "invalidity_date"),
        (client.post(url, json={"extra": 1}, headers=auth(operator_token)), 422, "extra"),
        (client.post(url, json={"ca_id": 1}, headers=auth(operator_token)), 404, "serial"),  # 1 is the root
        (client.post("/api/v1/certificates/abcdef01/revoke", headers=auth(operator_token)), 404, "serial"),
        (client.post("/api/v1/certificates/xyz/revoke", headers=auth(operator_token)), 422, "serial"),
        (client.post(url, data="{", content_type="application/json", headers=auth(operator_token)), 422, "body"),
        (client.post(url), 401, None),
    ]
    for response, status, field in cases:
        assert response.status_code == status, (response.status_code, response.json)
        assert response.mimetype == "application/problem+json"
        if field is not None:
            assert response.json["errors"][0]["field"] == field, response.json
    assert counts(services) == before


def test_the_api_offers_exactly_the_revocation_reasons_of_the_service() -> None:
    from typing import get_args

    from ca.revocation import REVOKE_REASONS
    from web.api import REVOKE_REASONS as API_REASONS

    assert set(get_args(API_REASONS)) == set(REVOKE_REASONS)
