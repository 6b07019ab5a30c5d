"""Officials' second way in through the portal: set up in a certificate session (the
certificate through the trusted front's header), then sign in with sign-in name, password
and TOTP code at /login; the staff lock-out (one namespace, one rule); the OIDC flow on such
a session (amr pwd otp, no cert_serial); the RA officer's reset; stale forms."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from joserfc import jwt
from sqlalchemy import func, select

from authz.certlogin import parse_trusted_proxies
from authz.models import SignInFailure
from authz.official_models import OfficialCredential
from ca.models import RevocationReason
from govpki.audit import AuditEntry
from govpki.principal import SYSTEM, Role
from tests.authz.certlogin_helpers import IssuedOfficial, header, issue_official, prepare_ra
from tests.helpers import initialised_portal, totp_code, totp_secret_on
from tests.web.oidc_helpers import register_client
from tests.web.test_oidc import authorize, basic, code_of, exchange, introspect, jwks, userinfo
from tests.web.test_ra_portal import staff
from tests.web.test_ui import Portal, field_errors, new_account, post_form, sign_in, text

PASSWORD = "Bogda-Peak-5445m"
_sequences = itertools.count(501)
_names = itertools.count(1)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("official-signin")) as (app, services, password):
        services.certlogin.trusted_proxies = parse_trusted_proxies("127.0.0.1")  # the test client's address
        prepare_ra(services)
        yield Portal(app, services, password)


def official(portal: Portal) -> IssuedOfficial:
    return issue_official(portal.services, sequence=str(next(_sequences)))


def name() -> str:
    return f"official.{next(_names)}"


def certificate_client(portal: Portal, issued: IssuedOfficial) -> FlaskClient:
    client = portal.app.test_client()
    response = client.get(
        "/login/certificate", headers={"X-Client-Cert": header(issued.cert_der), "X-Client-Verify": "SUCCESS"}
    )
    assert response.status_code == 302, text(response)
    return client


def set_up(portal: Portal, issued: IssuedOfficial, login_name: str, password: str = PASSWORD) -> str:
    """The official, signed in with the certificate, sets up password sign-in; the TOTP secret."""
    client = certificate_client(portal, issued)
    assert "/me/password-sign-in" in text(client.get("/me"))
    step = post_form(
        client,
        "/me/password-sign-in",
        {"username": login_name, "new_password": password, "repeat_password": password},
    )
    assert step.status_code == 302 and step.headers["Location"] == "/me/password-sign-in/totp", text(step)
    page = client.get("/me/password-sign-in/totp")
    assert page.status_code == 200
    secret = totp_secret_on(text(page))
    qr = client.get("/me/password-sign-in/qr.svg")
    assert qr.status_code == 200 and qr.mimetype == "image/svg+xml"
    assert secret not in qr.get_data(as_text=True)  # the URI is in the picture only, not in clear text
    done = post_form(client, "/me/password-sign-in/totp", {"code": totp_code(secret)})
    assert done.status_code == 302, text(done)
    assert login_name in text(client.get("/me/password-sign-in"))
    return secret


def password_client(portal: Portal, login_name: str, code: str, password: str = PASSWORD) -> FlaskClient:
    client = portal.app.test_client()
    step = sign_in(client, login_name, password)
    assert step.status_code == 302 and step.headers["Location"] == "/login/official-code", text(step)
    done = post_form(client, "/login/official-code", {"code": code})
    assert done.status_code == 302 and done.headers["Location"] == "/me", text(done)
    return client


def credential(portal: Portal, official_id: int) -> OfficialCredential | None:
    with portal.services.sessions() as db:
        found = db.scalar(select(OfficialCredential).where(OfficialCredential.official_id == official_id))
        if found is not None:
            db.expunge(found)
        return found


def last_entry(portal: Portal, action: str, object_id: str) -> AuditEntry:
    with portal.services.sessions() as db:
        entry = db.scalar(
            select(AuditEntry)
            .where(AuditEntry.action == action, AuditEntry.object_id == object_id)
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    assert entry is not None, action
    return entry


def test_set_up_then_sign_in_with_password_and_code(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    stored = credential(portal, issued.official_id)
    assert stored is not None and stored.enabled_at is not None and stored.set_up_with == issued.serial
    assert secret.encode() not in stored.totp_secret and PASSWORD not in stored.password_hash
    assert stored.password_hash.startswith("$argon2id$")
    client = password_client(portal, login_name, totp_code(secret, 1))
    me = client.get("/me", headers={"Accept-Language": "en"})
    assert me.status_code == 200
    body = text(me)
    assert 'id="signed-in-password"' in body and 'id="signed-in-serial"' not in body and "财政局" in body
    with client.session_transaction() as session:
        assert session["amr"] == ["pwd", "otp"] and "cert_serial" not in session
        assert session["_user_id"] == f"o:{issued.official_id}"
    entry = last_entry(portal, "authz:session:sign_in", str(issued.official_id))
    details = json.loads(entry.details or "{}")
    assert (
        details["method"] == "password"
        and details["amr"] == ["pwd", "otp"]
        and entry.actor == (f"official:{issued.official_id}")
    )
    for action in ("authz:official:signin_set_up", "authz:official:signin_enable"):
        assert last_entry(portal, action, str(issued.official_id)).outcome == "success"
    assert client.get("/dashboard").status_code == 403  # staff pages are still not for officials


def test_wrong_password_unknown_name_and_replayed_code(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    client = portal.app.test_client()
    wrong = post_form(client, "/login", {"username": login_name, "password": "not-the-password-1"})
    unknown = post_form(client, "/login", {"username": "nobody.here", "password": "not-the-password-1"})
    for page in (wrong, unknown):
        assert page.status_code == 200 and "用户名或密码错误。" in text(page)
    code = totp_code(secret, 1)
    password_client(portal, login_name, code)
    again = portal.app.test_client()
    assert sign_in(again, login_name, PASSWORD).headers["Location"] == "/login/official-code"
    token = post_form(again, "/login/official-code", {"code": code})
    assert token.status_code == 200 and "/login/official-code" in text(token)
    with again.session_transaction() as session:
        assert "_user_id" not in session
    with portal.services.sessions() as db:
        failures = db.scalar(
            select(func.count()).select_from(SignInFailure).where(SignInFailure.username == login_name)
        )
    assert failures == 1  # the replayed code (the sign-in between cleared the wrong password's)


def test_five_failures_lock_the_name_with_the_staff_rule(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    client = portal.app.test_client()
    for _ in range(portal.services.accounts.settings.max_failures):
        post_form(client, "/login", {"username": login_name, "password": "wrong-password-123"})
    with portal.services.sessions() as db:
        assert portal.services.accounts.locked_until(db, login_name) is not None  # the staff lock, by name
    locked = client.post(
        "/login",
        data={"username": login_name, "password": PASSWORD, "csrf_token": _token(client)},
        headers={"Accept-Language": "en"},
    )
    assert "Too many failed sign-ins" in text(locked)
    with client.session_transaction() as session:
        assert "pending_official_sign_in" not in session
    with portal.services.sessions() as db:  # a security administrator unlocks it as a staff name
        portal.services.accounts.unlock(db, SYSTEM, login_name)
        db.commit()
    password_client(portal, login_name, totp_code(secret, 1))
    assert last_entry(portal, "authz:account:lock", login_name).outcome == "success"


def _token(client: FlaskClient) -> str:
    from tests.web.test_ui import csrf

    return csrf(client.get("/login"))


def test_a_staff_user_name_is_taken_and_a_weak_password_refused_in_chinese(portal: Portal) -> None:
    issued = official(portal)
    staff_name, _password = new_account(portal, Role.CA_OPERATOR)
    client = certificate_client(portal, issued)
    taken = post_form(
        client, "/me/password-sign-in", {"username": staff_name, "new_password": PASSWORD, "repeat_password": PASSWORD}
    )
    assert taken.status_code == 409
    assert field_errors(text(taken), "username") == [f"登录名 {staff_name} 已被占用。"]
    weak = post_form(
        client, "/me/password-sign-in", {"username": name(), "new_password": "short", "repeat_password": "short"}
    )
    assert weak.status_code == 422
    assert field_errors(text(weak), "new_password") == ["长度至少为 12 个字符。"]
    assert credential(portal, issued.official_id) is None
    # and the other way round: a staff account may not take an official's sign-in name
    other = official(portal)
    login_name = name()
    set_up(portal, other, login_name)
    with portal.services.sessions() as db:
        from govpki.errors import ConflictError

        with pytest.raises(ConflictError):
            portal.services.accounts.create(
                db, SYSTEM, username=login_name, display_name="x", role=Role.CA_OPERATOR, password=PASSWORD
            )


def test_set_up_needs_a_certificate_session(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    client = password_client(portal, login_name, totp_code(secret, 1))
    page = text(client.get("/me/password-sign-in"))
    assert 'name="username"' not in page  # on already: no set-up form; the password can be changed
    refused = post_form(
        client,
        "/me/password-sign-in",
        {"username": name(), "new_password": PASSWORD, "repeat_password": PASSWORD},
    )
    assert refused.status_code in (403, 409)
    changed = post_form(
        client,
        "/me/password-sign-in/password",
        {"current_password": PASSWORD, "new_password": "Kanas-Lake-1374m", "repeat_password": "Kanas-Lake-1374m"},
        form_page="/me/password-sign-in",
    )
    assert changed.status_code == 302, text(changed)
    assert last_entry(portal, "authz:official:change_password", str(issued.official_id)).outcome == "success"


def test_an_official_signs_in_to_an_application_with_password_and_code(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    client = password_client(portal, login_name, totp_code(secret, 1))
    client_id, client_secret = register_client(portal, f"pwd-sso-{issued.official_id}")
    response = exchange(portal, client_id, client_secret, code_of(authorize(client, client_id)))
    assert response.status_code == 200, text(response)
    claims = jwt.decode(response.get_json()["id_token"], jwks(portal), algorithms=["ES256"]).claims
    assert claims["sub"] == str(issued.official_id) and claims["amr"] == ["pwd", "otp"]
    assert "cert_serial" not in claims and claims["department"] == "财政局"


def test_revocation_keeps_the_fallback_but_key_compromise_of_the_set_up_certificate_voids_it(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    session_client = password_client(portal, login_name, totp_code(secret, 1))
    with portal.services.sessions() as db:
        portal.services.revocation.revoke(db, SYSTEM, issued.serial, reason=RevocationReason.AFFILIATION_CHANGED)
        db.commit()
    assert session_client.get("/me").status_code == 200  # the password session is the fallback: it goes on
    assert sign_in(portal.app.test_client(), login_name, PASSWORD).headers["Location"] == "/login/official-code"
    other = official(portal)
    other_name = name()
    set_up(portal, other, other_name)
    with portal.services.sessions() as db:
        portal.services.revocation.revoke(db, SYSTEM, other.serial, reason=RevocationReason.KEY_COMPROMISE)
        db.commit()
    refused = sign_in(portal.app.test_client(), other_name, PASSWORD)
    assert refused.status_code == 200 and "密钥泄露" in text(refused)


def test_an_ra_officer_resets_the_sign_in_and_its_sessions_end(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    session_client = password_client(portal, login_name, totp_code(secret, 1))
    services = portal.services
    path = f"/ra/officials/{issued.official_id}/password-sign-in/reset"
    page = f"/ra/officials/{issued.official_id}"
    other_officer = staff(portal.app, services, Role.RA_OFFICER, "650200")
    assert post_form(other_officer, path, {}, form_page="/ra/officials").status_code == 404
    clerk = staff(portal.app, services, Role.RA_CLERK, "650100")
    assert post_form(clerk, path, {}, form_page=page).status_code == 403
    officer = staff(portal.app, services, Role.RA_OFFICER, "650100")
    assert path in text(officer.get(page))
    stale = officer.post(path, data={"csrf_token": "stale"})
    assert stale.status_code == 400 and credential(portal, issued.official_id) is not None
    done = post_form(officer, path, {}, form_page=page)
    assert done.status_code == 303, text(done)
    assert credential(portal, issued.official_id) is None
    entry = last_entry(portal, "authz:official:signin_reset", str(issued.official_id))
    assert json.loads(entry.details or "{}")["login_name"] == login_name and entry.actor.startswith("account:")
    ended = session_client.get("/me")
    assert ended.status_code == 302 and ended.headers["Location"] == "/login"
    refused = sign_in(portal.app.test_client(), login_name, PASSWORD)
    assert refused.status_code == 200 and "用户名或密码错误。" in text(refused)


def test_turning_off_needs_a_fresh_form(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    set_up(portal, issued, login_name)
    client = certificate_client(portal, issued)
    stale = client.post("/me/password-sign-in/off", data={"csrf_token": "stale"})
    assert stale.status_code == 400 and credential(portal, issued.official_id) is not None
    done = post_form(client, "/me/password-sign-in/off", {}, form_page="/me/password-sign-in")
    assert done.status_code == 302 and credential(portal, issued.official_id) is None
    assert last_entry(portal, "authz:official:signin_disable", str(issued.official_id)).outcome == "success"


def _tokens_of(portal: Portal, client: FlaskClient, app_name: str) -> tuple[str, str | None, dict[str, str]]:
    client_id, client_secret = register_client(portal, app_name)
    response = exchange(portal, client_id, client_secret, code_of(authorize(client, client_id)))
    assert response.status_code == 200, text(response)
    return client_id, client_secret, response.get_json()


def _refresh(portal: Portal, client_id: str, client_secret: str | None, token: str) -> int:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    return portal.app.test_client().post("/oauth/token", data=form, headers=basic(client_id, client_secret)).status_code


@pytest.mark.parametrize("how", ["key_compromise", "ra_reset", "turned_off"])
def test_the_session_and_its_application_tokens_end_with_the_password_sign_in(portal: Portal, how: str) -> None:
    """Key compromise of the set-up certificate, an RA reset, or the official turning it off:
    the password session ends at its next request, and the tokens applications were given
    on it are refused at refresh, userinfo and introspection (as for a revoked certificate's)."""
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    session_client = password_client(portal, login_name, totp_code(secret, 1))
    client_id, client_secret, tokens = _tokens_of(
        portal, session_client, f"pwd-end-{how.replace('_', '-')}-{issued.official_id}"
    )
    assert userinfo(portal, tokens["access_token"]).status_code == 200
    if how == "key_compromise":
        with portal.services.sessions() as db:
            portal.services.revocation.revoke(db, SYSTEM, issued.serial, reason=RevocationReason.KEY_COMPROMISE)
            db.commit()
    elif how == "ra_reset":
        officer = staff(portal.app, portal.services, Role.RA_OFFICER, "650100")
        page = f"/ra/officials/{issued.official_id}"
        assert post_form(officer, f"{page}/password-sign-in/reset", {}, form_page=page).status_code == 303
    else:
        cert_client = certificate_client(portal, issued)
        done = post_form(cert_client, "/me/password-sign-in/off", {}, form_page="/me/password-sign-in")
        assert done.status_code in (302, 303), text(done)
    ended = session_client.get("/me")
    assert ended.status_code == 302 and ended.headers["Location"] == "/login"
    assert userinfo(portal, tokens["access_token"]).status_code == 401
    assert _refresh(portal, client_id, client_secret, tokens["refresh_token"]) == 400
    assert introspect(portal, client_id, client_secret, tokens["access_token"])["active"] is False


def test_an_unaffected_password_sign_in_keeps_its_tokens(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    session_client = password_client(portal, login_name, totp_code(secret, 1))
    client_id, client_secret, tokens = _tokens_of(portal, session_client, f"pwd-keep-{issued.official_id}")
    with portal.services.sessions() as db:  # revoked, but not for key compromise: the fallback stays
        portal.services.revocation.revoke(db, SYSTEM, issued.serial, reason=RevocationReason.AFFILIATION_CHANGED)
        db.commit()
    assert userinfo(portal, tokens["access_token"]).status_code == 200
    assert _refresh(portal, client_id, client_secret, tokens["refresh_token"]) == 200


def test_refusals_of_the_set_up_pages_are_in_chinese(portal: Portal) -> None:
    issued = official(portal)
    login_name = name()
    secret = set_up(portal, issued, login_name)
    session_client = password_client(portal, login_name, totp_code(secret, 1))
    form = {"username": name(), "new_password": PASSWORD, "repeat_password": PASSWORD}
    refused = post_form(session_client, "/me/password-sign-in", form)
    assert refused.status_code == 403 and "请在使用证书登录后设置密码登录。" in text(refused)
    again = session_client.get("/me/password-sign-in/totp")  # already on (the back button)
    assert again.status_code == 409 and "密码登录已经设置；如需重新设置，请先将其关闭。" in text(again)
    cert_client = certificate_client(portal, issued)
    assert post_form(cert_client, "/me/password-sign-in", form).status_code == 409
    assert post_form(cert_client, "/me/password-sign-in/off", {}, form_page="/me/password-sign-in").status_code in (
        302,
        303,
    )
    twice = post_form(cert_client, "/me/password-sign-in/off", {}, form_page="/me/password-sign-in")
    assert twice.status_code == 404 and "尚未设置密码登录" in text(twice)
    change = {"current_password": PASSWORD, "new_password": "Kanas-Lake-1374m", "repeat_password": "Kanas-Lake-1374m"}
    gone = post_form(cert_client, "/me/password-sign-in/password", change, form_page="/me/password-sign-in")
    assert gone.status_code == 404 and "尚未设置密码登录" in text(gone)
    for page in (refused, again, twice, gone):
        assert "未通过校验" not in text(page)
