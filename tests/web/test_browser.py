"""The portal in a real headless Chromium (Debian's), served on a loopback port.

Screenshots of each main page go to test-artifacts/screenshots/.
Needs: apt-get install chromium fonts-noto-cjk
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from tests.helpers import initialised_portal, totp_code, totp_secret_on
from web.bootstrap import FIRST_ADMIN
from web.container import Services

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
NEW_PASSWORD = "Kunlun-Peaks-2024!"


@dataclass
class Served:
    base_url: str
    services: Services
    admin_password: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with initialised_portal(tmp_path_factory.mktemp("browser")) as (app, services, password):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="portal", daemon=True)
        thread.start()
        try:
            yield Served(f"http://127.0.0.1:{server.server_port}", services, password)
        finally:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_first_sign_in_to_token_and_sign_out(served: Served) -> None:
    # never skipped: scripts/test.sh installs Debian's chromium and fonts-noto-cjk
    assert CHROMIUM.exists(), "Chromium is not installed: apt-get install chromium fonts-noto-cjk"

    base = served.base_url
    config = served.services.config
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))

            # the public landing page
            page.goto(base + "/")
            expect(page.get_by_role("heading", name="电子政务外网 PKI 服务")).to_be_visible()
            expect(page.get_by_role("link", name="API 接口说明（OpenAPI 3.1，JSON）")).to_be_visible()
            shot(page, "01-index")

            # sign in with the one-time password
            page.locator("main").get_by_role("link", name="登录").click()
            expect(page).to_have_url(base + "/login")
            page.get_by_label("用户名").fill(FIRST_ADMIN)
            page.get_by_label("密码", exact=True).fill("certainly-wrong")
            page.get_by_role("button", name="登录").click()
            expect(page.get_by_role("alert")).to_contain_text("用户名或密码错误")
            shot(page, "02-login-error")
            page.get_by_label("密码", exact=True).fill(served.admin_password)
            page.get_by_role("button", name="登录").click()

            # forced to replace it
            expect(page).to_have_url(base + "/password")
            expect(page.get_by_text("您使用一次性密码登录")).to_be_visible()
            page.get_by_label("当前密码").fill(served.admin_password)
            page.get_by_label("新密码", exact=True).fill("too-short")
            page.get_by_label("再次输入新密码").fill("too-short")
            page.get_by_role("button", name="修改密码").click()
            expect(page.locator("#new_password-errors")).to_contain_text("长度至少为 12 个字符")
            shot(page, "03-password-errors")
            page.get_by_label("当前密码").fill(served.admin_password)
            page.get_by_label("新密码", exact=True).fill(NEW_PASSWORD)
            page.get_by_label("再次输入新密码").fill(NEW_PASSWORD)
            page.get_by_role("button", name="修改密码").click()

            # then the authenticator app: a QR code (its own URL, so the CSP holds) and the key in text
            expect(page).to_have_url(base + "/totp/enrol")
            expect(page.get_by_text("密码已修改")).to_be_visible()
            qr = page.get_by_role("img", name="身份验证器应用的二维码")
            expect(qr).to_be_visible()
            assert qr.evaluate("img => img.complete && img.naturalWidth > 100")
            shot(page, "03b-totp-enrol")
            secret = totp_secret_on(page.content())
            page.get_by_label("身份验证器应用中的验证码").fill("000000" if totp_code(secret) != "000000" else "111111")
            page.get_by_role("button", name="确认").click()
            expect(page.locator("#code-errors")).to_contain_text("这不是身份验证器应用当前显示的验证码")
            page.get_by_label("身份验证器应用中的验证码").fill(totp_code(secret))
            page.get_by_role("button", name="确认").click()

            # the dashboard
            expect(page).to_have_url(base + "/dashboard")
            expect(page.get_by_text("身份验证器应用已设置")).to_be_visible()
            expect(page.get_by_role("cell", name="乌鲁木齐市")).to_be_visible()
            expect(page.get_by_role("cell", name="阿勒泰地区")).to_be_visible()
            expect(page.get_by_role("cell", name=config.root_ca_name, exact=True)).to_be_visible()
            expect(page.get_by_role("cell", name=config.issuing_ca_name, exact=True)).to_be_visible()
            assert page.locator("main table").nth(1).locator("tbody tr").count() == 14
            shot(page, "04-dashboard")

            # an API token, shown once
            page.get_by_role("link", name="API 令牌").click()
            expect(page).to_have_url(base + "/tokens")
            page.get_by_label("令牌名称").fill("urumqi-ra-gateway")
            shot(page, "05-tokens")
            page.get_by_role("button", name="创建令牌").click()
            expect(page.get_by_role("heading", name="令牌 urumqi-ra-gateway 已创建")).to_be_visible()
            expect(page.get_by_text("它只显示这一次")).to_be_visible()
            secret = page.locator("#token-secret").input_value()
            assert re.fullmatch(r"gpk_[0-9a-f]+_[A-Za-z0-9_-]+", secret)
            shot(page, "06-token-created")
            request = urllib.request.Request(
                base + "/api/v1/certificates", headers={"Authorization": f"Bearer {secret}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                assert "items" in json.load(response)

            page.get_by_role("link", name="返回令牌列表").click()
            expect(page.get_by_role("cell", name="urumqi-ra-gateway")).to_be_visible()
            assert secret not in page.content()
            shot(page, "07-tokens-list")

            # sign out
            page.get_by_role("button", name="退出").click()
            expect(page).to_have_url(base + "/")
            expect(page.get_by_text("您已退出登录")).to_be_visible()
            page.goto(base + "/dashboard")
            expect(page).to_have_url(re.compile(r".*/login\?next=/dashboard$"))

            # the same page in English
            page.goto(base + "/")
            page.get_by_role("link", name="English").click()
            expect(page.get_by_role("heading", name="Government Extranet PKI Service")).to_be_visible()
            shot(page, "08-index-en")

            assert not [p for p in problems if "Content Security Policy" in p], problems
        finally:
            browser.close()
