"""The auditors' console in a real headless Chromium (Debian's): an auditor signs in,
filters, opens an entry, sees and refreshes the verification badge, looks at the charts
and downloads an evidence bundle that verifies offline. Screenshots go to
test-artifacts/screenshots/ (audit-*.png)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import select
from werkzeug.serving import make_server

from authz.evidence import verify_bundle
from authz.models import Account
from authz.services import account_principal
from ca.evidence import verify_transparency
from govpki.principal import SYSTEM, Role
from tests.helpers import initialised_portal, totp_code
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, Served, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AUDITOR = "auditor1"
PASSWORD = "Bogda-Peak-Audit-2024"
SECRETS: dict[str, str] = {}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with initialised_portal(tmp_path_factory.mktemp("browser-audit")) as (app, services, password):
        with services.sessions() as db:
            services.accounts.create(
                db, SYSTEM, username=AUDITOR, display_name="审计员甲", role=Role.SECURITY_AUDITOR, password=PASSWORD
            )
            db.flush()
            account = db.scalars(select(Account).where(Account.username == AUDITOR)).one()
            account.must_change_password = False  # the forced change is covered by test_browser.py
            db.flush()
            # so is TOTP enrolment: here the auditor has enrolled and signs in with a code
            secret, _uri = services.accounts.totp_enrolment(db, account_principal(account))
            services.accounts.confirm_totp(db, account_principal(account), code=totp_code(secret))
            db.commit()
        SECRETS[AUDITOR] = secret
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="portal", daemon=True)
        thread.start()
        try:
            yield Served(f"http://127.0.0.1:{server.server_port}", services, password)
        finally:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()


def test_auditor_filters_opens_an_entry_verifies_and_exports(served: Served, tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "Chromium is not installed: apt-get install chromium fonts-noto-cjk"
    base = served.base_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                locale="zh-CN", viewport={"width": 1280, "height": 900}, accept_downloads=True
            )
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))

            page.goto(base + "/login")
            page.get_by_label("用户名").fill(AUDITOR)
            page.get_by_label("密码", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="登录").click()
            expect(page).to_have_url(base + "/login/totp")
            page.get_by_label("身份验证器应用中的验证码").fill(totp_code(SECRETS[AUDITOR], 1))
            page.get_by_role("button", name="确认").click()
            expect(page).to_have_url(base + "/dashboard")

            # the console, from the navigation
            page.get_by_role("link", name="审计日志").click()
            expect(page).to_have_url(base + "/audit")
            expect(page.locator("#verification-status")).to_have_text("从未校验")
            expect(page.locator("table.audit-table tbody tr").first).to_be_visible()

            # filter: RA creations in one prefecture
            page.get_by_label("操作", exact=True).fill("ra:authority:create")
            page.get_by_label("地州").select_option("650100")
            page.get_by_role("button", name="查询").click()
            expect(page).to_have_url(re.compile(r".*/audit\?.*prefecture=650100"))
            rows = page.locator("table.audit-table tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("乌鲁木齐市")
            shot(page, "audit-01-search")

            # the entry in full
            rows.first.get_by_role("link").click()
            expect(page).to_have_url(re.compile(r".*/audit/entries/\d+$"))
            expect(page.locator("#entry-hash")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
            expect(page.locator("#entry-details")).to_contain_text("乌鲁木齐市")
            shot(page, "audit-02-entry")

            # verify now: the badge turns green
            page.get_by_role("button", name="立即校验").click()
            expect(page.locator("#verification-status")).to_have_text("校验通过")
            expect(page.get_by_text("审计日志校验通过")).to_be_visible()

            # charts: server-drawn SVG with visible numbers
            page.get_by_role("link", name="图表").click()
            expect(page.locator("svg#chart-sign-ins")).to_be_visible()
            expect(page.locator("svg#chart-pending")).to_be_visible()
            shot(page, "audit-03-charts")

            # export the current filter and check the download offline
            page.goto(base + "/audit?action=ra:authority:create")
            with page.expect_download() as info:
                page.get_by_role("button", name="导出签名证据包").click()
            download = info.value
            assert re.fullmatch(r"audit-evidence-\d+-\d+\.tar", download.suggested_filename)
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            report = verify_bundle(saved, checks=[verify_transparency])
            assert report.ok, report.problems
            assert report.matched == 14

            assert not problems, problems
        finally:
            browser.close()
