"""The acceptance review of the RA portal (issue 5): a serial number that is none, the
PKCS#12 before its PIN slip, a service without its responsible official, a renewal with a
pasted CSR, and refusals of forged POSTs where the page offers no form. Each refused with
a message in Chinese (and English) and nothing changed. (Numbers too large for an id in a
URL: tests/web/test_url_ids.py.)"""

from __future__ import annotations

import io

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient
from flask_babel import force_locale
from sqlalchemy import select

from ca.models import CertificateRecord
from ca.services import normalize_serial
from govpki.errors import InvalidError
from ra.import_models import ImportJob
from ra.subscriber_models import RaRequest, ServiceSubscriber
from tests.helpers import csr_pem
from tests.web.test_ra_portal import (  # noqa: F401 (the module's portal fixture)
    Portal,
    alert,
    approve,
    audit_actions,
    chinese,
    count,
    csrf,
    english,
    errors_of,
    portal,
    post,
    registered,
    submit_csr,
    text,
)
from web.ra_portal import error_message


def approved_official(site: Portal, name: str) -> int:
    """A new official request, approved: the certificates are issued, the key awaits hand-over."""
    official_id = registered(site, name=name)
    submitted = submit_csr(site, official_id, csr_pem())
    assert submitted.status_code == 302, text(submitted)
    request_id = int(submitted.headers["Location"].rsplit("/", 1)[1])
    assert approve(site.officer, request_id).status_code == 302
    return request_id


def serials_of(site: Portal, request_id: int) -> tuple[str, str]:
    with site.services.sessions() as db:
        req = db.get_one(RaRequest, request_id)
        assert req.certificate_serial and req.encryption_serial
        return req.certificate_serial, req.encryption_serial


# ----- 2. a serial number in a URL that is no serial number ---------------------------------


def test_a_serial_that_is_no_hexadecimal_number_is_not_found(portal: Portal) -> None:  # noqa: F811
    for url in ("/ra/certificates/zz", "/ra/certificates/zz.pem", "/ra/certificates/%E8%AF%81%E4%B9%A6"):
        page = portal.clerk.get(url)
        assert page.status_code == 404, (url, page.status_code)
    page = portal.clerk.get("/ra/certificates/zz")
    assert alert(page) == "您所在地州不存在证书 zz。"
    assert "未通过校验" not in text(page) and "hexadecimal" not in text(page)
    english(portal.clerk)
    try:
        assert alert(portal.clerk.get("/ra/certificates/zz")) == "There is no certificate zz in your prefecture."
    finally:
        chinese(portal.clerk)
    before = count(portal, RaRequest)
    token = csrf(portal.clerk.get("/ra"))
    change = portal.clerk.post(
        "/ra/certificates/zz/change", data={"csrf_token": token, "kind": "suspend", "reason": "unspecified"}
    )
    assert change.status_code == 404 and "不存在证书 zz" in alert(change)
    assert count(portal, RaRequest) == before


def test_a_bad_serial_has_a_stable_code_and_a_translation(portal: Portal) -> None:  # noqa: F811
    try:
        normalize_serial("zz")
    except InvalidError as error:
        assert error.code == "ca.bad_serial" and error.field == "serial"
        with portal.app.test_request_context(), force_locale("zh_CN"):
            assert error_message(error) == "证书序列号为十六进制数（0-9、a-f，可含冒号）。"
    else:
        raise AssertionError("zz was taken for a serial number")


# ----- 4. the PKCS#12 only after its PIN slip ----------------------------------------------


def test_the_pkcs12_is_refused_before_the_pin_slip_and_nothing_changes(portal: Portal) -> None:  # noqa: F811
    request_id = approved_official(portal, "赵九")
    url = f"/ra/requests/{request_id}"
    pickup = portal.services.config.instance_dir / "ra-pickup" / f"request-{request_id}.sealed"
    held = pickup.read_bytes()
    early = post(portal.clerk, f"{url}/pkcs12", {}, form_page=url)
    assert early.status_code == 409 and early.mimetype == "text/html"
    assert alert(early) == "请先显示密码条：PKCS#12 文件只能用密码条上打印的一次性密码打开。"
    english(portal.clerk)
    try:
        early = post(portal.clerk, f"{url}/pkcs12", {}, form_page=url)
        assert early.status_code == 409
        assert "Show the PIN slip first" in alert(early)
    finally:
        chinese(portal.clerk)
    # nothing changed: the same sealed file, no audit entry, the PIN slip is still offered
    assert pickup.read_bytes() == held
    assert not [a for a in audit_actions(portal, "ra_request", str(request_id)) if a.startswith("ra:pkcs12")]
    assert "显示密码条" in text(portal.clerk.get(url))
    slip = post(portal.clerk, f"{url}/pin-slip", {}, form_page=url)
    assert slip.status_code == 200 and 'id="pkcs12-password"' in text(slip)
    download = post(portal.clerk, f"{url}/pkcs12", {}, form_page=url)
    assert download.status_code == 200 and download.mimetype == "application/x-pkcs12"
    assert audit_actions(portal, "ra_request", str(request_id))[-2:] == ["ra:pkcs12:show", "ra:pkcs12:download"]


