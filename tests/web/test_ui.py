"""The web portal through Flask's test client, with CSRF protection switched on.

One instance (CA hierarchy, 14 RAs, the first security administrator) is made
per module; tests that need an account of their own create one, so they do
not depend on each other's order.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from authz.models import Account, ApiToken
from govpki.audit import AuditEntry
from govpki.principal import SYSTEM, Role
from tests.helpers import csr_pem, enrol_totp, initialised_portal, totp_code
from web.bootstrap import FIRST_ADMIN
from web.container import Services

NEW_PASSWORD = "Tianshan-Snow-2024"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_SECRET = re.compile(r"gpk_[0-9a-f]+_[A-Za-z0-9_-]+")
_numbers = itertools.count(1)
SECRETS: dict[str, str] = {}  # TOTP secrets of the accounts that enrolled, by user name


@dataclass
class Portal:
    app: Flask
    services: Services
    admin_password: str


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("ui")) as (app, services, password):
        yield Portal(app, services, password)


def csrf(page: TestResponse) -> str:
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, "the page has no CSRF token"
    return match.group(1)


def post_form(client: FlaskClient, path: str, data: dict[str, str], *, form_page: str | None = None) -> TestResponse:
    """POST like a browser: first GET the page with the form and take its CSRF token."""
    token = csrf(client.get(form_page or path))
    return client.post(path, data={"csrf_token": token, **data})


def sign_in(client: FlaskClient, username: str, password: str) -> TestResponse:
    return post_form(client, "/login", {"username": username, "password": password})


def new_account(
    portal: Portal, role: Role = Role.SECURITY_ADMIN, display_name: str | None = None, prefecture: str | None = None
) -> tuple[str, str]:
    username = f"user{next(_numbers)}"
    password = f"one-time-{username}-Xq7"
    with portal.services.sessions() as db:
        portal.services.accounts.create(
            db,
            SYSTEM,
            username=username,
            display_name=display_name or f"Tester {username}",
            role=role,
            password=password,
            prefecture=prefecture or ("650100" if role in (Role.RA_CLERK, Role.RA_OFFICER) else None),
        )
        db.commit()
    return username, password


def account(portal: Portal, username: str) -> Account:
    with portal.services.sessions() as db:
        found = db.scalar(select(Account).where(Account.username == username))
        assert found is not None
        db.expunge(found)
        return found


def signed_in(portal: Portal, role: Role = Role.SECURITY_ADMIN, display_name: str | None = None) -> FlaskClient:
    """A client of a new account that has already replaced its one-time password and enrolled TOTP."""
    return signed_in_as(portal, role, display_name)[0]


def signed_in_as(
    portal: Portal, role: Role = Role.SECURITY_ADMIN, display_name: str | None = None
) -> tuple[FlaskClient, str]:
    username, password = new_account(portal, role, display_name)
    client = portal.app.test_client()
    assert sign_in(client, username, password).headers["Location"] == "/password"
    changed = post_form(
        client,
        "/password",
        {"current_password": password, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD},
    )
    assert changed.status_code == 302, changed.get_data(as_text=True)
    assert changed.headers["Location"] == "/totp/enrol"
    SECRETS[username] = enrol_totp(client)
    return client, username


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def field_errors(page: str, field: str) -> list[str]:
    block = re.search(rf'<ul class="errors" id="{field}-errors">(.*?)</ul>', page, re.S)
    return re.findall(r"<li>(.*?)</li>", block.group(1), re.S) if block else []


# ----- the public page and languages --------------------------------------------------


def test_index_is_chinese_by_default_with_ca_and_api_links(portal: Portal) -> None:
    page = portal.app.test_client().get("/")
    assert page.status_code == 200
    body = text(page)
    assert '<html lang="zh-CN">' in body
    assert "电子政务外网 PKI 服务" in body
    assert "登录" in body
    for link in (
        "/ca/root.pem",
        "/ca/root.der",
        "/ca/issuing.pem",
        "/ca/issuing.der",
        "/ca/chain.pem",
        "/api/v1/openapi.json",
        "/login",
    ):
        assert f'href="{link}"' in body, link


def test_linked_ca_certificates_and_stylesheet_are_served(portal: Portal) -> None:
    client = portal.app.test_client()
    for link in ("/ca/root.pem", "/ca/issuing.der", "/ca/chain.pem", "/api/v1/openapi.json", "/static/govpki.css"):
        assert client.get(link).status_code == 200, link


def test_english_switch_sets_a_cookie_and_shows_english(portal: Portal) -> None:
    client = portal.app.test_client()
    switched = client.get("/lang/en?next=/login")
    assert switched.status_code == 302
    assert switched.headers["Location"] == "/login"
    body = text(client.get("/login"))
    assert '<html lang="en">' in body
    assert "User name" in body and "Password" in body
    assert "用户名" not in body
    assert "中文" in body  # the way back
    client.get("/lang/zh_CN")
    assert "用户名" in text(client.get("/login"))


def test_accept_language_is_used_unless_a_language_was_chosen(portal: Portal) -> None:
    client = portal.app.test_client()
    english = {"Accept-Language": "en-US,en;q=0.9"}
    assert "Government Extranet PKI Service" in text(client.get("/", headers=english))
    assert "电子政务外网 PKI 服务" in text(client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}))
    assert "电子政务外网 PKI 服务" in text(client.get("/", headers={"Accept-Language": "fr-FR"}))
    client.get("/lang/zh_CN")
    assert "电子政务外网 PKI 服务" in text(client.get("/", headers=english))


def test_language_switch_refuses_foreign_redirects_and_unknown_languages(portal: Portal) -> None:
    client = portal.app.test_client()
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        assert client.get("/lang/en", query_string={"next": target}).headers["Location"] == "/"
    unknown = portal.app.test_client().get("/lang/xx")
    assert unknown.status_code == 404
    assert "未找到" in text(unknown)


def test_html_responses_carry_security_headers(portal: Portal) -> None:
    page = portal.app.test_client().get("/login")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Content-Security-Policy"] == "default-src 'self'"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["Cache-Control"] == "no-store"


# ----- signing in ---------------------------------------------------------------------


def test_wrong_password_shows_a_form_error_and_commits_the_failure_audit(portal: Portal) -> None:
    client = portal.app.test_client()
    page = sign_in(client, FIRST_ADMIN, "not-the-password")
    assert page.status_code == 200
    assert "用户名或密码错误" in text(page)
    assert client.get("/dashboard").status_code == 302  # still not signed in
    with portal.services.sessions() as db:
        entries = db.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "authz:session:sign_in_fail", AuditEntry.object_id == FIRST_ADMIN
            )
        ).all()
    assert entries
    assert entries[-1].outcome == "failure"


def test_wrong_password_in_english(portal: Portal) -> None:
    client = portal.app.test_client()
    client.get("/lang/en")
    assert "Wrong user name or password." in text(sign_in(client, "nobody", "whatever-it-is"))


def test_empty_login_form_shows_field_errors(portal: Portal) -> None:
    page = post_form(portal.app.test_client(), "/login", {"username": "", "password": ""})
    assert page.status_code == 422
    body = text(page)
    assert field_errors(body, "username") == ["请输入用户名。"]
    assert field_errors(body, "password") == ["请输入密码。"]


def test_markup_in_the_user_name_is_escaped(portal: Portal) -> None:
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    page = sign_in(portal.app.test_client(), attack, "whatever-it-is")
    body = text(page)
    assert page.status_code == 200
    assert "<script>alert" not in body
    assert "<img src=x" not in body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body


def test_markup_in_a_display_name_is_escaped(portal: Portal) -> None:
    client = signed_in(portal, display_name="<b>bold</b><script>alert(1)</script>")
    body = text(client.get("/dashboard"))
    assert "<script>alert(1)</script>" not in body
    assert "&lt;b&gt;bold&lt;/b&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_first_sign_in_forces_a_password_change(portal: Portal) -> None:
    username, password = new_account(portal)
    client = portal.app.test_client()
    signed = sign_in(client, username, password)
    assert signed.status_code == 302
    assert signed.headers["Location"] == "/password"
    for page in ("/dashboard", "/tokens"):
        response = client.get(page)
        assert response.status_code == 302, page
        assert response.headers["Location"] == "/password"
    body = text(client.get("/password"))
    assert "一次性密码" in body


def test_sign_in_gives_a_new_session(portal: Portal) -> None:
    username, password = new_account(portal)
    client = portal.app.test_client()
    token_before = csrf(client.get("/login"))
    sign_in(client, username, password)
    token_after = csrf(client.get("/password"))
    assert token_before != token_after
    cookie = client.get_cookie("govpki_session")
    assert cookie is not None and cookie.http_only


@pytest.mark.parametrize(
    ("new", "repeat", "field", "message"),
    [
        ("short-1", "short-1", "new_password", "长度至少为 12 个字符。"),
        ("Tianshan-Snow-2024", "Tianshan-Snow-2025", "repeat_password", "两次输入的新密码不一致。"),
        ("my-{user}-is-long-enough", "my-{user}-is-long-enough", "new_password", "不能包含用户名。"),
        ("aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa", "new_password", "重复字符过多：请至少使用 6 个不同的字符。"),
    ],
)
def test_bad_new_passwords_show_field_errors_and_change_nothing(
    portal: Portal, new: str, repeat: str, field: str, message: str
) -> None:
    username, password = new_account(portal)
    client = portal.app.test_client()
    sign_in(client, username, password)
    page = post_form(
        client,
        "/password",
        {
            "current_password": password,
            "new_password": new.format(user=username),
            "repeat_password": repeat.format(user=username),
        },
    )
    assert page.status_code == 422
    assert field_errors(text(page), field) == [message]
    stored = account(portal, username)
    assert stored.must_change_password
    assert stored.password_changed_at is None
    assert client.get("/dashboard").headers["Location"] == "/password"


def test_wrong_current_password_is_shown_next_to_its_field(portal: Portal) -> None:
    username, password = new_account(portal)
    client = portal.app.test_client()
    client.get("/lang/en")
    sign_in(client, username, password)
    page = post_form(
        client,
        "/password",
        {"current_password": "not-my-password", "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD},
    )
    assert page.status_code == 422
    assert field_errors(text(page), "current_password") == ["This is not your current password."]
    assert account(portal, username).must_change_password


def test_the_first_admin_changes_the_one_time_password_and_sees_the_dashboard(portal: Portal) -> None:
    client = portal.app.test_client()
    signed = sign_in(client, FIRST_ADMIN, portal.admin_password)
    assert signed.headers["Location"] == "/password"
    changed = post_form(
        client,
        "/password",
        {"current_password": portal.admin_password, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD},
    )
    assert changed.status_code == 302
    assert changed.headers["Location"] == "/totp/enrol"  # then the authenticator app, before anything else
    assert not account(portal, FIRST_ADMIN).must_change_password
    assert "密码已修改" in text(client.get("/totp/enrol"))
    assert client.get("/dashboard").headers["Location"] == "/totp/enrol"
    secret = enrol_totp(client)

    dashboard = client.get("/dashboard")
    assert dashboard.status_code == 200
    body = text(dashboard)
    config = portal.services.config
    assert config.root_ca_name in body and config.issuing_ca_name in body
    for prefecture in portal.services.region.prefectures:
        assert prefecture.name in body and prefecture.name_en in body and prefecture.code in body
    assert len(portal.services.region.prefectures) == 14
    assert "乌鲁木齐市" in body
    assert 'href="/ca/1.der"' in body and 'href="/ca/2.pem"' in body

    # and the new password, then a code, is what works from now on
    other = portal.app.test_client()
    assert sign_in(other, FIRST_ADMIN, NEW_PASSWORD).headers["Location"] == "/login/totp"
    done = post_form(other, "/login/totp", {"code": totp_code(secret, 1)})
    assert done.headers["Location"] == "/dashboard"


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(portal: Portal) -> None:
    _client, username = signed_in_as(portal)
    again = portal.app.test_client()
    first = again.get("/tokens")
    assert first.headers["Location"] == "/login?next=/tokens"
    page = again.get(first.headers["Location"])
    assert "请先登录再访问此页面" in text(page)
    token = csrf(page)
    back = again.post("/login?next=/tokens", data={"csrf_token": token, "username": username, "password": NEW_PASSWORD})
    assert back.headers["Location"] == "/login/totp"
    done = post_form(again, "/login/totp", {"code": totp_code(SECRETS[username], 1)})
    assert done.headers["Location"] == "/tokens"
    _client, other = signed_in_as(portal)  # (another account: one more code in this 30-second step)
    evil = portal.app.test_client()
    token = csrf(evil.get("/login"))
    out = evil.post(
        "/login?next=//evil.example/", data={"csrf_token": token, "username": other, "password": NEW_PASSWORD}
    )
    assert out.headers["Location"] == "/login/totp"
    landed = post_form(evil, "/login/totp", {"code": totp_code(SECRETS[other], 1)})
    assert landed.headers["Location"] == "/dashboard"


def test_sign_out_needs_csrf_and_ends_the_session(portal: Portal) -> None:
    client = signed_in(portal)
    refused = client.post("/logout")
    assert refused.status_code == 400
    assert client.get("/dashboard").status_code == 200  # still signed in
    out = post_form(client, "/logout", {}, form_page="/dashboard")
    assert out.status_code == 302
    assert out.headers["Location"] == "/"
    assert "您已退出登录" in text(client.get("/"))
    assert client.get("/dashboard").status_code == 302


def test_an_idle_session_expires_and_says_so(portal: Portal) -> None:
    client = signed_in(portal)
    assert client.get("/dashboard").status_code == 200
    lifetime = portal.app.permanent_session_lifetime
    portal.app.permanent_session_lifetime = _dt.timedelta(seconds=1)
    try:
        time.sleep(2.2)
        expired = client.get("/dashboard")
    finally:
        portal.app.permanent_session_lifetime = lifetime
    assert expired.status_code == 302
    assert expired.headers["Location"] == "/login?next=/dashboard"
    page = text(client.get(expired.headers["Location"]))
    assert "会话已结束" in page


def test_the_session_lifetime_is_thirty_minutes_and_refreshed(portal: Portal) -> None:
    assert portal.app.permanent_session_lifetime == _dt.timedelta(minutes=30)
    assert portal.app.config["SESSION_REFRESH_EACH_REQUEST"] is True
    client = signed_in(portal)
    response = client.get("/dashboard")
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("govpki_session="))
    assert "Expires=" in cookie and "HttpOnly" in cookie


# ----- dashboard by role ---------------------------------------------------------------


def test_a_role_that_may_not_read_certificates_still_sees_the_hierarchy(portal: Portal) -> None:
    client = signed_in(portal, Role.SYSTEM_ADMIN)
    body = text(client.get("/dashboard"))
    assert portal.services.config.root_ca_name in body
    assert "您的角色无权查看证书记录" in body
    assert 'href="/tokens"' not in body


def test_the_dashboard_lists_recent_certificates(portal: Portal) -> None:
    with portal.services.sessions() as db:
        _token, secret = portal.services.tokens.create(db, SYSTEM, name=f"issuer-{next(_numbers)}", days=1)
        db.commit()
    api = portal.app.test_client()
    issued = api.post(
        "/api/v1/certificates",
        json={"profile": "service-tls-server", "csr": csr_pem(cn="portal.example.gov.cn").decode()},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert issued.status_code == 201, issued.get_data(as_text=True)
    body = text(signed_in(portal).get("/dashboard"))
    assert issued.get_json()["serial"] in body
    assert "已签发" in body


# ----- API tokens ----------------------------------------------------------------------


def test_only_a_security_administrator_may_manage_tokens(portal: Portal) -> None:
    client = signed_in(portal, Role.CA_OPERATOR)
    page = client.get("/tokens")
    assert page.status_code == 403
    assert "只有安全管理员可以管理 API 令牌" in text(page)
    refused = client.post("/tokens", data={"csrf_token": csrf(client.get("/dashboard")), "name": "x", "days": "1"})
    assert refused.status_code == 403


def test_a_token_is_shown_once_works_and_can_be_revoked(portal: Portal) -> None:
    client = signed_in(portal)
    name = f"gateway-{next(_numbers)}"
    created = post_form(client, "/tokens", {"name": name, "days": "30"})
    assert created.status_code == 200
    body = text(created)
    secrets = set(_SECRET.findall(body))
    assert len(secrets) == 1
    secret = secrets.pop()
    assert "只显示这一次" in body

    listing = text(client.get("/tokens"))
    assert name in listing
    assert secret not in listing
    assert secret.split("_", 2)[2] not in listing  # the random part may itself contain "_"

    api = portal.app.test_client()
    works = api.get("/api/v1/certificates", headers={"Authorization": f"Bearer {secret}"})
    assert works.status_code == 200
    assert "items" in works.get_json()

    with portal.services.sessions() as db:
        token_id = db.scalar(select(ApiToken.id).where(ApiToken.name == name))
    revoked = post_form(client, f"/tokens/{token_id}/revoke", {}, form_page="/tokens")
    assert revoked.status_code == 302
    assert revoked.headers["Location"] == "/tokens"
    after = text(client.get("/tokens"))
    assert f"令牌 {name} 已吊销" in after
    assert "已于" in after
    assert api.get("/api/v1/certificates", headers={"Authorization": f"Bearer {secret}"}).status_code == 401

    again = post_form(client, f"/tokens/{token_id}/revoke", {}, form_page="/tokens")
    assert again.status_code == 409
    assert f"令牌 {name} 已经被吊销" in text(again)


def test_token_form_errors_are_shown_next_to_the_fields(portal: Portal) -> None:
    client = signed_in(portal)
    bad_name = post_form(client, "/tokens", {"name": "no spaces allowed", "days": "30"})
    assert bad_name.status_code == 422
    assert field_errors(text(bad_name), "name") == ["须为 1 至 64 个字符：字母、数字、“.”、“_” 或 “-”。"]
    bad_days = post_form(client, "/tokens", {"name": "fine-name", "days": "400"})
    assert field_errors(text(bad_days), "days") == ["须在 1 至 366 天之间。"]
    name = f"taken-{next(_numbers)}"
    assert post_form(client, "/tokens", {"name": name, "days": "5"}).status_code == 200
    taken = post_form(client, "/tokens", {"name": name, "days": "5"})
    assert taken.status_code == 422
    assert field_errors(text(taken), "name") == [f"已存在名为 {name} 的令牌。"]
    with portal.services.sessions() as db:
        assert db.scalar(select(ApiToken.id).where(ApiToken.name == "fine-name")) is None


def test_a_post_without_csrf_token_is_refused_and_changes_nothing(portal: Portal) -> None:
    client = signed_in(portal)
    with portal.services.sessions() as db:
        before = len(portal.services.tokens.list(db))
    refused = client.post("/tokens", data={"name": "sneaky", "days": "30"})
    assert refused.status_code == 400
    assert "表单已过期或并非来自本站" in text(refused)
    forged = client.post("/tokens", data={"name": "sneaky", "days": "30", "csrf_token": "forged"})
    assert forged.status_code == 400
    with portal.services.sessions() as db:
        assert len(portal.services.tokens.list(db)) == before
        assert db.scalar(select(ApiToken.id).where(ApiToken.name == "sneaky")) is None


def test_the_api_needs_no_csrf_token(portal: Portal) -> None:
    response = portal.app.test_client().post("/api/v1/certificates", json={"profile": "x", "csr": "y"})
    assert response.status_code == 401  # refused for want of a bearer token, not for CSRF


# ----- /accounts: the system administrator's accounts page (三员分立) ------------------------------

_OTP = re.compile(r'<textarea id="one-time-password"[^>]*>([^<]+)</textarea>')


def _fail_five_times(portal: Portal, username: str) -> None:
    client = portal.app.test_client()
    for _ in range(5):
        assert sign_in(client, username, "not-the-password-1").status_code == 200
    with portal.services.sessions() as db:
        assert portal.services.accounts.locked_until(db, username) is not None


def _audit(portal: Portal, action: str, object_id: str) -> list[AuditEntry]:
    with portal.services.sessions() as db:
        return list(
            db.scalars(select(AuditEntry).where(AuditEntry.action == action, AuditEntry.object_id == object_id))
        )


def test_a_system_admin_creates_an_auditor_at_accounts_and_sees_the_password_once(portal: Portal) -> None:
    client, admin = signed_in_as(portal, Role.SYSTEM_ADMIN)
    assert 'href="/accounts"' in text(client.get("/dashboard")) and "账户管理" in text(client.get("/dashboard"))
    page = client.get("/accounts")
    assert page.status_code == 200 and "RA 工作人员以外的账号" in text(page)
    username = f"auditor{next(_numbers)}"
    made = post_form(
        client,
        "/accounts",
        {"username": username, "display_name": "<b>审计员</b>", "role": "security_auditor"},
    )
    assert made.status_code == 200, text(made)
    password = _OTP.search(text(made))
    assert password and "返回账号列表" in text(made)
    listing = text(client.get("/accounts"))
    assert username in listing and password[1] not in listing  # shown once
    assert "&lt;b&gt;审计员&lt;/b&gt;" in listing and "<b>审计员</b>" not in listing
    assert "一次性密码" in listing
    created = account(portal, username)
    assert created.role == "security_auditor" and created.must_change_password
    [entry] = _audit(portal, "authz:account:create", username)
    assert entry.actor == f"account:{admin}"
    assert sign_in(portal.app.test_client(), username, password[1]).headers["Location"] == "/password"


def test_the_accounts_form_refuses_bad_input_in_chinese_and_changes_nothing(portal: Portal) -> None:
    client = signed_in(portal, Role.SYSTEM_ADMIN)
    taken = post_form(client, "/accounts", {"username": FIRST_ADMIN, "display_name": "甲", "role": "ca_operator"})
    assert taken.status_code == 422 and f"用户名 {FIRST_ADMIN} 已被占用" in text(taken)
    ra = post_form(client, "/accounts", {"username": "ra.sneaky", "display_name": "甲", "role": "ra_clerk"})
    assert ra.status_code == 422  # RA staff are not on this page's list of roles
    stale = client.post(
        "/accounts", data={"csrf_token": "stale", "username": "stale.one", "display_name": "甲", "role": "ca_operator"}
    )
    assert stale.status_code == 400 and "表单已过期或并非来自本站" in text(stale)
    with portal.services.sessions() as db:
        assert db.scalar(select(Account).where(Account.username.in_(["ra.sneaky", "stale.one"]))) is None


@pytest.mark.parametrize("role", [Role.SECURITY_ADMIN, Role.SECURITY_AUDITOR, Role.RA_CLERK, Role.CA_OPERATOR])
def test_accounts_is_for_system_admins_only(portal: Portal, role: Role) -> None:
    client = signed_in(portal, role)
    page = client.get("/accounts")
    assert page.status_code == 403 and "只有系统管理员可以管理这些账号。" in text(page)
    assert 'href="/accounts"' not in text(client.get("/dashboard"))
    name = f"nope{next(_numbers)}"
    refused = client.post(
        "/accounts",
        data={
            "csrf_token": csrf(client.get("/dashboard")),
            "username": name,
            "display_name": "甲",
            "role": "ca_operator",
        },
    )
    assert refused.status_code == 403
    with portal.services.sessions() as db:
        assert db.scalar(select(Account).where(Account.username == name)) is None


def test_a_system_admin_unlocks_and_resets_at_accounts_but_not_their_own(portal: Portal) -> None:
    client, admin = signed_in_as(portal, Role.SYSTEM_ADMIN)
    locked_admin, _password = new_account(portal, Role.SECURITY_ADMIN)
    _fail_five_times(portal, locked_admin)
    _other, enrolled = signed_in_as(portal, Role.SECURITY_AUDITOR)
    listing = text(client.get("/accounts"))
    assert "锁定至" in listing and "解锁" in listing and "重置身份验证器" in listing
    me = account(portal, admin)
    assert f"/accounts/{me.id}/reset-totp" not in listing  # no buttons on one's own row

    target = account(portal, locked_admin)
    unlocked = post_form(client, f"/accounts/{target.id}/unlock", {}, form_page="/accounts")
    assert unlocked.headers["Location"] == "/accounts"
    assert f"{locked_admin} 已解锁，可以重新登录。" in text(client.get("/accounts"))
    [entry] = _audit(portal, "authz:account:unlock", locked_admin)
    assert entry.actor == f"account:{admin}"
    again = post_form(client, f"/accounts/{target.id}/unlock", {}, form_page="/accounts")
    assert again.status_code == 302 and f"{locked_admin} 未被锁定。" in text(client.get("/accounts"))

    auditor = account(portal, enrolled)
    reset = post_form(client, f"/accounts/{auditor.id}/reset-totp", {}, form_page="/accounts")
    assert reset.headers["Location"] == "/accounts"
    assert not account(portal, enrolled).totp_enrolled
    assert [e.actor for e in _audit(portal, "authz:account:totp_reset", enrolled)] == [f"account:{admin}"]

    own = post_form(client, f"/accounts/{me.id}/reset-totp", {}, form_page="/accounts")
    assert own.status_code == 403 and "不能对自己的账号执行此操作" in text(own)
    assert account(portal, admin).totp_enrolled
    assert _audit(portal, "authz:account:totp_reset", admin) == []
    stale = client.post(f"/accounts/{auditor.id}/unlock", data={"csrf_token": "stale"})
    assert stale.status_code == 400


def test_a_security_admin_cannot_unlock_or_reset_the_auditor(portal: Portal) -> None:
    client = signed_in(portal, Role.SECURITY_ADMIN)
    _auditor_client, auditor_name = signed_in_as(portal, Role.SECURITY_AUDITOR)
    _fail_five_times(portal, auditor_name)
    auditor = account(portal, auditor_name)
    for path in (f"/accounts/{auditor.id}/unlock", f"/accounts/{auditor.id}/reset-totp"):
        assert post_form(client, path, {}, form_page="/dashboard").status_code == 403
    for path in (f"/staff/{auditor.id}/unlock", f"/staff/{auditor.id}/reset-totp"):
        assert post_form(client, path, {}, form_page="/staff").status_code == 404  # not RA staff
    with portal.services.sessions() as db:
        assert portal.services.accounts.locked_until(db, auditor_name) is not None
    assert account(portal, auditor_name).totp_enrolled
    assert _audit(portal, "authz:account:unlock", auditor_name) == []


def test_page_titles_are_plain_text(portal: Portal) -> None:
    """No markup inside <title> (the browser shows it as text)."""
    client = signed_in(portal)
    for path in ("/staff", "/tokens", "/applications"):
        title = re.search(r"<title>(.*?)</title>", text(client.get(path)), re.S)
        assert title is not None and "<" not in title.group(1), (path, title)


def test_only_a_security_admin_unlocks_ra_staff_and_the_refusal_says_so(portal: Portal) -> None:
    client = signed_in(portal, Role.SYSTEM_ADMIN)
    for path, verb in (("/staff/1/unlock", "解锁"), ("/staff/1/reset-totp", "重置")):
        refused = post_form(client, path, {}, form_page="/dashboard")
        assert refused.status_code == 403 and verb in text(refused) and "创建" not in text(refused)
