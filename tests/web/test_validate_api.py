"""POST /api/v1/validate: answers for certificates we issued, clear problems for bad
input, and nothing written to the database either way."""

from __future__ import annotations

import base64
import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from flask.testing import FlaskClient

from tests.helpers import csr_pem
from tests.web.test_api import assert_problem, auth, counts, issue
from web.container import Services

HOST = "app.example.gov.cn"


@pytest.fixture
def issued(client: FlaskClient, operator_token: str) -> dict[str, str]:
    """PEM of one certificate per profile we test with, and the issuing CA's."""
    out: dict[str, str] = {}
    for profile, csr in (
        ("service-tls-server", csr_pem(cn=HOST)),
        ("service-tls-client", csr_pem(cn="caller.example.gov.cn")),
        ("official-signing", csr_pem(cn="张三", names=[])),
    ):
        response = issue(client, operator_token, csr, profile=profile)
        assert response.status_code == 201, response.json
        out[profile] = response.json["certificate_pem"]
        out["issuing"] = response.json["chain_pem"]
    return out


def check(client: FlaskClient, token: str, **body: object):
    response = client.post("/api/v1/validate", json=body, headers=auth(token))
    assert response.status_code == 200, response.json
    return response.json


def test_tls_server_certificate_we_issued_validates(
    client: FlaskClient, operator_token: str, services: Services, issued: dict[str, str]
):
    before = counts(services)
    answer = check(client, operator_token, certificate=issued["service-tls-server"], purpose="tls_server", host=HOST)
    assert answer["valid"] is True and answer["code"] == "validation.ok", answer
    assert [p["role"] for p in answer["path"]] == ["end_entity", "intermediate", "trust_anchor"]
    leaf, issuing, root = answer["path"]
    assert leaf["subject"].endswith(f"CN={HOST}") or f"CN={HOST}" in leaf["subject"]
    assert issuing["subject"] == leaf["issuer"] and root["subject"] == issuing["issuer"]
    cert = x509.load_pem_x509_certificate(issued["service-tls-server"].encode())
    assert leaf["serial"] == format(cert.serial_number, "x")
    assert leaf["fingerprint_sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    # our own certificates: revocation from our records; the anchor is not checked
    assert leaf["revocation"] == {**leaf["revocation"], "source": "database", "status": "good"}
    assert issuing["revocation"]["source"] == "database" and issuing["revocation"]["status"] == "good"
    assert root["revocation"]["status"] == "not_checked"
    # with the intermediate given, as base64 DER, and an IP-less host in upper case
    der = cert.public_bytes(serialization.Encoding.DER)
    again = check(
        client,
        operator_token,
        certificate=base64.b64encode(der).decode(),
        intermediates=[issued["issuing"]],
        purpose="tls_server",
        host=HOST.upper(),
    )
    assert again["valid"] is True, again
    assert counts(services) == before


def test_tls_client_and_wrong_host(client: FlaskClient, operator_token: str, issued: dict[str, str]):
    answer = check(client, operator_token, certificate=issued["service-tls-client"], purpose="tls_client")
    assert answer["valid"] is True, answer
    wrong = check(
        client, operator_token, certificate=issued["service-tls-server"], purpose="tls_server", host="evil.example.com"
    )
    assert wrong["valid"] is False and wrong["code"] == "validation.hostname_mismatch"
    assert "evil.example.com" in wrong["reason"] and f"DNS:{HOST}" in wrong["reason"]
    assert wrong["path"] == [] and wrong["certificate"]["revocation"]["status"] == "not_checked"
    # a server certificate is not a client certificate
    server_as_client = check(client, operator_token, certificate=issued["service-tls-server"], purpose="tls_client")
    assert server_as_client["valid"] is False and server_as_client["code"] == "validation.wrong_purpose"


def test_expired_and_not_yet_valid(client: FlaskClient, operator_token: str, issued: dict[str, str]):
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=800)).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = check(
        client, operator_token, certificate=issued["service-tls-server"], purpose="tls_server", host=HOST, time=later
    )
    assert answer["valid"] is False and answer["code"] == "validation.expired", answer
    assert "expired on" in answer["reason"]
    earlier = check(
        client,
        operator_token,
        certificate=issued["service-tls-server"],
        purpose="tls_server",
        host=HOST,
        time="2001-01-01T00:00:00+08:00",
    )
    assert earlier["code"] == "validation.not_yet_valid"


def test_document_signing(client: FlaskClient, operator_token: str, issued: dict[str, str]):
    signing = check(client, operator_token, certificate=issued["official-signing"], purpose="document_signing")
    assert signing["valid"] is True, signing
    tls = check(client, operator_token, certificate=issued["service-tls-server"], purpose="document_signing")
    assert tls["valid"] is False and tls["code"] == "validation.wrong_purpose", tls
    assert "emailProtection" in tls["reason"] or "purpose" in tls["reason"]


