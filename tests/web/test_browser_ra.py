"""The RA clerk portal in a real headless Chromium (Debian's), served on a loopback port:
a clerk signs in with password and TOTP, registers an official and submits a
new-certificate request with a CSR file; an officer approves; the clerk prints the PIN
slip, downloads the PKCS#12 (opened here with the password shown) and the certificate
chain, and asks for revocation, which the officer approves; a clerk of another
prefecture neither sees nor opens the official (by URL either); a bulk import shows its
progress bar until done.

Screenshots of the main pages (``ra-*.png``) are kept as test artefacts: in
test-artifacts/screenshots/ beside test_browser.py's, or in $GOVPKI_TEST_SCREENSHOTS if set.
The accounts are made and their TOTP enrolled beforehand through Flask's test client
(the first sign-in is tested in test_signin.py and test_browser.py).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from playwright.sync_api import Browser, Page, expect, sync_playwright
from werkzeug.serving import make_server

from govpki.principal import SYSTEM, Role
from tests.helpers import csr_pem, enrol_totp, initialised_portal, totp_code
from tests.ra.idnumbers import id_number
from web.container import Services

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]
NEW_PASSWORD = "Sayram-Lake-2024!"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_numbers = itertools.count(1)


@dataclass
class Account:
    username: str
    secret: str


@dataclass
class Served:
    base_url: str
    services: Services
    clerk: Account
    officer: Account
    other_clerk: Account
    shots: Path


def _account(app: object, services: Services, role: Role, prefecture: str) -> Account:
    """An RA staff account with its own password and TOTP enrolled (through the test client)."""
    from flask import Flask

    assert isinstance(app, Flask)
    username = f"b{role.value.replace('_', '')}{next(_numbers)}"
    one_time = f"one-time-{username}-Qw9"
    with services.sessions() as db:
        services.accounts.create(
            db,
            SYSTEM,
            username=username,
            display_name=f"职员{username}",
            role=role,
            password=one_time,
            prefecture=prefecture,
        )
        db.commit()
    client = app.test_client()

    def post(path: str, data: dict[str, str]) -> None:
        page = client.get(path).get_data(as_text=True)
        token = _CSRF.search(page)
        assert token, page
        client.post(path, data={"csrf_token": token.group(1), **data})

    post("/login", {"username": username, "password": one_time})
    post("/password", {"current_password": one_time, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD})
    return Account(username, enrol_totp(client))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    configured = os.environ.get("GOVPKI_TEST_SCREENSHOTS")
    shots = Path(configured) if configured else SCREENSHOTS
    shots.mkdir(parents=True, exist_ok=True)
    with initialised_portal(tmp_path_factory.mktemp("browser-ra")) as (app, services, _password):
        with services.sessions() as db:
            services.kmc.ensure_storage_key(db, SYSTEM)
            db.commit()
        clerk = _account(app, services, Role.RA_CLERK, "650100")
        officer = _account(app, services, Role.RA_OFFICER, "650100")
        other_clerk = _account(app, services, Role.RA_CLERK, "650200")
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="portal", daemon=True)
        thread.start()
        try:
            yield Served(f"http://127.0.0.1:{server.server_port}", services, clerk, officer, other_clerk, shots)
        finally:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()


def sign_in(browser: Browser, served: Served, account: Account, problems: list[str]) -> Page:
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(served.base_url + "/login")
    page.get_by_label("用户名").fill(account.username)
    page.get_by_label("密码", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(served.base_url + "/login/totp")
    # the enrolment used this 30 s step's code; a code is accepted once, so take the next step's
    page.get_by_label("身份验证器应用中的验证码").fill(totp_code(account.secret, steps_ahead=1))
    page.get_by_role("button", name="确认").click()
    expect(page).to_have_url(served.base_url + "/dashboard")
    return page


def test_clerk_and_officer_carry_a_certificate_through_its_life(served: Served, tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "Chromium is not installed: apt-get install chromium fonts-noto-cjk"
    base = served.base_url

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(served.shots / f"ra-{name}.png"), full_page=True)

    problems: list[str] = []
    number = id_number(birth="19880808", sequence="135")
    key = ec.generate_private_key(ec.SECP256R1())
    csr_file = tmp_path / "official.csr"
    csr_file.write_bytes(csr_pem(key, cn="ignored"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            clerk = sign_in(browser, served, served.clerk, problems)
            clerk.get_by_role("link", name="注册机构").click()
            expect(clerk.get_by_role("heading", name="注册机构 · 乌鲁木齐市")).to_be_visible()
            shot(clerk, "01-ra-dashboard-clerk")

            # register an official; a bad check character first
            clerk.get_by_role("navigation", name="注册机构").get_by_role("link", name="公务人员").click()
            clerk.get_by_role("link", name="登记公务人员").click()
            clerk.get_by_label("姓名").fill("<script>alert('x')</script>阿依古丽")
            clerk.get_by_label("公民身份号码").fill(number[:17] + ("0" if number[17] != "0" else "1"))
            clerk.get_by_label("部门", exact=True).fill("自治区财政厅")
            clerk.get_by_label("职务").fill("主任科员")
            clerk.get_by_label("电子邮箱").fill("ayg@czt.example.gov.cn")
            clerk.get_by_role("button", name="登记").click()
            expect(clerk.locator("#id_number-errors")).to_contain_text("校验位（第 18 位）错误")
            shot(clerk, "02-official-form-error")
            clerk.get_by_label("公民身份号码").fill(number)
            clerk.get_by_role("button", name="登记").click()
            expect(clerk.get_by_text("已登记。")).to_be_visible()
            expect(clerk.get_by_role("heading", name="<script>alert('x')</script>阿依古丽")).to_be_visible()
            expect(clerk.locator("#id-number-masked")).to_have_text(f"{number[:4]}**********{number[-4:]}")
            official_url = clerk.url
            shot(clerk, "03-official")

            # a new-certificate request with the CSR file
            clerk.get_by_role("link", name="申请新证书").click()
            clerk.get_by_label("证书请求文件（CSR）").set_input_files(str(csr_file))
            clerk.get_by_role("button", name="提交申请").click()
            expect(clerk.get_by_text("等待审核员审核")).to_be_visible()
            request_url = clerk.url
            shot(clerk, "04-request-submitted")

            # the officer approves
            officer = sign_in(browser, served, served.officer, problems)
            officer.goto(base + "/ra/approvals")
            shot(officer, "05-approvals")
            officer.get_by_role("link", name=re.compile(r"^#\d+$")).first.click()
            expect(officer).to_have_url(request_url)
            officer.get_by_label("审核意见").fill("已核验身份证原件")
            officer.get_by_role("button", name="批准").click()
            expect(officer.get_by_text("证书已签发")).to_be_visible()
            shot(officer, "06-request-approved")

            # the clerk prints the PIN slip and downloads the PKCS#12 once
            clerk.goto(request_url)
            clerk.get_by_role("button", name="显示密码条").click()
            expect(clerk.get_by_role("heading", name="密码条：加密密钥")).to_be_visible()
            password = clerk.locator("#pkcs12-password").inner_text().strip()
            shot(clerk, "07-pin-slip")
            clerk.emulate_media(media="print")
            shot(clerk, "07b-pin-slip-print")
            expect(clerk.get_by_role("button", name="下载加密密钥（PKCS#12）")).to_be_hidden()
            clerk.emulate_media(media="screen")
            with clerk.expect_download() as got:
                clerk.get_by_role("button", name="下载加密密钥（PKCS#12）").click()
            p12 = Path(got.value.path()).read_bytes()
            p12_key, p12_cert, _ = pkcs12.load_key_and_certificates(p12, password.encode())
            assert p12_key is not None and p12_cert is not None

            # the signing certificate's page and its chain
            clerk.goto(request_url)
            expect(clerk.get_by_text("下载加密密钥")).to_have_count(0)
            clerk.locator("dt", has_text="签名证书").locator("xpath=following-sibling::dd[1]").get_by_role(
                "link"
            ).click()
            expect(clerk.get_by_text("official-signing")).to_be_visible()
            with clerk.expect_download() as got:
                clerk.get_by_role("link", name="PEM（含证书链）").click()
            chain = x509.load_pem_x509_certificates(Path(got.value.path()).read_bytes())
            assert len(chain) == 3 and chain[0].public_key().public_numbers() == key.public_key().public_numbers()
            shot(clerk, "08-certificate")
            certificate_url = clerk.url

            # revocation: the clerk asks, the officer approves
            clerk.get_by_label("申请", exact=True).select_option("revoke")
            clerk.get_by_label("吊销原因").select_option("affiliationChanged")
            clerk.get_by_role("button", name="提交申请").click()
            expect(clerk.get_by_text("等待审核员审核")).to_be_visible()
            officer.goto(clerk.url)
            officer.get_by_role("button", name="批准").click()
            expect(officer.get_by_text("已批准并办理完成")).to_be_visible()
            clerk.goto(certificate_url)
            expect(clerk.locator(".badge", has_text="已吊销")).to_be_visible()
            expect(clerk.get_by_text("隶属关系变更").first).to_be_visible()
            shot(clerk, "09-certificate-revoked")

            # the officer's dashboard shows the activity
            officer.goto(base + "/ra")
            expect(officer.get_by_role("heading", name="最近动态")).to_be_visible()
            shot(officer, "10-ra-dashboard-officer")

            # a clerk of Karamay neither sees nor opens the official
            other = sign_in(browser, served, served.other_clerk, problems)
            other.goto(base + "/ra/officials")
            expect(other.get_by_text("阿依古丽")).to_have_count(0)
            other.goto(official_url)
            expect(other.locator(".status")).to_have_text("404")
            expect(other.get_by_text("阿依古丽")).to_have_count(0)
            shot(other, "11-other-prefecture-404")

            # bulk enrollment: the progress bar runs until the import is done
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["姓名", "身份证号", "部门"])
            for n in range(1, 300, 2):
                writer.writerow([f"批量{n}", id_number(birth="19700101", sequence=f"{n:03d}"), "统计局"])
            writer.writerow(["错误", "650102197001011230", "统计局"])
            upload = tmp_path / "officials.csv"
            upload.write_bytes(out.getvalue().encode("gb18030"))
            clerk.goto(base + "/ra/imports")
            clerk.get_by_label("公务人员 CSV 文件").set_input_files(str(upload))
            clerk.get_by_role("button", name="导入").click()
            expect(clerk.locator("#import-progress")).to_be_visible()
            shot(clerk, "12-import-progress")
            expect(clerk.locator("#import-done")).to_be_visible(timeout=60_000)
            expect(clerk.locator("#import-registered")).to_have_text("150")
            expect(clerk.locator("#import-invalid")).to_have_text("1")
            shot(clerk, "13-import-done")

            assert not [m for m in problems if "Content Security Policy" in m], problems
        finally:
            browser.close()
