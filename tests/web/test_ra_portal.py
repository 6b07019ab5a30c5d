"""The RA clerk portal (/ra) through Flask's test client, CSRF on: a clerk and an officer
of Ürümqi (650100) and a clerk and an officer of Karamay (650200), each signed in with
password and TOTP. The whole flow (register, request with a CSR, approve, PIN slip and
PKCS#12, downloads, revocation), the prefecture wall, bulk enrollment, and the bad input
of issue 5, each refused with a clear message in Chinese (and English) and nothing changed."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from ca.models import CertificateRecord
from govpki.audit import AuditEntry
from govpki.principal import SYSTEM, Role
from ra.import_models import ImportJob
from ra.subscriber_models import Official, RaRequest
from tests.helpers import csr_pem, enrol_totp, initialised_portal
from tests.ra.idnumbers import id_number, wrong_check
from web.container import Services
from web.ra_portal import RUNNER, ImportRunner

URUMQI = "650100"
KARAMAY = "650200"
NEW_PASSWORD = "Bogda-Peak-2024!"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_numbers = itertools.count(1)
_sequences = itertools.count(101, 2)


@dataclass
class Portal:
    app: Flask
    services: Services
    clerk: FlaskClient
    officer: FlaskClient
    other_clerk: FlaskClient
    other_officer: FlaskClient


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def csrf(page: TestResponse) -> str:
    match = _CSRF.search(text(page))
    assert match, text(page)
    return match.group(1)


def post(client: FlaskClient, path: str, data: Mapping[str, object], *, form_page: str | None = None) -> TestResponse:
    """POST like a browser: GET the page with the form first and take its CSRF token."""
    token = csrf(client.get(form_page or path))
    return client.post(path, data={"csrf_token": token, **data}, content_type="multipart/form-data")


def staff(app: Flask, services: Services, role: Role, prefecture: str) -> FlaskClient:
    """A new RA staff account that has replaced its one-time password and enrolled TOTP."""
    username = f"ra{next(_numbers)}"
    password = f"one-time-{username}-Zq8"
    with services.sessions() as db:
        services.accounts.create(
            db,
            SYSTEM,
            username=username,
            display_name=f"职员 {username}",
            role=role,
            password=password,
            prefecture=prefecture,
        )
        db.commit()
    client = app.test_client()
    assert post(client, "/login", {"username": username, "password": password}).headers["Location"] == "/password"
    changed = post(
        client,
        "/password",
        {"current_password": password, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD},
    )
    assert changed.headers["Location"] == "/totp/enrol"
    enrol_totp(client)
    return client


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("ra-portal")) as (app, services, _password):
        with services.sessions() as db:
            services.kmc.ensure_storage_key(db, SYSTEM)
            db.commit()
        yield Portal(
            app,
            services,
            staff(app, services, Role.RA_CLERK, URUMQI),
            staff(app, services, Role.RA_OFFICER, URUMQI),
            staff(app, services, Role.RA_CLERK, KARAMAY),
            staff(app, services, Role.RA_OFFICER, KARAMAY),
        )


def new_number() -> str:
    return id_number(sequence=f"{next(_sequences) % 1000:03d}", birth="19850315")


def register(portal: Portal, name: str = "张三", number: str | None = None, **extra: str) -> TestResponse:
    data = {"name": name, "id_number": number or new_number(), "department": "财政局", "title": "科员"}
    data |= {"phone": "0991-1234567", "email": "zs@czj.example.gov.cn"} | extra
    return post(portal.clerk, "/ra/officials/new", data)


def registered(portal: Portal, **kw: str) -> int:
    page = register(portal, **kw)
    assert page.status_code == 302, text(page)
    return int(page.headers["Location"].rsplit("/", 1)[1])


def submit_csr(portal: Portal, official_id: int, csr: bytes) -> TestResponse:
    return post(
        portal.clerk,
        f"/ra/officials/{official_id}/request",
        {"csr_file": (io.BytesIO(csr), "official.csr"), "note": "柜台受理"},
    )


def approve(client: FlaskClient, request_id: int, comment: str = "核验身份证原件") -> TestResponse:
    return post(
        client, f"/ra/requests/{request_id}/approve", {"comment": comment}, form_page=f"/ra/requests/{request_id}"
    )


def alert(page: TestResponse) -> str:
    body = text(page)
    found = re.search(r'<div class="alert" role="alert">(.*?)</div>', body, re.S) or re.search(
        r'<p class="reason">(.*?)</p>', body, re.S
    )
    assert found, body
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))).strip()


def errors_of(page: TestResponse, field: str) -> str:
    block = re.search(rf'<ul class="errors" id="{field}-errors">(.*?)</ul>', text(page), re.S)
    assert block, text(page)
    return re.sub(r"<[^>]+>", " ", block.group(1))


def count(portal: Portal, model: type) -> int:
    with portal.services.sessions() as db:
        return db.scalar(select(func.count()).select_from(model)) or 0


def audit_actions(portal: Portal, object_type: str, object_id: str) -> list[str]:
    with portal.services.sessions() as db:
        return list(
            db.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.object_type == object_type, AuditEntry.object_id == object_id)
                .order_by(AuditEntry.seq)
            )
        )


def english(client: FlaskClient) -> None:
    client.set_cookie("govpki_lang", "en")


def chinese(client: FlaskClient) -> None:
    client.set_cookie("govpki_lang", "zh_CN")


# ----- the whole flow ------------------------------------------------------------------------


def test_register_request_approve_hand_over_download_and_revoke(portal: Portal) -> None:
    clerk, officer = portal.clerk, portal.officer
    number = new_number()
    page = register(portal, name="李四", number=number)
    assert page.status_code == 302
    official_id = int(page.headers["Location"].rsplit("/", 1)[1])
    detail = text(clerk.get(f"/ra/officials/{official_id}"))
    assert "李四" in detail and "已登记" in detail
    assert number not in detail and f"{number[:4]}**********{number[-4:]}" in detail
    assert "男" in detail  # derived from the number (odd sequence)

    # the official brings a CSR that claims someone else: the RA puts the registered identity in
    key = ec.generate_private_key(ec.SECP256R1())
    submitted = submit_csr(portal, official_id, csr_pem(key, cn="Administrator"))
    assert submitted.status_code == 302, text(submitted)
    request_id = int(submitted.headers["Location"].rsplit("/", 1)[1])
    assert "已提交" in text(clerk.get(submitted.headers["Location"]))

    # the officer's queue and dashboard show it; the officer approves
    assert f"#{request_id}" in text(officer.get("/ra/approvals"))
    assert f"#{request_id}" in text(officer.get("/ra"))
    done = approve(officer, request_id)
    assert done.status_code == 302, text(done)
    page = officer.get(done.headers["Location"])
    assert "打印密码条" in text(page) or "密码条" in text(page)

    # the clerk shows the PIN slip once and downloads the PKCS#12 once
    request_page = text(clerk.get(f"/ra/requests/{request_id}"))
    assert "交付加密密钥" in request_page
    slip = post(clerk, f"/ra/requests/{request_id}/pin-slip", {}, form_page=f"/ra/requests/{request_id}")
    assert slip.status_code == 200, text(slip)
    password = re.search(r'id="pkcs12-password">([^<]+)<', text(slip))
    assert password
    again = post(clerk, f"/ra/requests/{request_id}/pin-slip", {}, form_page=f"/ra/requests/{request_id}")
    assert again.status_code == 409 and "已经显示过" in alert(again)
    download = post(clerk, f"/ra/requests/{request_id}/pkcs12", {}, form_page=f"/ra/requests/{request_id}")
    assert download.status_code == 200 and download.mimetype == "application/x-pkcs12"
    p12_key, p12_cert, _extra = pkcs12.load_key_and_certificates(download.data, password.group(1).encode())
    assert p12_key is not None and p12_cert is not None
    twice = post(clerk, f"/ra/requests/{request_id}/pkcs12", {}, form_page=f"/ra/requests/{request_id}")
    assert twice.status_code == 409
    assert audit_actions(portal, "ra_request", str(request_id))[-2:] == ["ra:pkcs12:show", "ra:pkcs12:download"]
    assert not list((portal.services.config.instance_dir / "ra-pickup").glob("request-*"))

    # the certificates: pages and downloads
    with portal.services.sessions() as db:
        req = db.get_one(RaRequest, request_id)
        signing, encryption = req.certificate_serial, req.encryption_serial
    assert signing and encryption
    assert encryption == format(p12_cert.serial_number, "x")
    cert_page = text(clerk.get(f"/ra/certificates/{signing}"))
    assert "有效" in cert_page and "official-signing" in cert_page and "李四" in cert_page
    assert "Administrator" not in cert_page
    pem = clerk.get(f"/ra/certificates/{signing}.pem")
    chain = x509.load_pem_x509_certificates(pem.data)
    assert len(chain) == 3 and chain[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "李四"
    der = clerk.get(f"/ra/certificates/{signing}.der")
    assert x509.load_der_x509_certificate(der.data) == chain[0]
    p7 = clerk.get(f"/ra/certificates/{signing}.p7b")
    in_p7 = pkcs7.load_der_pkcs7_certificates(p7.data)  # a SET OF: DER order, not chain order
    assert sorted(c.fingerprint(hashes.SHA256()) for c in in_p7) == sorted(
        c.fingerprint(hashes.SHA256()) for c in chain
    )
    assert chain[0].public_key().public_numbers() == key.public_key().public_numbers()

    # revocation: the clerk asks, the officer approves
    revoke = post(
        clerk,
        f"/ra/certificates/{signing}/change",
        {"kind": "revoke", "reason": "affiliationChanged", "note": "调离"},
        form_page=f"/ra/certificates/{signing}",
    )
    assert revoke.status_code == 302, text(revoke)
    revoke_id = int(revoke.headers["Location"].rsplit("/", 1)[1])
    assert approve(officer, revoke_id, "同意").status_code == 302
    cert_page = text(clerk.get(f"/ra/certificates/{signing}"))
    assert "已吊销" in cert_page and "隶属关系变更" in cert_page
    for action in ("提交", "批准", "完成"):
        assert action in cert_page  # the request history: who did what when
    assert "ra:request:complete" in audit_actions(portal, "ra_request", str(revoke_id))


def test_another_prefecture_sees_nothing_by_list_or_url(portal: Portal) -> None:
    official_id = registered(portal, name="王五")
    submitted = submit_csr(portal, official_id, csr_pem())
    request_id = int(submitted.headers["Location"].rsplit("/", 1)[1])
    other = portal.other_clerk
    assert "王五" not in text(other.get("/ra/officials"))
    assert f'href="/ra/officials/{official_id}"' not in text(other.get("/ra/officials?q=王五"))
    for url in (f"/ra/officials/{official_id}", f"/ra/requests/{request_id}", f"/ra/officials/{official_id}/request"):
        page = other.get(url)
        assert page.status_code == 404, url
        assert "王五" not in text(page)
    assert "不存在" in alert(other.get(f"/ra/officials/{official_id}"))
    # approving in another prefecture: not found, nothing changed
    refused = portal.other_officer.post(
        f"/ra/requests/{request_id}/approve", data={"csrf_token": csrf(portal.other_officer.get("/ra")), "comment": "x"}
    )
    assert refused.status_code == 404
    with portal.services.sessions() as db:
        assert db.get_one(RaRequest, request_id).state == "submitted"


def test_an_officer_reveals_the_number_audited_and_a_clerk_cannot(portal: Portal) -> None:
    number = new_number()
    official_id = registered(portal, number=number)
    assert "显示完整号码" not in text(portal.clerk.get(f"/ra/officials/{official_id}"))
    refused = post(portal.clerk, f"/ra/officials/{official_id}/reveal", {}, form_page=f"/ra/officials/{official_id}")
    assert refused.status_code == 403 and number not in text(refused)
    shown = post(portal.officer, f"/ra/officials/{official_id}/reveal", {}, form_page=f"/ra/officials/{official_id}")
    assert shown.status_code == 200 and number in text(shown)
    assert audit_actions(portal, "official", str(official_id)) == ["ra:official:create", "ra:official:reveal"]
    assert number not in text(portal.officer.get(f"/ra/officials/{official_id}"))


def test_search_by_name_department_and_id_number_and_sql_is_only_text(portal: Portal) -> None:
    number = new_number()
    registered(portal, name="赵六", number=number, department="审计局")
    clerk = portal.clerk
    assert "赵六" in text(clerk.get("/ra/officials?q=赵"))
    assert "赵六" in text(clerk.get("/ra/officials?q=审计"))
    by_number = text(clerk.get(f"/ra/officials?q={number}"))
    assert "赵六" in by_number and number not in by_number.split('name="q"')[1].split("</table>")[-1]
    before = count(portal, Official)
    for fragment in ("' OR '1'='1", "%' OR 1=1 --", "赵'; DROP TABLE officials; --", "%", "_"):
        page = clerk.get("/ra/officials", query_string={"q": fragment})
        assert page.status_code == 200, fragment
        assert "赵六" not in text(page).split("</form>", 1)[1], fragment
    assert count(portal, Official) == before
    bad = clerk.get("/ra/officials", query_string={"q": wrong_check(number)})
    assert bad.status_code == 422 and "校验位" in errors_of(bad, "q")


# ----- bad input ----------------------------------------------------------------------------


def test_bad_id_numbers_are_refused_in_chinese_and_english(portal: Portal) -> None:
    before = count(portal, Official)
    page = register(portal, number=wrong_check(new_number()))
    assert page.status_code == 422 and "校验位" in errors_of(page, "id_number")
    page = register(portal, number=id_number(birth="19870230"))
    assert page.status_code == 422 and "1987-02-30" in errors_of(page, "id_number")
    assert "不存在" in errors_of(page, "id_number")
    english(portal.clerk)
    try:
        page = register(portal, number=wrong_check(new_number()))
        assert "check character" in errors_of(page, "id_number")
        page = register(portal, number=id_number(birth="19870230"))
        assert "does not exist" in errors_of(page, "id_number")
    finally:
        chinese(portal.clerk)
    assert count(portal, Official) == before


def test_a_duplicate_number_names_the_prefecture_that_has_it(portal: Portal) -> None:
    number = new_number()
    registered(portal, number=number)
    before = count(portal, Official)
    page = register(portal, number=number)
    assert page.status_code == 409 and "乌鲁木齐市" in errors_of(page, "id_number")
    other = post(portal.other_clerk, "/ra/officials/new", {"name": "重复", "id_number": number, "department": "税务局"})
    assert other.status_code == 409 and "已在乌鲁木齐市登记" in errors_of(other, "id_number")
    assert count(portal, Official) == before


def test_html_and_script_are_shown_as_text_on_every_page(portal: Portal) -> None:
    evil = "<script>alert(1)</script>"
    official_id = registered(portal, name=f"{evil}", department="<b>局</b>", title="<img src=x onerror=alert(1)>")
    submitted = submit_csr(portal, official_id, csr_pem())
    note_request = post(
        portal.clerk,
        f"/ra/officials/{official_id}/request",
        {"csr_text": csr_pem().decode(), "note": evil},
    )
    assert note_request.status_code == 302, text(note_request)  # another key: a second request
    pages = [
        "/ra/officials",
        f"/ra/officials/{official_id}",
        submitted.headers["Location"],
        note_request.headers["Location"],
        "/ra",
        "/ra/requests",
    ]
    for url in pages:
        body = text(portal.officer.get(url))
        assert "<script>alert" not in body and "<b>局" not in body and "<img src=x" not in body, url
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text(portal.officer.get(f"/ra/officials/{official_id}"))


def test_a_csr_whose_key_is_in_use_or_that_is_no_csr_is_refused(portal: Portal) -> None:
    official_id = registered(portal)
    key = ec.generate_private_key(ec.SECP256R1())
    first = submit_csr(portal, official_id, csr_pem(key))
    assert first.status_code == 302
    before = count(portal, RaRequest)
    again = submit_csr(portal, official_id, csr_pem(key))
    assert again.status_code == 409 and "尚未办结的申请" in errors_of(again, "csr_text")
    request_id = int(first.headers["Location"].rsplit("/", 1)[1])
    assert approve(portal.officer, request_id).status_code == 302
    used = submit_csr(portal, registered(portal), csr_pem(key))
    assert used.status_code == 409 and "已被证书" in errors_of(used, "csr_text")
    for junk in (
        b"hello, I am not a CSR",
        b"\x00\x01\x02garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        page = submit_csr(portal, official_id, junk)
        assert page.status_code == 422 and "这不是证书请求" in errors_of(page, "csr_text"), junk
    english(portal.clerk)
    try:
        page = submit_csr(portal, official_id, b"not a csr")
        assert "This is not a certificate request" in errors_of(page, "csr_text")
        used = submit_csr(portal, official_id, csr_pem(key))
        assert "already in use by certificate" in errors_of(used, "csr_text")
    finally:
        chinese(portal.clerk)
    empty = post(portal.clerk, f"/ra/officials/{official_id}/request", {"csr_text": ""})
    assert empty.status_code == 422 and "请选择证书请求文件或粘贴" in errors_of(empty, "csr_text")
    assert count(portal, RaRequest) == before


def test_a_10_mb_upload_gets_a_clear_message_not_an_error_page(portal: Portal) -> None:
    official_id = registered(portal)
    before = (count(portal, RaRequest), count(portal, ImportJob))
    for url, field in ((f"/ra/officials/{official_id}/request", "csr_file"), ("/ra/imports", "file")):
        big = io.BytesIO(b"A" * (10 * 1024 * 1024))
        token = csrf(portal.clerk.get(url))
        page = portal.clerk.post(
            url, data={"csrf_token": token, field: (big, "huge.bin")}, content_type="multipart/form-data"
        )
        assert page.status_code == 303 and page.headers["Location"] == url, page.status_code
        shown = text(portal.clerk.get(url))
        assert "文件过大：上传文件最大为 1024 KB。未做任何更改。" in shown
    assert (count(portal, RaRequest), count(portal, ImportJob)) == before


def test_a_clerk_cannot_approve_and_an_officer_cannot_submit(portal: Portal) -> None:
    official_id = registered(portal)
    request_id = int(submit_csr(portal, official_id, csr_pem()).headers["Location"].rsplit("/", 1)[1])
    own = approve(portal.clerk, request_id)  # the submitter: roles are exclusive, a clerk never approves
    assert own.status_code == 403 and "只有申请所在地州的注册机构审核员可以批准或驳回" in alert(own)
    english(portal.clerk)
    try:
        own = approve(portal.clerk, request_id)
        assert "Only an RA officer of the request's prefecture approves or rejects it." in alert(own).replace(
            "&#39;", "'"
        )
    finally:
        chinese(portal.clerk)
    token = csrf(portal.officer.get("/ra"))
    refused = portal.officer.post(
        f"/ra/officials/{official_id}/request", data={"csrf_token": token, "csr_text": csr_pem().decode()}
    )
    assert refused.status_code == 403 and "只有注册机构受理员" in alert(refused)
    with portal.services.sessions() as db:
        assert db.get_one(RaRequest, request_id).state == "submitted"


def test_rejection_needs_a_reason_and_is_recorded(portal: Portal) -> None:
    official_id = registered(portal)
    request_id = int(submit_csr(portal, official_id, csr_pem()).headers["Location"].rsplit("/", 1)[1])
    url = f"/ra/requests/{request_id}"
    empty = post(portal.officer, f"{url}/reject", {"comment": ""}, form_page=url)
    assert empty.status_code == 422 and "请说明驳回原因" in errors_of(empty, "comment")
    done = post(portal.officer, f"{url}/reject", {"comment": "<i>照片不清晰</i>"}, form_page=url)
    assert done.status_code == 302
    page = text(portal.clerk.get(url))
    assert "已驳回" in page and "&lt;i&gt;照片不清晰&lt;/i&gt;" in page
    late = approve(portal.officer, request_id)
    assert late.status_code in (404, 409)


def test_a_stale_form_is_refused_and_changes_nothing(portal: Portal) -> None:
    before = count(portal, Official)
    page = portal.clerk.post(
        "/ra/officials/new",
        data={"csrf_token": "stale-token", "name": "过期", "id_number": new_number(), "department": "财政局"},
    )
    assert page.status_code == 400
    assert "表单已过期" in text(page) or "重新加载" in text(page)
    assert count(portal, Official) == before


# ----- bulk enrollment ----------------------------------------------------------------------


def csv_bytes(rows: list[list[str]], encoding: str = "utf-8-sig") -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode(encoding)


def upload(portal: Portal, data: bytes, name: str = "officials.csv") -> TestResponse:
    return post(portal.clerk, "/ra/imports", {"file": (io.BytesIO(data), name)})


def run_import(portal: Portal, page: TestResponse) -> int:
    assert page.status_code == 302, text(page)
    job_id = int(page.headers["Location"].rsplit("/", 1)[1])
    runner: ImportRunner = portal.app.extensions[RUNNER]
    runner.wait(job_id, timeout=300)
    return job_id


def test_bulk_enrollment_utf8_and_gb18030_reports_bad_rows_and_never_registers_twice(portal: Portal) -> None:
    numbers = [id_number(birth="19900101", sequence=f"{n:03d}") for n in range(501, 561)]
    header = ["姓名", "身份证号", "部门", "职务", "电话", "邮箱"]
    rows = [header] + [[f"批量{i}", n, "教育局", "科员", "", ""] for i, n in enumerate(numbers)]
    rows.append(["坏校验", wrong_check(new_number()), "教育局", "", "", ""])
    rows.append(["坏日期", id_number(birth="19870230"), "教育局", "", "", ""])
    rows.append(["<script>x</script>", id_number(birth="19910101", sequence="777"), "", "", "", ""])
    rows.append(["=HYPERLINK(1)", id_number(birth="19910101", sequence="779"), "教育局", "", "abc", ""])
    before = count(portal, Official)
    job_id = run_import(portal, upload(portal, csv_bytes(rows)))
    progress = portal.clerk.get(f"/ra/imports/{job_id}/progress.json").get_json()
    assert progress | {"id": 0} == {
        "id": 0,
        "state": "done",
        "total": 64,
        "processed": 64,
        "registered": 60,
        "duplicates": 0,
        "invalid": 4,
        "percent": 100,
        "finished": True,
    }
    assert count(portal, Official) == before + 60
    page = text(portal.clerk.get(f"/ra/imports/{job_id}"))
    assert "导入已完成" in page and "校验位（第 18 位）错误" in page and "&lt;script&gt;x&lt;/script&gt;" in page
    report = portal.clerk.get(f"/ra/imports/{job_id}/report.csv")
    lines = list(csv.reader(io.StringIO(report.data.decode("utf-8-sig"))))
    assert lines[0] == ["行号", "状态", "姓名", "公民身份号码", "字段", "原因"]
    bad = {int(r[0]): r for r in lines[1:] if r[1] != "已登记"}
    assert sorted(bad) == [62, 63, 64, 65]  # the header is line 1
    assert "校验位" in bad[62][5] and bad[62][4] == "公民身份号码"
    assert "1987-02-30" in bad[63][5]
    assert bad[64][4] == "部门" and "必填" in bad[64][5]
    assert bad[65][2] == "'=HYPERLINK(1)" and bad[65][4] == "电话"
    assert not any(n in report.data.decode("utf-8-sig") for n in numbers)  # masked only

    # the same file again, as GB18030 with English headers: nothing registered twice
    english_rows = [["name", "id_number", "department"]] + [[r[0], r[1], r[2]] for r in rows[1:]]
    again = run_import(portal, upload(portal, csv_bytes(english_rows, "gb18030"), "官员.csv"))
    progress = portal.clerk.get(f"/ra/imports/{again}/progress.json").get_json()
    # (without the phone column the "=HYPERLINK(1)" row is valid now and is registered)
    assert (progress["registered"], progress["duplicates"], progress["invalid"]) == (1, 60, 3)
    assert count(portal, Official) == before + 61
    with portal.services.sessions() as db:
        job = db.get_one(ImportJob, again)
        assert job.encoding == "gb18030" and job.payload_sealed is None
    # another prefecture sees neither the job nor its report
    assert portal.other_clerk.get(f"/ra/imports/{job_id}").status_code == 404
    assert portal.other_clerk.get(f"/ra/imports/{job_id}/report.csv").status_code == 404


def test_a_csv_with_a_missing_column_or_a_broken_encoding_imports_nothing(portal: Portal) -> None:
    before = (count(portal, Official), count(portal, ImportJob))
    missing = upload(portal, csv_bytes([["姓名", "部门"], ["张三", "财政局"]]))
    assert missing.status_code == 422 and "缺少必需的列 id_number" in errors_of(missing, "file")
    broken = upload(portal, "姓名,身份证号,部门\n张三,".encode() + b"\xff\xfe\x80\x81\n")
    assert broken.status_code == 422 and "既不是 UTF-8 也不是 GB18030" in errors_of(broken, "file")
    empty = upload(portal, csv_bytes([["name", "id_number", "department"]]))
    assert empty.status_code == 422 and "只有表头" in errors_of(empty, "file")
    english(portal.clerk)
    try:
        missing = upload(portal, csv_bytes([["name", "department"], ["x", "y"]]))
        assert "lacks the required column(s) id_number" in errors_of(missing, "file")
    finally:
        chinese(portal.clerk)
    assert (count(portal, Official), count(portal, ImportJob)) == before


def test_the_dashboard_lists_certificates_expiring_within_30_days(portal: Portal) -> None:
    official_id = registered(portal, name="孙七")
    request_id = int(submit_csr(portal, official_id, csr_pem()).headers["Location"].rsplit("/", 1)[1])
    assert approve(portal.officer, request_id).status_code == 302
    with portal.services.sessions() as db:
        serial = db.get_one(RaRequest, request_id).certificate_serial
        record = db.scalars(select(CertificateRecord).where(CertificateRecord.serial == serial)).one()
        assert serial is not None and f'href="/ra/certificates/{serial}"' not in text(portal.clerk.get("/ra"))
        record.not_after = portal.services.clock.now() + dt.timedelta(days=10)  # as if issued long ago
        db.commit()
    assert f'href="/ra/certificates/{serial}"' in text(portal.clerk.get("/ra"))
    assert f'href="/ra/certificates/{serial}"' not in text(portal.other_clerk.get("/ra"))


def test_a_service_is_registered_and_gets_a_tls_server_certificate(portal: Portal) -> None:
    official_id = registered(portal, name="周八")
    form = post(
        portal.clerk,
        "/ra/services/new",
        {
            "name": "<u>非税收入系统</u>",
            "department": "财政局",
            "host_names": "fs.czj.example.gov.cn\nwww.fs.czj.example.gov.cn",
            "ip_addresses": "10.65.1.20",
            "responsible_official_id": str(official_id),
        },
    )
    assert form.status_code == 302, text(form)
    url = form.headers["Location"]
    assert "&lt;u&gt;非税收入系统&lt;/u&gt;" in text(portal.clerk.get("/ra/services"))
    bad = post(portal.clerk, url, {"profile": "service-tls-server", "csr_text": "-----BEGIN JUNK-----"})
    assert bad.status_code == 422 and "这不是证书请求" in errors_of(bad, "csr_text")
    made = post(portal.clerk, url, {"profile": "service-tls-server", "csr_text": csr_pem().decode()})
    assert made.status_code == 302, text(made)
    request_id = int(made.headers["Location"].rsplit("/", 1)[1])
    assert approve(portal.officer, request_id).status_code == 302
    page = text(portal.clerk.get(url))
    assert "service-tls-server" in page and f"#{request_id}" in page and "有效" in page
    assert portal.other_clerk.get(url).status_code == 404
    with portal.services.sessions() as db:
        serial = db.get_one(RaRequest, request_id).certificate_serial
    cert = x509.load_der_x509_certificate(portal.clerk.get(f"/ra/certificates/{serial}.der").data)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fs.czj.example.gov.cn", "www.fs.czj.example.gov.cn"]