def test_foreign_certificate_is_untrusted(client: FlaskClient, operator_token: str):
    from tests.ca.test_validation import NOW, make_ca, make_leaf

    root, root_key = make_ca("foreign root")
    leaf, _ = make_leaf(root, root_key, host=HOST)
    answer = check(
        client,
        operator_token,
        certificate=leaf.public_bytes(serialization.Encoding.PEM).decode(),
        purpose="tls_server",
        host=HOST,
        time=NOW.isoformat(),
    )
    assert answer["valid"] is False and answer["code"] in {"validation.untrusted", "validation.bad_signature"}


def _fifty(issuing: str) -> list[str]:
    return [issuing] * 50


BAD: dict[str, tuple[dict[str, object], str]] = {
    "not-a-certificate": ({"certificate": "aGVsbG8gd29ybGQ=", "purpose": "tls_client"}, "certificate"),
    "not-base64": ({"certificate": "@@ nope @@", "purpose": "tls_client"}, "certificate"),
    "pem-csr": ({"certificate": csr_pem().decode(), "purpose": "tls_client"}, "certificate"),
    "missing-host": ({"purpose": "tls_server"}, "host"),
    "host-for-client": ({"purpose": "tls_client", "host": HOST}, "host"),
    "bad-host": ({"purpose": "tls_server", "host": "exa mple..com/"}, "host"),
    "bad-time": ({"purpose": "tls_client", "time": "yesterday"}, "time"),
    "time-without-zone": ({"purpose": "tls_client", "time": "2026-01-01T00:00:00"}, "time"),
    "bad-purpose": ({"purpose": "email"}, "purpose"),
    "missing-purpose": ({}, "purpose"),
    "extra-field": ({"purpose": "tls_client", "crl": "x"}, "crl"),
    "bad-intermediate": ({"purpose": "tls_client", "intermediates": ["AAAA"]}, "intermediates.0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_problem_naming_the_field(
    client: FlaskClient, operator_token: str, services: Services, issued: dict[str, str], case: str
):
    body, field = BAD[case]
    payload: dict[str, object] = {"certificate": issued["service-tls-server"], **body}
    before = counts(services)
    response = client.post("/api/v1/validate", json=payload, headers=auth(operator_token))
    problem = assert_problem(response, 422, field)
    if field == "certificate":
        assert "is not an X.509 certificate (PEM or DER)" in problem["detail"]
    assert counts(services) == before


def test_fifty_intermediates_and_no_token(
    client: FlaskClient, operator_token: str, services: Services, issued: dict[str, str]
):
    before = counts(services)
    body = {
        "certificate": issued["service-tls-server"],
        "intermediates": _fifty(issued["issuing"]),
        "purpose": "tls_server",
        "host": HOST,
    }
    problem = assert_problem(
        client.post("/api/v1/validate", json=body, headers=auth(operator_token)), 422, "intermediates"
    )
    assert "at most 10" in problem["detail"]
    assert_problem(client.post("/api/v1/validate", json={**body, "intermediates": []}), 401, "authorization")
    assert counts(services) == before


def test_openapi_documents_validate(client: FlaskClient):
    doc = client.get("/api/v1/openapi.json").json
    post = doc["paths"]["/api/v1/validate"]["post"]
    assert post["security"] == [{"operatorToken": []}]
    assert set(doc["components"]["schemas"]["ValidateRequest"]["required"]) == {"certificate", "purpose"}
    assert "ValidationOut" in doc["components"]["schemas"]


def test_revoked_certificate_is_invalid(
    client: FlaskClient, operator_token: str, services: Services, issued: dict[str, str]
):
    cert = x509.load_pem_x509_certificate(issued["service-tls-client"].encode())
    serial = format(cert.serial_number, "x")
    time.sleep(1.1)  # revoked_at a whole second after notBefore, so "before the revocation" exists
    revoke = client.post(
        f"/api/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"}, headers=auth(operator_token)
    )
    assert revoke.status_code == 200, revoke.json
    before = counts(services)
    answer = check(client, operator_token, certificate=issued["service-tls-client"], purpose="tls_client")
    assert answer["valid"] is False and answer["code"] == "validation.revoked", answer
    assert answer["path"][0]["revocation"]["status"] == "revoked"
    assert answer["path"][0]["revocation"]["revocation_reason"] == "keyCompromise"
    assert "revoked on" in answer["reason"]
    # as of a moment before the revocation, it was good
    revoked_at = dt.datetime.fromisoformat(revoke.json["revoked_at"])
    assert cert.not_valid_before_utc < revoked_at
    earlier = (cert.not_valid_before_utc + (revoked_at - cert.not_valid_before_utc) / 2).isoformat()
    then = check(client, operator_token, certificate=issued["service-tls-client"], purpose="tls_client", time=earlier)
    assert then["valid"] is True, then
    assert then["path"][0]["revocation"]["status"] == "good"
    assert counts(services) == before
