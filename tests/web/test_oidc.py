"""The OpenID Connect provider through Flask's test client: the code flow, and bad input
— each refused with an RFC-shaped error (or an error page at the authorization
endpoint) and nothing granted."""

from __future__ import annotations

import base64
import html
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import select
from werkzeug.test import TestResponse

from authz.oidc_models import OidcToken
from govpki.audit import AuditEntry
from govpki.errors import ForbiddenError, InvalidError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import initialised_portal
from tests.web.oidc_helpers import pkce, register_client, two_factor_client
from tests.web.test_ui import Portal
from web.oidc import page_message

REDIRECT = "https://rp.example.gov.cn/callback"
BYE = "https://rp.example.gov.cn/bye"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("oidc")) as (app, services, password):
        yield Portal(app, services, password)


@pytest.fixture(scope="module")
def user(portal: Portal) -> tuple[FlaskClient, str]:
    return two_factor_client(portal)


def _name() -> str:
    return f"rp-{next(_names)}"


def basic(client_id: str, secret: str | None) -> dict[str, str]:
    raw = f"{client_id}:{secret or ''}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def authorize(client: FlaskClient, client_id: str, **extra: str) -> TestResponse:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid profile offline_access",
        "state": "state-1",
        "nonce": f"nonce-{time.monotonic_ns()}",
        **extra,
    }
    return client.get("/oauth/authorize?" + urlencode(query))


def code_of(response: TestResponse) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == ["state-1"]
    return params["code"][0]


def exchange(portal: Portal, client_id: str, secret: str | None, code: str, **extra: str) -> TestResponse:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    headers = basic(client_id, secret) if secret else {}
    if not secret:
        form["client_id"] = client_id
    return portal.app.test_client().post("/oauth/token", data=form, headers=headers)


def signed_in_tokens(portal: Portal, user: tuple[FlaskClient, str], name: str | None = None) -> dict[str, Any]:
    client_id, secret = register_client(portal, name or _name())
    response = exchange(portal, client_id, secret, code_of(authorize(user[0], client_id)))
    assert response.status_code == 200, response.get_data(as_text=True)
    return {"client_id": client_id, "secret": secret, **response.get_json()}


def userinfo(portal: Portal, token: str) -> TestResponse:
    return portal.app.test_client().get("/oauth/userinfo", headers={"Authorization": f"Bearer {token}"})


def introspect(portal: Portal, client_id: str, secret: str | None, token: str) -> dict[str, Any]:
    response = portal.app.test_client().post(
        "/oauth/introspect", data={"token": token}, headers=basic(client_id, secret)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def jwks(portal: Portal) -> KeySet:
    return KeySet.import_key_set(portal.app.test_client().get("/oauth/jwks.json").get_json())


def sign_with_provider(portal: Portal, claims: dict[str, Any]) -> str:
    """A JWT signed by the provider's own key (to test claim checks apart from the signature)."""
    with portal.services.sessions() as s:
        token = portal.services.oidc.signer.sign(s, SYSTEM, claims, typ="at+jwt")
        s.commit()
    return token


# ----- the happy path ------------------------------------------------------------------


def test_discovery_names_every_endpoint_and_s256(portal: Portal) -> None:
    meta = portal.app.test_client().get("/.well-known/openid-configuration").get_json()
    base = portal.services.config.base_url
    assert meta["issuer"] == base
    for key, path in (
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("jwks_uri", "/oauth/jwks.json"),
        ("introspection_endpoint", "/oauth/introspect"),
        ("revocation_endpoint", "/oauth/revoke"),
        ("end_session_endpoint", "/oauth/logout"),
    ):
        assert meta[key] == base + path
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "ES256" in meta["id_token_signing_alg_values_supported"]


def test_code_flow_id_token_claims_roles_amr(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    name = _name()
    services = portal.services
    with services.sessions() as s:
        services.policy.set_subject(s, SYSTEM, user[1], prefecture="650100", department="档案处")
        services.policy.create_role(s, SYSTEM, name, "reader")
        services.policy.assign(s, SYSTEM, user[1], name, "reader")
        s.commit()
    tokens = signed_in_tokens(portal, user, name)
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    id_token = jwt.decode(tokens["id_token"], jwks(portal), algorithms=["ES256"])
    assert id_token.header["alg"] == "ES256" and id_token.header["kid"] in {k.kid for k in jwks(portal)}
    claims = id_token.claims
    assert claims["iss"] == services.config.base_url and claims["aud"] == tokens["client_id"]
    assert claims["sub"] == user[1] and claims["name"] == user[1]
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["roles"] == ["reader"]
    assert claims["prefecture"] == "650100" and claims["department"] == "档案处"
    assert claims["nonce"].startswith("nonce-") and claims["exp"] > claims["iat"] and claims["auth_time"] > 0
    info = userinfo(portal, tokens["access_token"])
    assert info.status_code == 200 and info.get_json()["roles"] == ["reader"]
    # only hashes in the database
    with services.sessions() as s:
        row = s.scalars(select(OidcToken).order_by(OidcToken.id.desc())).first()
        assert row is not None and tokens["access_token"] not in (row.access_sha256, row.refresh_sha256)
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "authz:oidc_token:issue")).first()