# ----- 5. a service needs its responsible official -----------------------------------------


def test_a_service_without_its_responsible_official_is_refused_at_the_field(portal: Portal) -> None:  # noqa: F811
    before = count(portal, ServiceSubscriber)
    data = {"name": "无负责人系统", "department": "财政局", "host_names": "nr.czj.example.gov.cn"}
    for missing in ({"responsible_official_id": ""}, {}):
        page = post(portal.clerk, "/ra/services/new", data | missing)
        assert page.status_code == 422, text(page)
        assert "此项为必填项" in errors_of(page, "responsible_official_id")
        assert "不存在" not in text(page) and '<div class="alert"' not in text(page)
    english(portal.clerk)
    try:
        page = post(portal.clerk, "/ra/services/new", data | {"responsible_official_id": ""})
        assert "This field is required." in errors_of(page, "responsible_official_id")
    finally:
        chinese(portal.clerk)
    # a forged value that is none of the choices is refused at the field too
    forged = post(portal.clerk, "/ra/services/new", data | {"responsible_official_id": "0"})
    assert forged.status_code == 422 and errors_of(forged, "responsible_official_id").strip()
    assert count(portal, ServiceSubscriber) == before


# ----- 6. a renewal with a new key: the CSR pasted ------------------------------------------


def test_a_renewal_with_a_new_key_takes_a_pasted_csr(portal: Portal) -> None:  # noqa: F811
    signing, _encryption = serials_of(portal, approved_official(portal, "钱十"))
    url = f"/ra/certificates/{signing}"
    page = text(portal.clerk.get(url))
    assert 'name="csr_text"' in page and 'name="csr_file"' in page
    before = count(portal, RaRequest)
    junk = post(
        portal.clerk,
        f"{url}/change",
        {"kind": "renew", "reason": "unspecified", "csr_text": "-----BEGIN JUNK-----"},
        form_page=url,
    )
    assert junk.status_code == 422 and "这不是证书请求" in errors_of(junk, "csr_text")
    assert count(portal, RaRequest) == before
    key = ec.generate_private_key(ec.SECP256R1())
    renew = post(
        portal.clerk,
        f"{url}/change",
        {"kind": "renew", "reason": "unspecified", "csr_text": csr_pem(key).decode()},
        form_page=url,
    )
    assert renew.status_code == 302, text(renew)
    request_id = int(renew.headers["Location"].rsplit("/", 1)[1])
    assert approve(portal.officer, request_id).status_code == 302
    with portal.services.sessions() as db:
        req = db.get_one(RaRequest, request_id)
        assert req.kind == "renew" and req.state == "completed", req.failure
        record = db.scalars(select(CertificateRecord).where(CertificateRecord.serial == req.certificate_serial)).one()
        assert record.cert_der is not None
        cert = x509.load_der_x509_certificate(record.cert_der)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


# ----- 7. a refused POST where the page offers no form ---------------------------------------


def test_an_officer_who_forges_an_upload_or_a_request_sees_the_refusal(portal: Portal) -> None:  # noqa: F811
    officer: FlaskClient = portal.officer
    token = csrf(officer.get("/ra"))
    jobs = count(portal, ImportJob)
    upload = officer.post(
        "/ra/imports",
        data={"csrf_token": token, "file": (io.BytesIO("姓名,身份证号,部门\n".encode()), "officials.csv")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 403
    assert alert(upload) == "只有注册机构受理员可以登记用户和提交申请。"
    english(officer)
    try:
        upload = officer.post(
            "/ra/imports",
            data={"csrf_token": token, "file": (io.BytesIO(b"name\n"), "officials.csv")},
            content_type="multipart/form-data",
        )
        assert alert(upload) == "Only an RA clerk registers subscribers and submits requests."
    finally:
        chinese(officer)
    assert count(portal, ImportJob) == jobs
    signing, _encryption = serials_of(portal, approved_official(portal, "孙十一"))
    official_id = registered(portal, name="李十二")
    service = post(
        portal.clerk,
        "/ra/services/new",
        {"name": "伪造测试系统", "department": "财政局", "host_names": "wz.czj.example.gov.cn"}
        | {"responsible_official_id": str(official_id)},
    )
    assert service.status_code == 302, text(service)
    requests = count(portal, RaRequest)
    change = officer.post(
        f"/ra/certificates/{signing}/change", data={"csrf_token": token, "kind": "suspend", "reason": "unspecified"}
    )
    assert change.status_code == 403 and alert(change) == "只有注册机构受理员可以登记用户和提交申请。"
    forged = officer.post(
        service.headers["Location"],
        data={"csrf_token": token, "profile": "service-tls-server", "csr_text": csr_pem().decode()},
    )
    assert forged.status_code == 403 and alert(forged) == "只有注册机构受理员可以登记用户和提交申请。"
    assert count(portal, RaRequest) == requests
