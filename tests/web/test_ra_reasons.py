"""The RA portal shows a refusal by its stable error code (and the values the service put in
``params``), not by its English wording: every code the portal can show has a Chinese
translation, a changed English text changes nothing, a code without an entry shows the
English reason; and through the test client, representative refusals in Chinese and, after
the language switch (/lang/en), in English."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_babel import Babel, force_locale
from sqlalchemy import select

from ca.models import RevocationReason
from govpki.errors import ConflictError, InvalidError
from govpki.principal import SYSTEM
from ra.idnumber import parse_id_number
from ra.import_models import ImportRow
from ra.subscriber_models import RaRequest
from tests.helpers import csr_pem
from tests.ra.idnumbers import id_number
from tests.web.test_ra_portal import (  # noqa: F401 (the module's portal fixture)
    Portal,
    approve,
    csv_bytes,
    errors_of,
    portal,
    post,
    register,
    registered,
    run_import,
    submit_csr,
    text,
    upload,
)
from web.ra_portal import _MESSAGES, error_message, ra_message, recorded_message, stored_message
from web.ui import TRANSLATIONS

ROOT = Path(__file__).resolve().parents[2]
_CODE = re.compile(r'\bcode="([a-z0-9_]+\.[a-z0-9_.]+)"')
_CJK = re.compile(r"[\u4e00-\u9fff]")

# what the portal's requests reach beyond ra/ and ca/csr.py, ca/revocation.py: the CA's
# issuance and renewal for an RA (ca/services.py), the KMC's storage key, e-mail addresses
OTHER_CODES = {
    "ca.key_in_use",
    "ca.key_compromised",
    "ca.bad_serial",
    "ca.ra_inactive",
    "ca.profile_not_allowed",
    "ca.not_issued",
    "ca.on_hold",
    "ca.revoked",
    "ca.expired",
    "ca.already_renewed",
    "kmc.no_storage_key",
    "govpki.invalid_email",
}


def codes_in(*paths: Path) -> set[str]:
    return {code for path in paths for code in _CODE.findall(path.read_text(encoding="utf-8"))}


def portal_codes() -> set[str]:
    return codes_in(*sorted((ROOT / "ra").glob("*.py")), ROOT / "ca" / "csr.py", ROOT / "ca" / "revocation.py") | (
        OTHER_CODES
    )


class Sample(dict[str, str | int]):
    """Any value a translation names."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


@pytest.fixture(scope="module")
def app() -> Flask:
    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    Babel(app, locale_selector=lambda: "zh_CN")
    return app


@pytest.fixture
def zh(app: Flask) -> Iterator[None]:
    with app.test_request_context(), force_locale("zh_CN"):
        yield


def in_english(app: Flask, code: str, params: dict[str, str | int]) -> str:
    with app.test_request_context(), force_locale("en"):
        return ra_message(code, params, "FALLBACK")


def test_the_enumeration_finds_the_services_codes() -> None:
    codes = portal_codes()
    assert {"ra.self_approval", "ra.duplicate_id_number", "ra.key_in_use", "ra.import_missing_column"} <= codes
    assert {"ca.csr_malformed", "ca.already_revoked"} <= codes
    assert len(codes) > 80
    # the other codes named above are real codes of the modules the portal's services call
    assert codes_in(ROOT / "ca" / "services.py", ROOT / "keymgmt" / "kmc.py", ROOT / "govpki" / "mailaddr.py") >= (
        OTHER_CODES
    )


@pytest.mark.parametrize("code", sorted(portal_codes()))
def test_every_code_the_portal_can_show_has_a_chinese_translation(app: Flask, zh: None, code: str) -> None:
    assert code in _MESSAGES, f"{code}: no entry in web.ra_portal._MESSAGES"
    chinese = ra_message(code, Sample(), "FALLBACK")
    assert "FALLBACK" not in chinese and _CJK.search(chinese), (code, chinese)
    english = in_english(app, code, Sample())
    assert "FALLBACK" not in english and english != chinese, (code, english)