def test_introspection_and_revocation(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    tokens = signed_in_tokens(portal, user)
    cid, secret = tokens["client_id"], tokens["secret"]
    live = introspect(portal, cid, secret, tokens["access_token"])
    assert live["active"] is True and live["sub"] == user[1] and live["client_id"] == cid
    assert introspect(portal, cid, secret, tokens["refresh_token"])["active"] is True
    done = portal.app.test_client().post(
        "/oauth/revoke", data={"token": tokens["refresh_token"]}, headers=basic(cid, secret)
    )
    assert done.status_code == 200
    assert introspect(portal, cid, secret, tokens["access_token"]) == {"active": False}
    assert userinfo(portal, tokens["access_token"]).status_code == 401


# ----- bad input -------------------------------------------------------------------------


def test_unknown_client_is_an_error_page_not_a_redirect(user: tuple[FlaskClient, str]) -> None:
    response = authorize(user[0], "app_doesnotexist")
    assert response.status_code == 400 and "Location" not in response.headers
    assert "invalid_client" in response.get_data(as_text=True)


def test_wrong_redirect_uri_is_an_error_page_not_a_redirect(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    client_id, _secret = register_client(portal, _name())
    for uri in ("https://evil.example.com/callback", REDIRECT + "/", REDIRECT + "?x=1"):
        response = authorize(user[0], client_id, redirect_uri=uri)
        assert response.status_code == 400 and "Location" not in response.headers
        assert "invalid_request" in response.get_data(as_text=True)


def test_error_pages_are_in_the_readers_language(portal: Portal) -> None:
    """The page names the situation in zh (default) or en, never authlib's English text;
    the OAuth error code stays on it as data."""
    client_id, _secret = register_client(portal, _name())
    browser = portal.app.test_client()
    english = ("does not exist on this server", "is not supported by client", "Missing '")

    def page(response: TestResponse) -> str:
        assert response.status_code == 400 and "Location" not in response.headers
        body = html.unescape(response.get_data(as_text=True))
        assert not any(words in body for words in english), body
        return body

    body = page(authorize(browser, "app_doesnotexist"))
    assert "此应用未在本系统注册，或已被停用。" in body and "(invalid_client)" in body
    body = page(authorize(browser, client_id, redirect_uri="https://evil.example.com/callback"))
    assert "返回地址 https://evil.example.com/callback 未为此应用注册" in body and "(invalid_request)" in body
    body = page(browser.get("/oauth/authorize?response_type=code&scope=openid"))
    assert "未说明是哪个应用（缺少 client_id）" in body and "(invalid_client)" in body
    body = page(
        browser.get(f"/oauth/authorize?response_type=token&client_id={client_id}&redirect_uri=https://x.example")
    )
    assert "(unsupported_response_type)" in body
    browser.get("/lang/en")
    body = page(authorize(browser, "app_doesnotexist"))
    assert "This application is not registered here, or it has been disabled. (invalid_client)" in body
    body = page(authorize(browser, client_id, redirect_uri="https://evil.example.com/callback"))
    assert "The return address https://evil.example.com/callback is not registered for this application" in body
    assert "(invalid_request)" in body and "请求" not in body


def test_error_page_messages_by_situation(portal: Portal) -> None:
    """Each situation authlib and the provider report has its own message; an unknown one a general message."""
    with portal.app.test_request_context("/oauth/authorize"):
        seen = {
            page_message("invalid_request", "PKCE is required for public clients: send code_challenge ..."),
            page_message("invalid_request", "Missing 'redirect_uri' in request."),
            page_message("invalid_request", "Multiple 'scope' in request."),
            page_message("invalid_scope", None),
            page_message("invalid_request", "something new"),
            page_message("server_error", "boom"),
        }
    assert len(seen) == 6
    assert all(m.endswith(("(invalid_request)", "(invalid_scope)", "(server_error)")) for m in seen)
    assert not any("boom" in m or "something new" in m for m in seen)


def test_not_signed_in_goes_to_the_sign_in_page(portal: Portal) -> None:
    client_id, _secret = register_client(portal, _name())
    response = authorize(portal.app.test_client(), client_id)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_replayed_code_is_refused_and_its_tokens_revoked(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    client_id, secret = register_client(portal, _name())
    code = code_of(authorize(user[0], client_id))
    first = exchange(portal, client_id, secret, code)
    assert first.status_code == 200
    access = first.get_json()["access_token"]
    assert userinfo(portal, access).status_code == 200
    again = exchange(portal, client_id, secret, code)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    assert "access_token" not in again.get_json()
    refused = userinfo(portal, access)
    assert refused.status_code == 401 and "revoked" in refused.get_json()["error_description"]
    with portal.services.sessions() as s:
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "authz:oidc_code:replay")).first()


def test_wrong_client_secret_and_code_of_another_client(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    client_id, secret = register_client(portal, _name())
    other_id, other_secret = register_client(portal, _name())
    code = code_of(authorize(user[0], client_id))
    bad = exchange(portal, client_id, "not-the-secret", code)
    assert bad.status_code == 401 and bad.get_json()["error"] == "invalid_client"
    stolen = exchange(portal, other_id, other_secret, code)
    assert stolen.status_code == 400 and stolen.get_json()["error"] == "invalid_grant"
    assert exchange(portal, client_id, secret, code).status_code == 200  # the code was not used up


def test_public_client_needs_pkce_s256(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    client_id, secret = register_client(portal, _name(), client_type="public")
    assert secret is None
    missing = authorize(user[0], client_id)
    assert missing.status_code == 302
    params = parse_qs(urlsplit(missing.headers["Location"]).query)
    assert params["error"] == ["invalid_request"] and "code" not in params
    verifier, challenge = pkce()
    plain = authorize(user[0], client_id, code_challenge=challenge, code_challenge_method="plain")
    assert parse_qs(urlsplit(plain.headers["Location"]).query)["error"] == ["invalid_request"]
    code = code_of(authorize(user[0], client_id, code_challenge=challenge, code_challenge_method="S256"))
    no_verifier = exchange(portal, client_id, None, code)
    assert no_verifier.status_code == 400 and no_verifier.get_json()["error"] == "invalid_request"
    mismatch = exchange(portal, client_id, None, code, code_verifier=pkce()[0])
    assert mismatch.status_code == 400 and mismatch.get_json()["error"] == "invalid_grant"
    good = exchange(portal, client_id, None, code, code_verifier=verifier)
    assert good.status_code == 200 and "id_token" in good.get_json()


def test_tampered_or_expired_tokens_at_userinfo_and_introspection(
    portal: Portal, user: tuple[FlaskClient, str]
) -> None:
    tokens = signed_in_tokens(portal, user)
    access, cid, secret = tokens["access_token"], tokens["client_id"], tokens["secret"]
    header, payload, signature = access.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    now = int(time.time())

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    foreign_key = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
    cases = {
        "signature": f"{header}.{b64({**claims, 'scope': 'openid profile admin'})}.{signature}",
        "foreign key": jwt.encode({"alg": "ES256", "kid": jwks(portal).keys[0].kid}, claims, foreign_key),
        "issuer": sign_with_provider(portal, {**claims, "iss": "https://evil.example.com"}),
        "expired": sign_with_provider(portal, {**claims, "iat": now - 7200, "exp": now - 3600}),
        "audience": sign_with_provider(portal, {**claims, "aud": "app_someoneelse"}),
        "garbage": "not.a.jwt",
    }
    for what, token in cases.items():
        response = userinfo(portal, token)
        assert response.status_code == 401, what
        assert response.get_json()["error"] == "invalid_token", what
        assert 'Bearer error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert introspect(portal, cid, secret, token) == {"active": False}, what
    assert "expired" in userinfo(portal, cases["expired"]).get_json()["error_description"]
    assert "issuer" in userinfo(portal, cases["issuer"]).get_json()["error_description"]
    assert "signature" in userinfo(portal, cases["signature"]).get_json()["error_description"]
    # another client may not learn about this client's token
    other_id, other_secret = register_client(portal, _name())
    assert introspect(portal, other_id, other_secret, access) == {"active": False}
    # introspection needs client authentication
    anonymous = portal.app.test_client().post("/oauth/introspect", data={"token": access})
    assert anonymous.status_code == 401 and anonymous.get_json()["error"] == "invalid_client"
    no_token = portal.app.test_client().get("/oauth/userinfo")
    assert no_token.status_code == 401 and no_token.get_json()["error"] == "invalid_request"
    assert userinfo(portal, access).status_code == 200  # the real one still works


def test_refresh_rotates_and_reuse_revokes_the_family(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    tokens = signed_in_tokens(portal, user)
    cid, secret = tokens["client_id"], tokens["secret"]

    def refresh(token: str) -> TestResponse:
        return portal.app.test_client().post(
            "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}, headers=basic(cid, secret)
        )

    second = refresh(tokens["refresh_token"])
    assert second.status_code == 200, second.get_data(as_text=True)
    new = second.get_json()
    assert new["refresh_token"] != tokens["refresh_token"] and userinfo(portal, new["access_token"]).status_code == 200
    reuse = refresh(tokens["refresh_token"])
    assert reuse.status_code == 400 and reuse.get_json()["error"] == "invalid_grant"
    assert userinfo(portal, new["access_token"]).status_code == 401  # the whole family is revoked
    assert refresh(new["refresh_token"]).status_code == 400
    unknown = refresh("no-such-refresh-token")
    assert unknown.status_code == 400 and unknown.get_json()["error"] == "invalid_grant"


def test_logout_redirects_only_to_a_registered_uri(portal: Portal) -> None:
    client, _username = two_factor_client(portal)
    tokens = signed_in_tokens(portal, (client, _username))
    foreign = client.get(
        "/oauth/logout?"
        + urlencode(
            {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://evil.example.com/", "state": "s"}
        )
    )
    assert foreign.status_code == 400 and "Location" not in foreign.headers
    assert client.get("/dashboard").status_code == 200  # still signed in: nothing done
    tampered = client.get(
        "/oauth/logout?"
        + urlencode({"id_token_hint": tokens["id_token"][:-4] + "AAAA", "post_logout_redirect_uri": BYE})
    )
    assert tampered.status_code == 400 and "Location" not in tampered.headers
    done = client.get(
        "/oauth/logout?"
        + urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE, "state": "s"})
    )
    assert done.status_code == 302 and done.headers["Location"] == BYE + "?state=s"
    assert client.get("/dashboard").status_code == 302  # signed out of the portal
    assert userinfo(portal, tokens["access_token"]).status_code == 401


def test_registration_bad_input(portal: Portal) -> None:
    services = portal.services
    cases: list[tuple[dict[str, Any], str]] = [
        ({"client_type": "public", "scopes": ["openid", "audit:write"]}, "scope"),
        ({"client_type": "public", "scopes": ["audit:write"]}, "scope"),
        ({"client_type": "secret"}, "client_type"),
        ({"redirect_uris": []}, "redirect_uri"),
        ({"redirect_uris": ["http://rp.example.gov.cn/cb"]}, "redirect_uri"),
        ({"redirect_uris": ["https://rp.example.gov.cn/cb#frag"]}, "redirect_uri"),
        ({"redirect_uris": ["/relative"]}, "redirect_uri"),
        ({"post_logout_redirect_uris": ["javascript:alert(1)"]}, "post_logout_redirect_uri"),
        ({"scopes": ["audit:write"], "redirect_uris": [REDIRECT]}, "redirect_uri"),
    ]
    for extra, field in cases:
        args: dict[str, Any] = {"scopes": ["openid"], "redirect_uris": [REDIRECT], **extra}
        with services.sessions() as s:
            with pytest.raises(InvalidError) as caught:
                services.applications.register(s, SYSTEM, name=_name(), **args)
            assert caught.value.field == field, extra
    clerk = Principal(PrincipalKind.ACCOUNT, "9", "clerk", frozenset({Role.RA_CLERK}), prefecture="650100")
    with services.sessions() as s, pytest.raises(ForbiddenError):
        services.applications.register(s, clerk, name=_name(), scopes=["openid"], redirect_uris=[REDIRECT])


def test_key_rotation_keeps_the_previous_key_in_the_jwks(portal: Portal, user: tuple[FlaskClient, str]) -> None:
    before = signed_in_tokens(portal, user)
    old_kids = {k.kid for k in jwks(portal)}
    with portal.services.sessions() as s:
        portal.services.oidc.rotate_key(s, SYSTEM)
        s.commit()
    kids = {k.kid for k in jwks(portal)}
    assert old_kids < kids and len(kids) == len(old_kids) + 1
    assert userinfo(portal, before["access_token"]).status_code == 200  # signed by the previous key
    after = signed_in_tokens(portal, user)
    header = json.loads(base64.urlsafe_b64decode(after["id_token"].split(".")[0] + "=="))
    assert header["kid"] in kids - old_kids
    clerk = Principal(PrincipalKind.ACCOUNT, "9", "clerk", frozenset({Role.RA_CLERK}), prefecture="650100")
    with portal.services.sessions() as s, pytest.raises(ForbiddenError):
        portal.services.oidc.rotate_key(s, clerk)
