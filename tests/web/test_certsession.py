"""A certificate session lasts only while its certificate is good: through Flask's test
client (the certificate header from the trusted front's address), revoking, holding or
expiring the certificate ends the session at the next request (audited
``authz:session:end``, a message on the sign-in page); a password session is unaffected;
OIDC tokens granted on a certificate session stop working too."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from joserfc import jwt
from sqlalchemy import select, update

from authz.certlogin import parse_trusted_proxies
from authz.oidc import OidcUser
from ca.models import CertificateRecord, RevocationReason
from govpki.audit import AuditEntry
from govpki.principal import SYSTEM
from tests.authz.certlogin_helpers import IssuedOfficial, header, issue_official, prepare_ra
from tests.helpers import initialised_portal
from tests.web.oidc_helpers import register_client, two_factor_client
from tests.web.test_oidc import authorize, basic, code_of, exchange, jwks
from tests.web.test_ui import Portal

_sequences = itertools.count(201)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("certsession")) as (app, services, password):
        services.certlogin.trusted_proxies = parse_trusted_proxies("127.0.0.1")  # the test client's address
        prepare_ra(services)
        yield Portal(app, services, password)


def official(portal: Portal) -> IssuedOfficial:
    return issue_official(portal.services, sequence=str(next(_sequences)))


def signed_in_official(portal: Portal, issued: IssuedOfficial) -> FlaskClient:
    client = portal.app.test_client()
    response = client.get(
        "/login/certificate", headers={"X-Client-Cert": header(issued.cert_der), "X-Client-Verify": "SUCCESS"}
    )
    assert response.status_code == 302 and response.headers["Location"] == "/me", response.get_data(as_text=True)
    assert client.get("/me").status_code == 200
    return client


def session_ends(portal: Portal, client: FlaskClient, issued: IssuedOfficial, reason: str, words: str) -> None:
    """The next request is refused: to the sign-in page saying why, the session gone, audited."""
    response = client.get("/me", headers={"Accept-Language": "en"})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    with client.session_transaction() as session:
        assert "_user_id" not in session and "amr" not in session and "cert_serial" not in session
    page = client.get("/login", headers={"Accept-Language": "en"})
    assert words in page.get_data(as_text=True)
    again = client.get("/me")
    assert again.status_code == 302 and again.headers["Location"].startswith("/login")  # not signed in any more
    with portal.services.sessions() as db:
        entry = db.scalar(
            select(AuditEntry)
            .where(AuditEntry.action == "authz:session:end", AuditEntry.object_id == str(issued.official_id))
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    assert entry is not None and entry.outcome == "denied"
    assert json.loads(entry.details or "{}") == {"method": "certificate", "serial": issued.serial, "reason": reason}


def test_revocation_ends_the_session(portal: Portal) -> None:
    issued = official(portal)
    client = signed_in_official(portal, issued)
    with portal.services.sessions() as db:
        portal.services.revocation.revoke(db, SYSTEM, issued.serial, reason=RevocationReason.KEY_COMPROMISE)
        db.commit()
    session_ends(portal, client, issued, "revoked", "has been revoked or suspended")


def test_hold_ends_the_session(portal: Portal) -> None:
    issued = official(portal)
    client = signed_in_official(portal, issued)
    with portal.services.sessions() as db:
        portal.services.revocation.hold(db, SYSTEM, issued.serial)
        db.commit()
    session_ends(portal, client, issued, "on_hold", "has been revoked or suspended")


def test_expiry_ends_the_session(portal: Portal) -> None:
    issued = official(portal)
    client = signed_in_official(portal, issued)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with portal.services.sessions() as db:  # as if the certificate's end of validity had come
        db.execute(update(CertificateRecord).where(CertificateRecord.serial == issued.serial).values(not_after=past))
        db.commit()
    session_ends(portal, client, issued, "expired", "has expired")


def test_message_in_chinese(portal: Portal) -> None:
    issued = official(portal)
    client = signed_in_official(portal, issued)
    with portal.services.sessions() as db:
        portal.services.revocation.hold(db, SYSTEM, issued.serial)
        db.commit()
    assert client.get("/me", headers={"Accept-Language": "zh-CN"}).headers["Location"] == "/login"
    page = client.get("/login", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "您用于登录的证书已被撤销或暂停" in page


def test_another_officials_revocation_and_password_sessions_are_unaffected(portal: Portal) -> None:
    kept, other = official(portal), official(portal)
    official_client = signed_in_official(portal, kept)
    staff_client, _username = two_factor_client(portal)
    with portal.services.sessions() as db:
        portal.services.revocation.revoke(db, SYSTEM, other.serial, reason=RevocationReason.KEY_COMPROMISE)
        db.commit()
    assert official_client.get("/me").status_code == 200
    assert staff_client.get("/dashboard").status_code == 200


def test_oidc_tokens_of_a_certificate_session_stop_with_the_certificate(portal: Portal) -> None:
    """Tokens whose grant was made on a certificate session (their user claims name the
    certificate) are refused once it is revoked: refresh (invalid_grant), introspection
    (inactive) and userinfo (invalid_token); a password session's tokens live on (an official's
    password sign-in has its own rules: tests/web/test_official_signin.py)."""
    issued = official(portal)
    services = portal.services
    client_id, secret = register_client(portal, f"certsession-rp-{issued.official_id}")
    assert secret is not None
    provider = services.oidc
    tokens = {}
    with services.sessions() as db:
        client = provider.client(db, client_id)
        assert client is not None
        # the official's certificate session, and a staff account's password session
        for name, subject, serial, amr, kind in (
            ("cert", str(issued.official_id), issued.serial, ("swk",), "official"),
            ("pwd", "secadmin", None, ("pwd", "otp"), "account"),
        ):
            user = OidcUser(
                subject=subject,
                name="张三",
                prefecture="6501",
                department="财政局",
                amr=amr,
                auth_time=int(dt.datetime.now(dt.UTC).timestamp()),
                cert_serial=serial,
                kind=kind,
            )
            token = provider.new_tokens(db, client, user, "openid profile offline_access", include_refresh_token=True)
            provider.save_tokens(db, token, client, user)
            tokens[name] = token
        db.commit()
    web = portal.app.test_client()

    def introspect(token: str) -> bool:
        response = web.post("/oauth/introspect", data={"token": token}, headers=basic(client_id, secret))
        assert response.status_code == 200, response.get_data(as_text=True)
        return bool(response.get_json()["active"])

    def userinfo(token: str) -> int:
        return web.get("/oauth/userinfo", headers={"Authorization": f"Bearer {token}"}).status_code

    def refresh(token: str) -> int:
        form = {"grant_type": "refresh_token", "refresh_token": token}
        return web.post("/oauth/token", data=form, headers=basic(client_id, secret)).status_code

    assert introspect(tokens["cert"]["access_token"]) and introspect(tokens["cert"]["refresh_token"])
    assert userinfo(tokens["cert"]["access_token"]) == 200
    with services.sessions() as db:
        services.revocation.revoke(db, SYSTEM, issued.serial, reason=RevocationReason.KEY_COMPROMISE)
        db.commit()
    assert not introspect(tokens["cert"]["access_token"]) and not introspect(tokens["cert"]["refresh_token"])
    refused = web.get("/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['cert']['access_token']}"})
    assert refused.status_code == 401 and "no longer valid" in refused.get_json()["error_description"]
    response = web.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["cert"]["refresh_token"]},
        headers=basic(client_id, secret),
    )
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    # a password session's tokens at the same client are not tied to the certificate
    assert introspect(tokens["pwd"]["access_token"]) and userinfo(tokens["pwd"]["access_token"]) == 200
    assert refresh(tokens["pwd"]["refresh_token"]) == 200


def test_an_official_signs_in_to_an_application_with_their_certificate(portal: Portal) -> None:
    """Single sign-on for officials: certificate sign-in, then the authorization code flow;
    the ID token names the official (sub: the official's id), amr ["swk"], the certificate's
    serial and the registered prefecture and department; with nobody signed in, the sign-in
    page offers the certificate sign-in that comes back to the same request."""
    issued = official(portal)
    client_id, secret = register_client(portal, f"sso-{issued.serial[:8]}")
    anonymous = portal.app.test_client()
    to_login = authorize(anonymous, client_id)
    assert to_login.status_code == 302 and to_login.headers["Location"].startswith("/login")
    login_page = anonymous.get(to_login.headers["Location"]).get_data(as_text=True)
    assert "/login/certificate?next=/oauth/authorize" in login_page.replace("%2F", "/")
    client = signed_in_official(portal, issued)
    response = exchange(portal, client_id, secret, code_of(authorize(client, client_id)))
    assert response.status_code == 200, response.get_data(as_text=True)
    claims = jwt.decode(response.get_json()["id_token"], jwks(portal), algorithms=["ES256"]).claims
    with portal.services.sessions() as db:
        record = db.scalar(select(CertificateRecord).where(CertificateRecord.serial == issued.serial))
        assert record is not None
    assert claims["sub"] == str(issued.official_id) and claims["amr"] == ["swk"]
    assert claims["cert_serial"] == issued.serial and claims["aud"] == client_id
    assert claims["prefecture"] and claims["name"] and claims["department"] == "财政局"
    # prompt=none with the certificate session: a code, no page
    quiet = authorize(client, client_id, prompt="none")
    assert code_of(quiet)