def test_the_variants_by_value_are_translated(zh: None) -> None:
    future = ra_message("ra.id_number_birth_date", {"problem": "future", "date": "2099-12-31"}, "x")
    early = ra_message("ra.id_number_birth_date", {"problem": "too_early", "date": "1799-12-31", "year": 1800}, "x")
    impossible = ra_message("ra.id_number_birth_date", {"problem": "impossible", "date": "1987-02-30"}, "x")
    assert "2099-12-31" in future and "1800" in early and "1987-02-30" in impossible
    assert len({future, early, impossible}) == 3
    assert "不存在" in impossible
    by_number = ra_message("ra.official_not_found", {}, "no official with this ID number")
    by_id = ra_message("ra.official_not_found", {"id": 42}, "no official with id 42")
    assert "42" in by_id and by_number != by_id and _CJK.search(by_number)


def test_the_english_wording_does_not_matter_and_an_unknown_code_shows_the_english_reason(zh: None) -> None:
    # the service's English text may change: the code still picks the translation
    reworded = ConflictError("some new wording of the refusal", code="ra.already_decided", params={"id": 7})
    assert error_message(reworded) == "申请 7 已经审核过。"
    # a service's real error: code and values, no text matching
    with pytest.raises(InvalidError) as raised:
        parse_id_number("12345", dt.date(2026, 1, 1))
    assert raised.value.params == {"count": 5}
    assert error_message(raised.value) == "公民身份号码应为 18 位，此号码为 5 位。"
    # a code without an entry: the English reason, as it is
    shown = error_message(InvalidError("the moon is not a prefecture", code="ra.not_yet_translated"))
    assert "the moon is not a prefecture" in shown
    # a translation whose value the service did not set: the English reason, not an error
    assert "request 9 was decided" in ra_message("ra.already_decided", {}, "request 9 was decided")


def test_a_stored_import_row_reason_is_read_back_into_its_code(zh: None) -> None:
    assert stored_message("has a birth date in the future (2099-12-31)") == ra_message(
        "ra.id_number_birth_date", {"problem": "future", "date": "2099-12-31"}, ""
    )
    assert "新疆" in stored_message("this ID number is already registered, in 新疆; an official is registered once")
    assert stored_message("is required") == ra_message("ra.required", {}, "")
    assert stored_message("is 300 characters; at most 200 are allowed") == ra_message(
        "ra.too_long", {"count": 300, "max": 200}, ""
    )


# ----- through the portal ----------------------------------------------------------------------


def test_an_already_decided_request_in_chinese_and_in_english(portal: Portal) -> None:  # noqa: F811
    official_id = registered(portal)
    request_id = int(submit_csr(portal, official_id, csr_pem()).headers["Location"].rsplit("/", 1)[1])
    assert approve(portal.officer, request_id).status_code == 302
    again = approve(portal.officer, request_id)
    assert again.status_code == 409 and f"申请 {request_id} 已经审核过。" in text(again)
    assert portal.officer.get("/lang/en").status_code == 302
    try:
        again = approve(portal.officer, request_id)
        assert again.status_code == 409 and f"Request {request_id} has already been decided." in text(again)
    finally:
        portal.officer.get("/lang/zh_CN")


def test_another_prefectures_request_in_chinese_and_in_english(portal: Portal) -> None:  # noqa: F811
    official_id = registered(portal)
    request_id = int(submit_csr(portal, official_id, csr_pem()).headers["Location"].rsplit("/", 1)[1])
    page = portal.other_officer.get(f"/ra/requests/{request_id}")
    assert page.status_code == 404 and f"您所在地州不存在申请 {request_id}。" in text(page)
    portal.other_officer.get("/lang/en")
    try:
        page = portal.other_officer.get(f"/ra/requests/{request_id}")
        assert page.status_code == 404 and f"There is no request {request_id} in your prefecture." in text(page)
    finally:
        portal.other_officer.get("/lang/zh_CN")


def test_a_short_id_number_and_a_missing_column_name_their_values(portal: Portal) -> None:  # noqa: F811
    page = register(portal, number="65010219850315")
    assert page.status_code == 422 and "公民身份号码应为 18 位，此号码为 14 位。" in errors_of(page, "id_number")
    missing = upload(portal, csv_bytes([["姓名", "身份证号"], ["张三", id_number(birth="19850315")]]))
    assert missing.status_code == 422 and "缺少必需的列 department" in errors_of(missing, "file")
    portal.clerk.get("/lang/en")
    try:
        page = register(portal, number="65010219850315")
        assert "A resident ID number has 18 characters; this one has 14." in errors_of(page, "id_number")
        missing = upload(portal, csv_bytes([["name", "id_number"], ["x", id_number(birth="19850315")]]))
        assert "lacks the required column(s) department" in errors_of(missing, "file")
    finally:
        portal.clerk.get("/lang/zh_CN")


