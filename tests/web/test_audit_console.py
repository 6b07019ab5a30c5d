"""The auditors' console through Flask's test client (CSRF on): only security auditors
(403 for the others, from the service layer), filters, keyset pagination, entry detail,
the verification badge and button, charts and the evidence download."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from authz.evidence import verify_bundle
from ca.evidence import verify_transparency
from govpki import audit
from govpki.audit import AuditEntry, AuditVerification
from govpki.principal import SYSTEM, Role
from tests.helpers import csr_pem, initialised_portal
from tests.web.test_ui import Portal, csrf, signed_in, text


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("audit-console")) as (app, services, password):
        yield Portal(app, services, password)


def _count(portal: Portal, model: type, *where: object) -> int:
    with portal.services.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("role", [Role.SECURITY_ADMIN, Role.CA_OPERATOR, Role.SYSTEM_ADMIN])
def test_other_roles_get_403_everywhere(portal: Portal, role: Role) -> None:
    client = signed_in(portal, role)
    dashboard = client.get("/dashboard")
    assert 'href="/audit"' not in text(dashboard)
    token = csrf(dashboard)
    for path in ("/audit", "/audit/entries/1", "/audit/charts", "/audit?action=ca"):
        assert client.get(path).status_code == 403, path
    before = _count(portal, AuditVerification)
    assert client.post("/audit/verify", data={"csrf_token": token}).status_code == 403
    assert client.post("/audit/export", data={"csrf_token": token, "action": "ra"}).status_code == 403
    assert _count(portal, AuditVerification) == before
    assert _count(portal, AuditEntry, AuditEntry.action == "authz:audit:export", AuditEntry.actor.contains("user")) == 0


def test_signed_out_is_sent_to_sign_in(portal: Portal) -> None:
    response = portal.app.test_client().get("/audit")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_search_filters_and_pages_by_seq(portal: Portal) -> None:
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    assert 'href="/audit"' in text(client.get("/dashboard"))
    page = client.get("/audit")
    assert page.status_code == 200
    body = text(page)
    assert 'id="verification-status"' in body and "<table" in body
    seqs = [int(s) for s in re.findall(r'href="/audit/entries/(\d+)"', body)]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) <= 50

    # prefecture: by code, derived from the RA entries' details/object
    body = text(client.get("/audit?action=ra:authority&prefecture=650100"))
    assert len(re.findall(r'href="/audit/entries/(\d+)"', body)) == 1 and "乌鲁木齐市" in body

    # keyset pagination: 14 RA entries, 50 a page is one page; with more entries, "older" links by seq
    with portal.services.sessions() as db:
        for i in range(60):
            audit.record(db, SYSTEM, "test:console:page", object_type="thing", object_id=str(i))
        db.commit()
    first = text(client.get("/audit?action=test:console"))
    seqs = [int(s) for s in re.findall(r'href="/audit/entries/(\d+)"', first)]
    assert len(seqs) == 50
    older = re.search(r'href="(/audit\?[^"]*before=(\d+)[^"]*)"', first)
    assert older and int(older.group(2)) == seqs[-1] and "offset" not in older.group(1)
    second = text(client.get(older.group(1).replace("&amp;", "&")))
    rest = [int(s) for s in re.findall(r'href="/audit/entries/(\d+)"', second)]
    assert len(rest) == 10 and max(rest) < min(seqs) and "after=" in second

    # outcome and actor
    with portal.services.sessions() as db:
        failed = audit.record(
            db, "anonymous:10.9.9.9", "test:console:probe", object_type="thing", object_id="p", outcome="failure"
        )
        db.commit()
    body = text(client.get("/audit?outcome=failure&actor=10.9.9.9"))
    assert re.findall(r'href="/audit/entries/(\d+)"', body) == [str(failed.seq)]
    body = text(client.get("/audit?outcome=success&actor=10.9.9.9"))
    assert re.findall(r'href="/audit/entries/(\d+)"', body) == [] and 'class="empty"' in body


def test_bad_filter_values_are_shown_next_to_the_field(portal: Portal) -> None:
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    response = client.get("/audit?since=yesterday&actor=x")
    assert response.status_code == 422
    body = text(response)
    assert 'id="since-errors"' in body and 'aria-invalid="true"' in body
    assert client.get("/audit?before=abc").status_code == 422


def test_entry_detail_shows_every_field_hashes_and_before_after(portal: Portal) -> None:
    with portal.services.sessions() as db:
        ref = audit.record(
            db,
            SYSTEM,
            "test:binding:update",
            object_type="binding",
            object_id="tax-1",
            details={"application": "tax-portal", "before": {"port": 443}, "after": {"port": 8443}},
        )
        db.commit()
        entry = db.get(AuditEntry, ref.seq)
        assert entry is not None
        prev_hash = entry.prev_hash
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    body = text(client.get(f"/audit/entries/{ref.seq}"))
    assert ref.hash in body and prev_hash in body
    assert "test:binding:update" in body and "tax-portal" in body
    assert '<td class="mono">443</td>' in body and '<td class="mono">8443</td>' in body
    assert "&#34;port&#34;" in body or '"port"' in body  # the details JSON, pretty
    assert client.get("/audit/entries/999999999").status_code == 404
    body = text(client.get("/audit?application=tax-portal"))
    assert f'href="/audit/entries/{ref.seq}"' in body


def test_verify_button_needs_csrf_and_updates_the_badge(portal: Portal) -> None:
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    page = client.get("/audit")
    before = _count(portal, AuditVerification)
    assert client.post("/audit/verify", data={"next": "/audit"}).status_code == 400
    assert _count(portal, AuditVerification) == before
    response = client.post("/audit/verify", data={"csrf_token": csrf(page), "next": "/audit?action=ca"})
    assert response.status_code == 302 and response.headers["Location"] == "/audit?action=ca"
    assert _count(portal, AuditVerification) == before + 1
    body = text(client.get("/audit"))
    assert re.search(r'class="badge badge-ok" id="verification-status"', body)
    assert "校验通过" in body
    client.get("/lang/en")
    english = text(client.get("/audit/charts"))
    assert "Failed sign-ins per hour" in english and ">verified</span>" in english
    # an off-site "next" is not followed
    response = client.post("/audit/verify", data={"csrf_token": csrf(page), "next": "//evil.example/audit"})
    assert response.headers["Location"] == "/audit"


def test_export_downloads_a_bundle_that_verifies(portal: Portal, tmp_path: Path) -> None:
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    page = client.get("/audit?action=ra:authority:create")
    body = text(page)
    assert 'name="action" value="ra:authority:create"' in body  # the export form carries the filter
    assert client.post("/audit/export", data={"action": "ra:authority:create"}).status_code == 400  # no CSRF
    response = client.post("/audit/export", data={"csrf_token": csrf(page), "action": "ra:authority:create"})
    assert response.status_code == 200, text(response)
    response.close()  # the checkpoint signed for the export is written to the file after the commit
    assert response.mimetype == "application/x-tar"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="audit-evidence-')
    path = tmp_path / "bundle.tar"
    path.write_bytes(response.data)
    report = verify_bundle(path, checks=[verify_transparency])
    assert report.ok, report.problems
    assert report.matched == 14
    lines = portal.services.config.checkpoint_file.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["seq"] == report.last_seq  # signed for the export, committed, then exported
    with portal.services.sessions() as db:
        exported = db.scalars(
            select(AuditEntry).where(AuditEntry.action == "authz:audit:export").order_by(AuditEntry.seq.desc())
        ).first()
    assert exported is not None and json.loads(exported.details)["bundle_sha256"] == report.bundle_sha256
    # a bad filter changes nothing
    count = _count(portal, AuditEntry, AuditEntry.action == "authz:audit:export")
    response = client.post("/audit/export", data={"csrf_token": csrf(page), "since": "soon"})
    assert response.status_code == 422
    assert _count(portal, AuditEntry, AuditEntry.action == "authz:audit:export") == count


def test_charts_are_inline_svg_with_titles_and_numbers(portal: Portal) -> None:
    fails = portal.app.test_client()
    page = fails.get("/login")
    fails.post("/login", data={"csrf_token": csrf(page), "username": "nobody", "password": "wrong-password-x"})
    with portal.services.sessions() as db:
        record = portal.services.ca.issue(
            db, SYSTEM, profile="service-tls-server", csr=csr_pem(cn="hami.example.gov.cn"), prefecture="650500"
        )
        db.commit()
        serial = record.serial
    client = signed_in(portal, Role.SECURITY_AUDITOR)
    body = text(client.get("/audit?prefecture=650500&action=ca:certificate:issue"))
    assert len(re.findall(r'href="/audit/entries/(\d+)"', body)) == 1 and serial in body
    response = client.get("/audit/charts")
    assert response.status_code == 200
    body = text(response)
    assert body.count("<svg") >= 3 and "<script" not in body
    sign_ins = re.search(r'<svg[^>]*id="chart-sign-ins".*?</svg>', body, re.S)
    assert sign_ins and "<title" in sign_ins.group(0)
    values = [int(v) for v in re.findall(r'font-size="11" fill="#1f2933">(\d+)</text>', sign_ins.group(0))]
    assert len(values) == 24 and values[-1] >= 1
    assert re.search(r'id="chart-pending"', body)
    assert "哈密市 (650500)" in body  # issuance per prefecture, by the certificates' prefecture
