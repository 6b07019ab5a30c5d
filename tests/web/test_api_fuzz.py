"""Property: whatever a client sends, the API answers with a 4xx problem document,
never a 500, and stores nothing."""

from __future__ import annotations

import json

from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.web.test_api import auth, counts
from web.container import Services

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _is_problem(response):
    return 400 <= response.status_code < 500 and response.mimetype == "application/problem+json"


@FUZZ
@given(body=JSON | st.fixed_dictionaries({"profile": JSON, "csr": JSON}))
def test_any_json_body(client: FlaskClient, operator_token: str, services: Services, body: object):
    before = counts(services)
    response = client.post(
        "/api/v1/certificates",
        data=json.dumps(body),
        headers={**auth(operator_token), "Content-Type": "application/json"},
    )
    assert _is_problem(response), (response.status_code, response.data[:300])
    assert counts(services) == before


@FUZZ
@given(raw=st.binary(max_size=300), profile=st.sampled_from(["service-tls-server", "official-signing", "x"]))
def test_any_csr_text(client: FlaskClient, operator_token: str, services: Services, raw: bytes, profile: str):
    before = counts(services)
    csr = raw.decode("latin-1")
    response = client.post("/api/v1/certificates", json={"profile": profile, "csr": csr}, headers=auth(operator_token))
    assert _is_problem(response), (response.status_code, response.data[:300])
    assert counts(services) == before


@FUZZ
@given(
    serial=st.text(min_size=1, max_size=80).filter(lambda s: "/" not in s and "?" not in s and "#" not in s),
    accept=st.sampled_from(["application/json", "application/pkix-cert", "text/html", "*/*", "x/y;q=0.1"]),
)
def test_any_serial_lookup(client: FlaskClient, operator_token: str, serial: str, accept: str):
    response = client.get(f"/api/v1/certificates/{serial}", headers={**auth(operator_token), "Accept": accept})
    assert _is_problem(response), (response.status_code, response.data[:300])


@FUZZ
@given(header=st.text(max_size=200).filter(lambda s: "\n" not in s and "\r" not in s))
def test_any_authorization_header(client: FlaskClient, header: str):
    try:
        response = client.get("/api/v1/certificates", headers={"Authorization": header})
    except ValueError:
        return  # werkzeug refuses to send it at all
    assert _is_problem(response), (response.status_code, response.data[:300])


@FUZZ
@given(
    body=JSON | st.fixed_dictionaries({"reason": JSON, "invalidity_date": JSON, "ca_id": JSON}),
    action=st.sampled_from(["revoke", "hold", "release"]),
)
def test_any_revocation_body(client: FlaskClient, operator_token: str, services: Services, body: object, action: str):
    """Against a serial nobody has: every answer is a 4xx problem and nothing changes."""
    before = counts(services)
    response = client.post(
        f"/api/v1/certificates/7a3f9c/{action}",
        data=json.dumps(body),
        headers={**auth(operator_token), "Content-Type": "application/json"},
    )
    assert _is_problem(response), (response.status_code, response.data[:300])
    assert counts(services) == before