# ----- refusals kept in the database: a failed request, a rejected import row -------------------


def test_a_request_that_failed_at_the_ca_shows_its_reason_by_code(portal: Portal) -> None:  # noqa: F811
    official_id = registered(portal)
    new_id = int(submit_csr(portal, official_id, csr_pem()).headers["Location"].rsplit("/", 1)[1])
    assert approve(portal.officer, new_id).status_code == 302
    with portal.services.sessions() as session:
        signing = session.get_one(RaRequest, new_id).certificate_serial
    assert signing is not None
    suspend = post(
        portal.clerk,
        f"/ra/certificates/{signing}/change",
        {"kind": "suspend", "reason": "unspecified", "note": "暂停"},
        form_page=f"/ra/certificates/{signing}",
    )
    assert suspend.status_code == 302, text(suspend)
    suspend_id = int(suspend.headers["Location"].rsplit("/", 1)[1])
    with portal.services.sessions() as session:  # revoked meanwhile, directly through the CA
        portal.services.revocation.revoke(session, SYSTEM, signing, reason=RevocationReason.SUPERSEDED)
        session.commit()
    refused = approve(portal.officer, suspend_id)
    assert refused.status_code == 409
    with portal.services.sessions() as session:
        failed = session.get_one(RaRequest, suspend_id)
        assert failed.state == "failed" and failed.failure_code == "ca.already_revoked"
        assert failed.failure_params == {"serial": signing}
        event = next(e for e in failed.events if e.action == "fail")
        assert event.code == "ca.already_revoked" and event.params == {"serial": signing}
        # the English text may be reworded: the page goes by the code
        failed.failure = event.detail = "reworded in English"
        session.commit()
    zh = f"证书 {signing} 已被冻结或吊销。"
    page = text(portal.clerk.get(f"/ra/requests/{suspend_id}"))
    assert page.count(zh) == 2 and "reworded in English" not in page  # the failure and the history row
    assert zh in text(portal.officer.get("/ra"))  # the dashboard's recent activity
    portal.clerk.get("/lang/en")
    try:
        page = text(portal.clerk.get(f"/ra/requests/{suspend_id}"))
        assert page.count(f"Certificate {signing} is already suspended or revoked.") == 2
    finally:
        portal.clerk.get("/lang/zh_CN")


def test_a_rejected_import_row_keeps_its_code_and_values(portal: Portal) -> None:  # noqa: F811
    bad = id_number(birth="20990101")
    job_id = run_import(
        portal,
        upload(portal, csv_bytes([["姓名", "身份证号", "部门"], ["李四", bad, "财政局"], ["王五", "", "财政局"]])),
    )
    with portal.services.sessions() as session:
        rows = session.scalars(select(ImportRow).where(ImportRow.job_id == job_id).order_by(ImportRow.line)).all()
        assert [(r.line, r.code) for r in rows] == [(2, "ra.id_number_birth_date"), (3, "ra.id_number_empty")]
        assert rows[0].params == {"problem": "future", "date": "2099-01-01"}
        for row in rows:
            row.reason = "reworded in English"
        session.commit()
    report = portal.clerk.get(f"/ra/imports/{job_id}/report.csv").get_data(as_text=True)
    page = text(portal.clerk.get(f"/ra/imports/{job_id}"))
    for shown in (report, page):
        assert "reworded in English" not in shown
        assert "请输入 18 位公民身份号码。" in shown
        assert "2099-01-01" in shown


def test_a_request_settled_after_an_interruption_is_shown_by_code(zh: None) -> None:
    shown = recorded_message("old English text", "ra.interrupted_signing", {"serial": "7F01"})
    assert "7F01" in shown and _CJK.search(shown) and "old English text" not in shown
    issued = recorded_message("x", "kmc.no_storage_key", {"issued_serial": "7F02"})
    assert "7F02" in issued and issued.startswith(ra_message("kmc.no_storage_key", {}, "x"))
    # rows written before the codes were kept: read back from the English text
    assert recorded_message("is required", None, None) == ra_message("ra.required", {}, "")
