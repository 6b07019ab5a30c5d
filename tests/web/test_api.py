"""REST API: issuance and lookup, and RFC 9457 problems for every bad input."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from authz.models import ApiToken
from ca.models import CertificateRecord
from govpki.audit import AuditEntry
from tests.ca.test_bad_input import BAD as BAD_CSRS
from tests.helpers import csr_pem, openssl_verify
from web.container import Services


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def issue(client: FlaskClient, token: str, csr: bytes | str, profile: str = "service-tls-server"):
    text = csr.decode() if isinstance(csr, bytes) else csr
    return client.post("/api/v1/certificates", json={"profile": profile, "csr": text}, headers=auth(token))


def counts(services: Services) -> tuple[int, int]:
    with services.sessions() as s:
        return (
            s.scalar(select(func.count()).select_from(CertificateRecord)) or 0,
            s.scalar(select(func.count()).select_from(AuditEntry)) or 0,
        )


def test_issue_and_fetch(client: FlaskClient, operator_token: str, services: Services, tmp_path: Path):
    response = issue(client, operator_token, csr_pem(cn="api.example.gov.cn"))
    assert response.status_code == 201, response.json
    body = response.json
    assert body["state"] == "issued"
    assert response.headers["Location"] == f"/api/v1/certificates/{body['serial']}"
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    chain = x509.load_pem_x509_certificate(body["chain_pem"].encode())
    root = client.get("/ca/root.der")
    assert root.status_code == 200 and root.mimetype == "application/pkix-cert"
    result = openssl_verify(
        tmp_path,
        root.data,
        chain.public_bytes(serialization.Encoding.DER),
        cert.public_bytes(serialization.Encoding.DER),
    )
    assert result.returncode == 0, result.stderr

    got = client.get(body["serial"].join(["/api/v1/certificates/", ""]), headers=auth(operator_token))
    assert got.status_code == 200 and got.json["fingerprint_sha256"] == body["fingerprint_sha256"]
    pem = client.get(
        f"/api/v1/certificates/{body['serial']}",
        headers={**auth(operator_token), "Accept": "application/pem-certificate-chain"},
    )
    assert pem.status_code == 200 and pem.data.count(b"BEGIN CERTIFICATE") == 2
    der = client.get(
        f"/api/v1/certificates/{body['serial']}", headers={**auth(operator_token), "Accept": "application/pkix-cert"}
    )
    assert der.status_code == 200 and x509.load_der_x509_certificate(der.data) == cert
    # colons and upper case are accepted in the path
    colon = ":".join(body["serial"].upper()[i : i + 2] for i in range(0, len(body["serial"]), 2))
    assert client.get(f"/api/v1/certificates/{colon}", headers=auth(operator_token)).status_code == 200
    listing = client.get("/api/v1/certificates?state=issued&limit=5", headers=auth(operator_token))
    assert listing.status_code == 200 and body["serial"] in [i["serial"] for i in listing.json["items"]]


def test_issue_with_base64_der(client: FlaskClient, operator_token: str):
    der = x509.load_pem_x509_csr(csr_pem()).public_bytes(serialization.Encoding.DER)
    response = issue(client, operator_token, base64.b64encode(der).decode())
    assert response.status_code == 201, response.json


def test_ca_certificates_are_served(client: FlaskClient):
    for path, mime in (
        ("/ca/root.pem", "application/x-pem-file"),
        ("/ca/issuing.der", "application/pkix-cert"),
        ("/ca/chain.pem", "application/x-pem-file"),
        ("/ca/1.der", "application/pkix-cert"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == mime
    assert client.get("/ca/root.txt").status_code == 404
    assert client.get("/ca/999.der").json["code"] == "govpki.not_found"


def assert_problem(response, status: int, field: str | None = None):
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["status"] == status and body["detail"] and body["type"].startswith("urn:govpki:problem:")
    assert "Traceback" not in response.get_data(as_text=True)
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


BAD_BODIES = {
    "rsa-1024": (
        {"profile": "service-tls-server", "csr": csr_pem(rsa.generate_private_key(65537, 1024)).decode()},
        422,
        "csr.key",
    ),
    "no-san": ({"profile": "service-tls-server", "csr": csr_pem(names=[]).decode()}, 422, "csr.san"),
    "unknown-profile": ({"profile": "nope", "csr": csr_pem().decode()}, 404, "profile"),
    "ca-profile": ({"profile": "subordinate-ca", "csr": csr_pem().decode()}, 403, "profile"),
    "missing-csr": ({"profile": "service-tls-server"}, 422, "csr"),
    "extra-field": ({"profile": "service-tls-server", "csr": csr_pem().decode(), "serial": "01"}, 422, "serial"),
    "csr-not-base64": ({"profile": "service-tls-server", "csr": "@@@not base64@@@"}, 422, "csr"),
    "csr-is-a-number": ({"profile": "service-tls-server", "csr": 5}, 422, "csr"),
    "profile-too-long": ({"profile": "p" * 65, "csr": csr_pem().decode()}, 422, "profile"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies(client: FlaskClient, operator_token: str, services: Services, case: str):
    payload, status, field = BAD_BODIES[case]
    before = counts(services)
    response = client.post("/api/v1/certificates", json=payload, headers=auth(operator_token))
    assert_problem(response, status, field)
    assert counts(services) == before


def test_malformed_json_and_media_type(client: FlaskClient, operator_token: str, services: Services):
    before = counts(services)
    bad = client.post(
        "/api/v1/certificates", data="{not json", headers={**auth(operator_token), "Content-Type": "application/json"}
    )
    assert assert_problem(bad, 422, "body")["code"] == "api.malformed_json"
    form = client.post("/api/v1/certificates", data={"profile": "x"}, headers=auth(operator_token))
    assert assert_problem(form, 422, "body")["code"] == "api.media_type"
    big = client.post(
        "/api/v1/certificates",
        data=b"x" * (2 * 1024 * 1024),
        headers={**auth(operator_token), "Content-Type": "application/json"},
    )
    assert_problem(big, 413)
    assert counts(services) == before


def test_tokens(client: FlaskClient, operator_token: str, services: Services):
    before = counts(services)
    body = {"profile": "service-tls-server", "csr": csr_pem().decode()}
    missing = client.post("/api/v1/certificates", json=body)
    assert_problem(missing, 401, "authorization")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(client.post("/api/v1/certificates", json=body, headers=auth("gpk_nope_x")), 401, "authorization")
    assert_problem(client.post("/api/v1/certificates", json=body, headers=auth("hello")), 401, "authorization")
    assert_problem(
        client.post("/api/v1/certificates", json=body, headers={"Authorization": "Basic abc"}), 422, "authorization"
    )
    assert_problem(
        client.post("/api/v1/certificates", json=body, headers=auth(operator_token + "x")), 401, "authorization"
    )
    with services.sessions() as s:
        s.execute(update(ApiToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
        s.commit()
    expired = client.post("/api/v1/certificates", json=body, headers=auth(operator_token))
    assert "expired" in assert_problem(expired, 401, "authorization")["detail"]
    assert counts(services) == before


def test_lookup_problems(client: FlaskClient, operator_token: str):
    assert_problem(client.get("/api/v1/certificates/abcdef", headers=auth(operator_token)), 404, "serial")
    assert_problem(client.get("/api/v1/certificates/xyz!", headers=auth(operator_token)), 422, "serial")
    assert_problem(client.get("/api/v1/certificates?limit=abc", headers=auth(operator_token)), 422, "limit")
    assert_problem(client.get("/api/v1/certificates?limit=5000", headers=auth(operator_token)), 422, "limit")
    assert_problem(client.get("/api/v1/certificates?state=odd", headers=auth(operator_token)), 422, "state")
    assert_problem(client.get("/api/v1/nothing-here"), 404)
    assert_problem(client.delete("/api/v1/certificates"), 405)


def test_openapi_document_is_valid_and_complete(client: FlaskClient):
    from openapi_spec_validator import validate

    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json
    assert doc is not None
    validate(doc)
    assert {"/api/v1/certificates", "/api/v1/certificates/{serial}", "/api/v1/openapi.json"} <= set(doc["paths"])
    post = doc["paths"]["/api/v1/certificates"]["post"]
    schema = doc["components"]["schemas"]["IssueRequest"]
    assert set(schema["required"]) == {"profile", "csr"}
    assert post["security"] == [{"operatorToken": []}]
    # every Flask API route is documented
    routes = {
        (rule.rule.replace("<serial>", "{serial}"), method.lower())
        for rule in client.application.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented


@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@pytest.mark.parametrize("case", sorted(BAD_CSRS))
def test_every_bad_csr_through_the_api(client: FlaskClient, operator_token: str, services: Services, case: str):
    """The service-level bad-CSR cases, end to end: 422 problem naming the field, nothing stored."""
    profile, make, field = BAD_CSRS[case]
    data = make()
    csr = data.decode("latin-1") if data.startswith(b"-----") or not data else base64.b64encode(data).decode()
    before = counts(services)
    response = client.post("/api/v1/certificates", json={"profile": profile, "csr": csr}, headers=auth(operator_token))
    if not data:  # an empty string is refused by the request schema before the CSR check
        assert_problem(response, 422, "csr")
    else:
        assert_problem(response, 422, field)
    assert counts(services) == before
