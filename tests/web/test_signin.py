"""Staff sign-in through Flask's test client (CSRF on): a security administrator creates an
RA clerk on the staff page; the clerk's first sign-in (one-time password → own password →
TOTP enrolment with a QR code → dashboard); later sign-ins with a code; wrong codes; the
lock-out message in Chinese and English, the same for unknown names; stale forms, expired
sessions and an unfinished second step. The service clock is movable, so TOTP steps and
the lock-out period are exact."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from authz import totp
from authz.models import Account
from govpki.audit import AuditEntry
from govpki.principal import Role
from tests.helpers import fresh_database, make_config, totp_secret_on
from web.app import create_app
from web.bootstrap import FIRST_ADMIN, initialize
from web.container import Services, build_services

NEW_PASSWORD = "Tianchi-Lake-2024"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_OTP = re.compile(r'<textarea id="one-time-password"[^>]*>([^<]+)</textarea>')


class MovableClock:
    def __init__(self) -> None:
        self.at = dt.datetime.now(dt.UTC)

    def now(self) -> dt.datetime:
        return self.at

    def advance(self, **kw: float) -> None:
        self.at += dt.timedelta(**kw)


@dataclass
class Portal:
    app: Flask
    services: Services
    clock: MovableClock
    admin: FlaskClient  # the first security administrator, signed in with both factors


def csrf(page: TestResponse) -> str:
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, "the page has no CSRF token"
    return match.group(1)


def post_form(client: FlaskClient, path: str, data: dict[str, str], *, form_page: str | None = None) -> TestResponse:
    token = csrf(client.get(form_page or path))
    return client.post(path, data={"csrf_token": token, **data})


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def code(portal: Portal, secret: str, steps_ahead: int = 0) -> str:
    return totp.code_at(secret, totp.time_step(portal.clock.now()) + steps_ahead)


def first_sign_in(portal: Portal, client: FlaskClient, username: str, one_time: str) -> str:
    """One-time password → new password → TOTP enrolment; returns the TOTP secret."""
    assert post_form(client, "/login", {"username": username, "password": one_time}).headers["Location"] == "/password"
    changed = post_form(
        client,
        "/password",
        {"current_password": one_time, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD},
    )
    assert changed.headers["Location"] == "/totp/enrol"
    secret = totp_secret_on(text(client.get("/totp/enrol")))
    done = post_form(client, "/totp/enrol", {"code": code(portal, secret)})
    assert done.headers["Location"] == "/dashboard"
    return secret


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    folder = tmp_path_factory.mktemp("signin")
    databases = fresh_database(folder)
    config = make_config(folder / "inst", next(databases))
    clock = MovableClock()
    services = build_services(config, clock=clock)
    try:
        report = initialize(services)
        assert report.admin_password
        app = create_app(config, services=services)
        admin = app.test_client()
        first_sign_in(Portal(app, services, clock, admin), admin, FIRST_ADMIN, report.admin_password)
        yield Portal(app, services, clock, admin)
    finally:
        services.dispose()
        databases.close()


_numbers = iter(range(1, 1000))


def new_clerk(portal: Portal, role: Role = Role.RA_CLERK, prefecture: str = "650100") -> tuple[str, str]:
    """An RA staff account made through the staff page; returns (user name, one-time password)."""
    username = f"clerk{next(_numbers)}"
    page = post_form(
        portal.admin,
        "/staff",
        {"username": username, "display_name": f"职员 {username}", "role": role.value, "prefecture": prefecture},
    )
    assert page.status_code == 200, text(page)
    match = _OTP.search(text(page))
    assert match
    return username, match.group(1)


def audit_entries(portal: Portal, action: str, object_id: str) -> list[AuditEntry]:
    with portal.services.sessions() as db:
        return list(
            db.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == action, AuditEntry.object_id == object_id)
                .order_by(AuditEntry.seq)
            )
        )


def alert(page: TestResponse) -> str:
    found = re.search(r'<div class="alert" role="alert">(.*?)</div>', text(page), re.S)
    assert found, text(page)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))).strip()


# ----- the whole flow ---------------------------------------------------------------------------


def test_a_new_clerk_signs_in_changes_the_password_enrols_totp_and_later_signs_in_with_a_code(portal: Portal) -> None:
    staff_page = text(portal.admin.get("/staff"))
    assert "RA 工作人员" in staff_page and "乌鲁木齐市" in staff_page
    username, one_time = new_clerk(portal, Role.RA_OFFICER, "650200")
    [created] = audit_entries(portal, "authz:account:create", username)
    assert json.loads(created.details)["prefecture"] == "650200"
    assert created.actor == f"account:{FIRST_ADMIN}"

    client = portal.app.test_client()
    assert post_form(client, "/login", {"username": username, "password": one_time}).headers["Location"] == "/password"
    assert client.get("/totp/enrol").headers["Location"] == "/password"  # the password first
    changed = post_form(
        client,
        "/password",
        {"current_password": one_time, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD},
    )
    assert changed.headers["Location"] == "/totp/enrol"
    assert client.get("/dashboard").headers["Location"] == "/totp/enrol"  # nothing else before TOTP

    enrol = client.get("/totp/enrol")
    body = text(enrol)
    assert enrol.status_code == 200 and enrol.headers["Cache-Control"] == "no-store"
    assert '<img src="/totp/enrol/qr.svg"' in body and "data:" not in body
    secret = totp_secret_on(body)
    qr = client.get("/totp/enrol/qr.svg")
    assert qr.status_code == 200 and qr.mimetype == "image/svg+xml"
    assert qr.headers["Cache-Control"] == "no-store"
    assert b"<svg" in qr.data and b"<script" not in qr.data
    assert totp_secret_on(text(client.get("/totp/enrol"))) == secret  # reloading shows the same key

    wrong = post_form(client, "/totp/enrol", {"code": code(portal, secret, 5)})
    assert wrong.status_code == 200
    assert "这不是身份验证器应用当前显示的验证码" in text(wrong)
    done = post_form(client, "/totp/enrol", {"code": code(portal, secret)})
    assert done.headers["Location"] == "/dashboard"
    assert "身份验证器应用已设置" in text(client.get("/dashboard"))
    assert client.get("/totp/enrol/qr.svg").status_code == 404  # the key is not shown again
    assert [e.outcome for e in audit_entries(portal, "authz:account:totp_enrol", username)] == ["failure", "success"]

    # a later sign-in: password, then (half signed in) a code
    portal.clock.advance(seconds=30)
    later = portal.app.test_client()
    first = post_form(later, "/login", {"username": username, "password": NEW_PASSWORD})
    assert first.headers["Location"] == "/login/totp"
    assert later.get("/dashboard").headers["Location"].startswith("/login")  # not signed in yet
    page = later.get("/login/totp")
    assert "请输入身份验证器应用为本服务显示的 6 位验证码" in text(page)
    signed = later.post("/login/totp", data={"csrf_token": csrf(page), "code": code(portal, secret)})
    assert signed.headers["Location"] == "/dashboard"
    assert later.get("/dashboard").status_code == 200
    last = audit_entries(portal, "authz:session:sign_in", username)[-1]
    assert json.loads(last.details)["factors"] == ["password", "totp"]


def test_a_wrong_code_is_refused_and_a_used_code_cannot_be_replayed(portal: Portal) -> None:
    username, one_time = new_clerk(portal)
    secret = first_sign_in(portal, portal.app.test_client(), username, one_time)
    portal.clock.advance(seconds=30)
    client = portal.app.test_client()
    post_form(client, "/login", {"username": username, "password": NEW_PASSWORD})
    wrong = post_form(client, "/login/totp", {"code": code(portal, secret, 3)})
    assert wrong.status_code == 200
    assert "验证码错误，或该验证码已使用过。" in text(wrong)
    malformed = post_form(client, "/login/totp", {"code": "12345x"})
    assert malformed.status_code == 422
    assert "请输入身份验证器应用显示的 6 位数字。" in text(malformed)
    good = code(portal, secret)
    assert post_form(client, "/login/totp", {"code": good}).headers["Location"] == "/dashboard"

    again = portal.app.test_client()  # someone who saw that code, in the same 30 seconds
    post_form(again, "/login", {"username": username, "password": NEW_PASSWORD})
    replay = post_form(again, "/login/totp", {"code": good})
    assert replay.status_code == 200 and "验证码错误，或该验证码已使用过。" in text(replay)
    fails = audit_entries(portal, "authz:session:sign_in_fail", username)
    assert [json.loads(e.details)["factor"] for e in fails] == ["totp", "totp"]


# ----- lock-out ---------------------------------------------------------------------------------


def _fail_five_times(portal: Portal, client: FlaskClient, username: str) -> TestResponse:
    page = None
    for _ in range(5):
        page = post_form(client, "/login", {"username": username, "password": "not-the-password-1"})
        assert page.status_code == 200
    assert page is not None
    return page


def test_lockout_says_so_in_chinese_and_english_and_the_same_for_unknown_names(portal: Portal) -> None:
    username, one_time = new_clerk(portal)
    first_sign_in(portal, portal.app.test_client(), username, one_time)

    zh = portal.app.test_client()
    locked = _fail_five_times(portal, zh, username)
    message = "登录失败次数过多：此用户名已被锁定 15 分钟。请稍后再试，或请管理员解锁。"
    assert alert(locked) == message
    right = post_form(zh, "/login", {"username": username, "password": NEW_PASSWORD})
    assert right.status_code == 200 and alert(right) == message  # the right password does not help
    assert len(audit_entries(portal, "authz:account:lock", username)) == 1

    unknown = portal.app.test_client()
    assert alert(_fail_five_times(portal, unknown, "no-such-clerk")) == message  # nothing tells them apart

    en = portal.app.test_client()
    en.get("/lang/en")
    page = post_form(en, "/login", {"username": username, "password": NEW_PASSWORD})
    assert alert(page) == (
        "Too many failed sign-ins: signing in with this user name is locked for 15 minutes. "
        "Try again later or ask your administrator to unlock it."
    )

    portal.clock.advance(minutes=15, seconds=1)
    later = portal.app.test_client()
    assert post_form(later, "/login", {"username": username, "password": NEW_PASSWORD}).headers["Location"] == (
        "/login/totp"
    )


def test_wrong_codes_lock_too_and_end_the_half_sign_in(portal: Portal) -> None:
    username, one_time = new_clerk(portal)
    secret = first_sign_in(portal, portal.app.test_client(), username, one_time)
    portal.clock.advance(seconds=30)
    client = portal.app.test_client()
    post_form(client, "/login", {"username": username, "password": NEW_PASSWORD})
    for _ in range(4):
        assert post_form(client, "/login/totp", {"code": code(portal, secret, 4)}).status_code == 200
    locked = post_form(client, "/login/totp", {"code": code(portal, secret, 4)})
    assert locked.headers["Location"] == "/login"
    assert "此用户名已被锁定 15 分钟" in text(client.get("/login"))
    assert client.get("/login/totp").headers["Location"] == "/login"  # the half sign-in is gone


# ----- stale forms, expired sessions ------------------------------------------------------------


def test_a_stale_form_is_refused_and_changes_nothing(portal: Portal) -> None:
    client = portal.app.test_client()
    client.get("/login")
    with portal.services.sessions() as db:
        before = db.scalar(select(func.count()).select_from(AuditEntry))
    refused = client.post("/login", data={"csrf_token": "stale", "username": FIRST_ADMIN, "password": "x" * 12})
    assert refused.status_code == 400
    assert "表单已过期或并非来自本站" in text(refused)
    en = portal.app.test_client()
    en.get("/lang/en")
    refused_en = en.post("/login/totp", data={"code": "123456"})
    assert refused_en.status_code == 400
    assert "The form was out of date or did not come from this site." in text(refused_en)
    with portal.services.sessions() as db:
        assert db.scalar(select(func.count()).select_from(AuditEntry)) == before


def test_an_expired_session_says_so(portal: Portal) -> None:
    client = portal.app.test_client()
    client.set_cookie("govpki_signed_in", "1")  # signed in before; the session cookie has expired
    expired = client.get("/dashboard")
    assert expired.headers["Location"] == "/login?next=/dashboard"
    assert "会话已结束" in text(client.get(expired.headers["Location"]))
    en = portal.app.test_client()
    en.get("/lang/en")
    en.set_cookie("govpki_signed_in", "1")
    en.get("/dashboard")
    assert "Your session has ended after 30 minutes without activity" in text(en.get("/login"))
    # a form submitted after the session expired: the same message, nothing done
    stale = portal.app.test_client()
    stale.set_cookie("govpki_signed_in", "1")
    answer = stale.post("/password", data={"csrf_token": "from-the-old-session", "current_password": "x"})
    assert answer.headers["Location"] == "/login"


def test_an_unfinished_second_step_expires(portal: Portal) -> None:
    username, one_time = new_clerk(portal)
    secret = first_sign_in(portal, portal.app.test_client(), username, one_time)
    portal.clock.advance(seconds=30)
    client = portal.app.test_client()
    post_form(client, "/login", {"username": username, "password": NEW_PASSWORD})
    page = client.get("/login/totp")
    portal.clock.advance(minutes=6)
    late = client.post("/login/totp", data={"csrf_token": csrf(page), "code": code(portal, secret)})
    assert late.headers["Location"] == "/login"
    assert "登录未在 5 分钟内完成，请重新开始。" in text(client.get("/login"))
    assert client.get("/dashboard").headers["Location"].startswith("/login")


# ----- the staff page and cookies ---------------------------------------------------------------


def test_the_staff_page_checks_its_input_and_is_for_security_admins_only(portal: Portal) -> None:
    missing = post_form(
        portal.admin, "/staff", {"username": "clerk-x", "display_name": "甲", "role": "ra_clerk", "prefecture": ""}
    )
    assert missing.status_code == 422 and "请选择地州市。" in text(missing)
    bad_name = post_form(
        portal.admin, "/staff", {"username": "X!", "display_name": "甲", "role": "ra_clerk", "prefecture": "650100"}
    )
    assert bad_name.status_code == 422
    assert "请使用 3 到 64 个小写字母" in text(bad_name)
    with portal.services.sessions() as db:
        assert db.scalar(select(Account).where(Account.username.in_(["clerk-x", "X!"]))) is None

    username, one_time = new_clerk(portal)
    client = portal.app.test_client()
    first_sign_in(portal, client, username, one_time)
    assert client.get("/staff").status_code == 403
    assert 'href="/staff"' not in text(client.get("/dashboard"))


def test_cookies_are_httponly_samesite_and_secure_when_configured(portal: Portal, tmp_path: Path) -> None:
    page = portal.app.test_client().get("/login")
    cookie = next(c for c in page.headers.getlist("Set-Cookie") if c.startswith("govpki_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # the demo is plain http
    secure = dataclasses.replace(portal.services.config, cookie_secure=True)
    app = create_app(secure, services=portal.services)
    page = app.test_client().get("/login", base_url="https://localhost")
    cookie = next(c for c in page.headers.getlist("Set-Cookie") if c.startswith("govpki_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    auto = make_config(tmp_path / "i", "sqlite://", GOVPKI_BASE_URL="https://pki.example.gov.cn")
    assert auto.secure_cookies and not make_config(tmp_path / "j", "sqlite://", GOVPKI_COOKIE_SECURE="0").secure_cookies


def test_the_session_records_how_the_user_signed_in(portal: Portal) -> None:
    """The amr the OIDC provider reports: the password, and the TOTP code once confirmed."""
    from web.ui import SESSION_AMR, SESSION_AUTH_TIME

    username, one_time = new_clerk(portal)
    client = portal.app.test_client()
    post_form(client, "/login", {"username": username, "password": one_time})
    with client.session_transaction() as state:
        assert state[SESSION_AMR] == ["pwd"]  # the one-time password; TOTP not enrolled yet
    client = portal.app.test_client()
    secret = first_sign_in(portal, client, username, one_time)
    with client.session_transaction() as state:
        assert state[SESSION_AMR] == ["pwd", "otp"] and isinstance(state[SESSION_AUTH_TIME], int)
    portal.clock.advance(seconds=30)
    later = portal.app.test_client()
    post_form(later, "/login", {"username": username, "password": NEW_PASSWORD})
    with later.session_transaction() as state:
        assert SESSION_AMR not in state  # half signed in: no method counts yet
    later.post("/login/totp", data={"csrf_token": csrf(later.get("/login/totp")), "code": code(portal, secret)})
    with later.session_transaction() as state:
        assert state[SESSION_AMR] == ["pwd", "otp"]


def test_the_security_admin_unlocks_and_resets_ra_staff_on_the_staff_page(portal: Portal) -> None:
    username, one_time = new_clerk(portal)
    first_sign_in(portal, portal.app.test_client(), username, one_time)
    _fail_five_times(portal, portal.app.test_client(), username)
    listing = text(portal.admin.get("/staff"))
    assert "锁定至" in listing and "确定立即解锁" in listing and "重置身份验证器" in listing
    with portal.services.sessions() as db:
        clerk = db.scalars(select(Account).where(Account.username == username)).one()
        clerk_id = clerk.id

    stale = portal.admin.post(f"/staff/{clerk_id}/unlock", data={"csrf_token": "stale"})
    assert stale.status_code == 400 and "表单已过期或并非来自本站" in text(stale)
    unlocked = post_form(portal.admin, f"/staff/{clerk_id}/unlock", {}, form_page="/staff")
    assert unlocked.headers["Location"] == "/staff"
    assert f"{username} 已解锁，可以重新登录。" in text(portal.admin.get("/staff"))
    [entry] = audit_entries(portal, "authz:account:unlock", username)
    assert entry.actor == f"account:{FIRST_ADMIN}"
    signed = post_form(portal.app.test_client(), "/login", {"username": username, "password": NEW_PASSWORD})
    assert signed.headers["Location"] == "/login/totp"

    reset = post_form(portal.admin, f"/staff/{clerk_id}/reset-totp", {}, form_page="/staff")
    assert reset.headers["Location"] == "/staff"
    assert "已重置" in text(portal.admin.get("/staff"))
    [entry] = audit_entries(portal, "authz:account:totp_reset", username)
    assert entry.actor == f"account:{FIRST_ADMIN}"
    again = portal.app.test_client()
    signed = post_form(again, "/login", {"username": username, "password": NEW_PASSWORD})
    assert signed.headers["Location"] == "/totp/enrol"  # a new authenticator first

    # the staff page acts on RA staff only; the first administrators are the system administrator's
    with portal.services.sessions() as db:
        auditor = db.scalars(select(Account).where(Account.username == "auditor")).one()
    assert post_form(portal.admin, f"/staff/{auditor.id}/reset-totp", {}, form_page="/staff").status_code == 404
    assert post_form(portal.admin, f"/accounts/{auditor.id}/unlock", {}, form_page="/staff").status_code == 403
