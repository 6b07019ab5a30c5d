"""The RA clerk portal (/ra) through Flask's test client, CSRF on: a clerk and an officer
of Ürümqi (650100) and a clerk and an officer of Karamay (650200), each signed in with
password and TOTP. The whole flow (register, request with a CSR, approve, PIN slip and
PKCS#12, downloads, revocation), the prefecture wall, bulk enrollment, and the bad input
of issue 5, each refused with a clear message in Chinese (and English) and nothing changed."""

from __future__ import annotations

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

from govpki.audit import AuditEntry
from govpki.principal import SYSTEM, Role
from ra.subscriber_models import Official, RaRequest
from tests.helpers import csr_pem, enrol_totp, initialised_portal
from tests.ra.idnumbers import id_number, wrong_check
from web.container import Services

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
