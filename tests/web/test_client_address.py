"""The client's address behind the trusted TLS front (web.client_address): audit records
and lock-outs name the address nginx reports in X-Real-IP when (and only when) the request
comes from an address in GOVPKI_TRUSTED_PROXIES; whether certificate headers are believed
is still decided on the peer's address."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from authz.certlogin import parse_trusted_proxies
from authz.models import SignInFailure
from govpki.audit import AuditEntry
from tests.authz.certlogin_helpers import header, issue_official, prepare_ra
from web.app import create_app
from web.client_address import reported_address
from web.container import Services

FRONT = "127.0.0.1"
CLIENT = "203.0.113.7"
STRANGER = "192.0.2.10"


@pytest.mark.parametrize(
    ("peer", "reported", "expected"),
    [
        (FRONT, CLIENT, CLIENT),  # the front reports the client
        (FRONT, " 2001:DB8::7 ", "2001:db8::7"),  # normalised
        ("::ffff:127.0.0.1", CLIENT, CLIENT),  # the front over IPv6 (mapped)
        (STRANGER, CLIENT, STRANGER),  # from a peer that is not the front: ignored
        (FRONT, None, FRONT),  # the front said nothing: the peer
        (FRONT, "", FRONT),
        (FRONT, f"{CLIENT}, 10.0.0.1", FRONT),  # malformed: a list
        (FRONT, "client.example.gov.cn", FRONT),  # malformed: a name
        (FRONT, "203.0.113.7:4711", FRONT),  # malformed: with a port
        (FRONT, "1" * 80, FRONT),
        (None, CLIENT, "unknown"),
    ],
)
def test_reported_address(peer: str | None, reported: str | None, expected: str):
    assert reported_address(peer, reported, parse_trusted_proxies(f"{FRONT},10.9.0.0/16")) == expected


def test_no_trusted_proxies_no_reported_address():
    assert reported_address(FRONT, CLIENT, ()) == FRONT


@pytest.fixture
def app(bare_services: Services) -> Iterator[Flask]:
    bare_services.certlogin.trusted_proxies = parse_trusted_proxies(FRONT)
    yield create_app(bare_services.config, services=bare_services)


def last_entry(services: Services, action: str) -> AuditEntry:
    with services.sessions() as session:
        entry = session.scalar(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq.desc()).limit(1)
        )
    assert entry is not None
    return entry


@pytest.mark.parametrize(
    ("peer", "real_ip", "source"),
    [
        (FRONT, CLIENT, CLIENT),
        (STRANGER, CLIENT, STRANGER),
        (FRONT, "not-an-address", FRONT),
        (FRONT, None, FRONT),
    ],
)
def test_certificate_sign_in_refusal_names_the_client(
    app: Flask, bare_services: Services, peer: str, real_ip: str | None, source: str
):
    headers = {"X-Real-IP": real_ip} if real_ip is not None else {}
    response = app.test_client().get("/login/certificate", headers=headers, environ_base={"REMOTE_ADDR": peer})
    assert response.status_code == 401
    entry = last_entry(bare_services, "authz:session:sign_in_fail")
    assert entry.actor == f"anonymous:{source}"
    details = json.loads(entry.details or "{}")
    assert details["source"] == source and details["code"] == "authz.certlogin.no_certificate"


def test_the_trust_decision_is_the_peers(app: Flask, services: Services):
    """A certificate header from a stranger claiming to be behind the front is still ignored;
    from the front, the sign-in is audited with the client's address."""
    prepare_ra(services)
    official = issue_official(services)
    cert = {"X-Client-Cert": header(official.cert_der), "X-Client-Verify": "SUCCESS", "X-Real-IP": FRONT}
    client = app.test_client()
    refused = client.get("/login/certificate", headers=cert, environ_base={"REMOTE_ADDR": STRANGER})
    assert refused.status_code == 401 and 'data-code="authz.certlogin.untrusted_proxy"' in refused.get_data(True)
    entry = last_entry(services, "authz:session:sign_in_fail")
    assert json.loads(entry.details or "{}")["source"] == STRANGER
    cert["X-Real-IP"] = CLIENT
    done = client.get("/login/certificate", headers=cert, environ_base={"REMOTE_ADDR": FRONT})
    assert done.status_code == 302, done.get_data(True)
    entry = last_entry(services, "authz:session:sign_in")
    assert entry.actor == f"official:{official.official_id}"
    assert json.loads(entry.details or "{}")["source"] == CLIENT


_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def test_password_failures_and_the_lock_out_name_the_client(app: Flask, bare_services: Services):
    client = app.test_client()
    environ = {"REMOTE_ADDR": FRONT}
    page = client.get("/login", environ_base=environ).get_data(as_text=True)
    token = _CSRF.search(page)
    assert token is not None
    form = {"csrf_token": token.group(1), "username": "nobody", "password": "wrong-password-1"}
    response = client.post("/login", data=form, headers={"X-Real-IP": CLIENT}, environ_base=environ)
    assert response.status_code == 200
    entry = last_entry(bare_services, "authz:session:sign_in_fail")
    assert entry.actor == f"anonymous:{CLIENT}" and json.loads(entry.details or "{}")["source"] == CLIENT
    with bare_services.sessions() as session:
        assert session.scalars(select(SignInFailure.source)).all() == [CLIENT]
