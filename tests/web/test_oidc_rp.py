"""The sample relying party (examples/rp_app.py, authlib's Flask client) signs a staff
user in against the provider served for real on loopback (werkzeug server thread): its
back channel — discovery, token, JWKS, userinfo, refresh — is real HTTP; the user's
browser is the provider app's test client (the portal session: password and TOTP)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from examples.rp_app import create_rp
from govpki.principal import SYSTEM
from tests.helpers import fresh_database, make_config
from tests.web.oidc_helpers import register_client, two_factor_client
from tests.web.test_ui import Portal
from web.app import create_app
from web.bootstrap import initialize
from web.container import build_services

RP = "http://localhost"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Portal, str]]:
    folder = tmp_path_factory.mktemp("rp")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    databases = fresh_database(folder)
    config = make_config(folder / "inst", next(databases), GOVPKI_BASE_URL=base)
    services = build_services(config)
    server = None
    try:
        report = initialize(services)
        assert report.admin_password
        app = create_app(config, services=services)
        server = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield Portal(app, services, report.admin_password), base
    finally:
        if server is not None:
            server.shutdown()
        services.dispose()
        databases.close()


def _follow_to(browser: FlaskClient, location: str, base: str) -> str:
    """The browser at the provider: GET the provider URL, return where it redirects."""
    assert location.startswith(base + "/"), location
    parts = urlsplit(location)
    response = browser.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 302, response.get_data(as_text=True)
    return response.headers["Location"]


def test_sample_rp_signs_in_refreshes_introspects_revokes_and_logs_out(served: tuple[Portal, str]) -> None:
    portal, base = served
    browser, username = two_factor_client(portal)
    with portal.services.sessions() as s:
        portal.services.policy.set_subject(s, SYSTEM, username, prefecture="650200", department="信息中心")
        portal.services.policy.create_role(s, SYSTEM, "rp-demo", "editor")
        portal.services.policy.create_role(s, SYSTEM, "other-app", "admin")
        portal.services.policy.assign(s, SYSTEM, username, "rp-demo", "editor")
        portal.services.policy.assign(s, SYSTEM, username, "other-app", "admin")
        s.commit()
    client_id, secret = register_client(
        portal, "rp-demo", redirect_uris=[f"{RP}/callback"], post_logout=[f"{RP}/logged-out"]
    )
    assert secret is not None
    rp = create_rp(base, client_id, secret, RP).test_client()

    # sign in: RP → provider (signed-in portal user, PKCE S256) → RP callback (code exchanged over HTTP)
    start = rp.get("/login")
    assert start.status_code == 302
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"]
    callback = _follow_to(browser, start.headers["Location"], base)
    assert callback.startswith(f"{RP}/callback?code=")
    done = rp.get(callback[len(RP) :])
    assert done.status_code == 302, done.get_data(as_text=True)
    page = rp.get("/").get_data(as_text=True)
    assert 'id="claims"' in page and username in page

    claims = rp.get("/claims.json").get_json()
    assert claims["iss"] == base and claims["aud"] == client_id and claims["sub"] == username
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["roles"] == ["editor"]  # the roles for this client only
    assert claims["prefecture"] == "650200" and claims["department"] == "信息中心"
    assert "cert_serial" not in claims  # signed in with password and TOTP, not a certificate
    info = rp.get("/userinfo.json").get_json()
    assert info["sub"] == username and info["roles"] == ["editor"]

    # refresh (rotates the refresh token)
    with rp.session_transaction() as session:
        first = dict(session["token"])
    assert rp.post("/refresh").get_json() == {"refreshed": True}
    with rp.session_transaction() as session:
        tokens = dict(session["token"])
    assert tokens["refresh_token"] != first["refresh_token"] and tokens["access_token"] != first["access_token"]

    # introspection (RFC 7662) and revocation (RFC 7009), over HTTP with the client's credentials
    auth = (client_id, secret)
    live = requests.post(f"{base}/oauth/introspect", data={"token": tokens["access_token"]}, auth=auth, timeout=10)
    assert live.status_code == 200 and live.json()["active"] is True and live.json()["sub"] == username
    revoked = requests.post(f"{base}/oauth/revoke", data={"token": tokens["access_token"]}, auth=auth, timeout=10)
    assert revoked.status_code == 200
    gone = requests.post(f"{base}/oauth/introspect", data={"token": tokens["access_token"]}, auth=auth, timeout=10)
    assert gone.json() == {"active": False}
    assert (
        requests.get(
            f"{base}/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=10
        ).status_code
        == 401
    )

    # RP-initiated logout: back to the registered URI with the state, the portal session ended
    logout = rp.get("/logout")
    assert logout.status_code == 302
    back = _follow_to(browser, logout.headers["Location"], base)
    with rp.session_transaction() as session:
        state = session["logout_state"]
    assert back == f"{RP}/logged-out?state={state}"
    assert rp.get(back[len(RP) :]).status_code == 200
    assert rp.get("/claims.json").get_json() == {}
    assert browser.get("/dashboard").status_code == 302  # signed out at the provider too
