"""The security administrator's pages for registered applications (OAuth / OIDC clients):
/applications (list and register), disable, bind and remove a client certificate, through
Flask's test client with CSRF protection on. Every refused form is a 422 with the reason at
its field, in Chinese by default, and changes nothing (no row, no audit entry)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask.testing import FlaskClient
from flask_babel import force_locale
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from authz.applications import KNOWN_SCOPES
from authz.models import Application
from authz.oidc_models import OidcToken
from govpki.audit import AuditEntry
from govpki.errors import ConflictError, UnauthenticatedError
from govpki.principal import SYSTEM, Role
from tests.helpers import enrol_totp, initialised_portal
from tests.web.oidc_helpers import register_client, two_factor_client
from tests.web.test_oidc import REDIRECT, authorize, basic, code_of, exchange, userinfo
from tests.web.test_ui import (
    NEW_PASSWORD,
    Portal,
    csrf,
    field_errors,
    post_form,
    sign_in,
    signed_in,
    signed_in_as,
    text,
)
from web.apps_ui import message as app_message
from web.forms import SCOPE_CHOICES

_numbers = itertools.count(1)
_CLIENT_ID = re.compile(r'id="client-id">(app_[0-9a-f]+)<')
_SECRET = re.compile(r'id="client-secret"[^>]*>([A-Za-z0-9_-]+)<')


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with initialised_portal(tmp_path_factory.mktemp("apps-ui")) as (app, services, password):
        yield Portal(app, services, password)


def unique(prefix: str = "app") -> str:
    return f"{prefix}-{next(_numbers)}"


def counts(portal: Portal) -> tuple[int, int]:
    """(applications, audit entries)"""
    with portal.services.sessions() as db:
        return (
            db.scalar(select(func.count()).select_from(Application)) or 0,
            db.scalar(select(func.count()).select_from(AuditEntry)) or 0,
        )


def application(portal: Portal, name: str) -> Application:
    with portal.services.sessions() as db:
        found = db.scalar(select(Application).where(Application.name == name))
        assert found is not None
        db.expunge(found)
        return found


def last_audit(portal: Portal, client_id: str) -> AuditEntry:
    with portal.services.sessions() as db:
        entry = db.scalars(
            select(AuditEntry).where(AuditEntry.object_id == client_id).order_by(AuditEntry.seq.desc())
        ).first()
        assert entry is not None
        db.expunge(entry)
        return entry


def register(client: FlaskClient, **fields: str | list[str]) -> TestResponse:
    data: dict[str, str | list[str]] = {"client_type": "confidential", **fields}
    token = csrf(client.get("/applications"))
    return client.post("/applications", data={"csrf_token": token, **data})


def registered(portal: Portal, client: FlaskClient, **fields: str | list[str]) -> tuple[str, str]:
    """Register a confidential audit:write application; (name, client_id)."""
    name = unique()
    page = register(client, name=name, scopes=["audit:write"], **fields)
    assert page.status_code == 200, text(page)
    return name, application(portal, name).client_id


def client_certificate(name: str, *, ca: bool = False, client_auth: bool = True) -> bytes:
    """A self-signed certificate (PEM): the service checks its form, not its issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client_auth else ExtendedKeyUsageOID.SERVER_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def signed_in_clerk(portal: Portal) -> FlaskClient:
    """An RA clerk (of a prefecture) that has changed its password and enrolled TOTP."""
    username = f"clerk{next(_numbers)}"
    password = f"one-time-{username}-Xq7"
    with portal.services.sessions() as db:
        portal.services.accounts.create(
            db,
            SYSTEM,
            username=username,
            display_name=f"Clerk {username}",
            role=Role.RA_CLERK,
            password=password,
            prefecture=portal.services.region.prefectures[0].code,
        )
        db.commit()
    client = portal.app.test_client()
    sign_in(client, username, password)
    changed = post_form(
        client,
        "/password",
        {"current_password": password, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD},
    )
    assert changed.status_code == 302
    enrol_totp(client)
    return client


# ----- who may see the pages -----------------------------------------------------------


def test_every_known_scope_is_offered() -> None:
    assert {choice.value for choice in SCOPE_CHOICES} == KNOWN_SCOPES


def test_anonymous_visitors_are_sent_to_sign_in(portal: Portal) -> None:
    page = portal.app.test_client().get("/applications")
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("role", [Role.SECURITY_AUDITOR, Role.SYSTEM_ADMIN, Role.RA_CLERK])
def test_other_roles_are_refused(portal: Portal, role: Role) -> None:
    client = signed_in_clerk(portal) if role is Role.RA_CLERK else signed_in(portal, role)
    name, client_id = registered(portal, signed_in(portal))
    before = counts(portal)
    page = client.get("/applications")
    assert page.status_code == 403
    assert "只有安全管理员可以管理应用系统" in text(page)
    assert 'href="/applications"' not in text(client.get("/dashboard"))
    token = csrf(client.get("/dashboard"))
    for path, data in (
        ("/applications", {"name": "sneaky-app", "client_type": "confidential", "scopes": "audit:write"}),
        (f"/applications/{client_id}/disable", {}),
        (f"/applications/{client_id}/certificate", {"certificate_text": "x"}),
        (f"/applications/{client_id}/certificate/remove", {}),
        (f"/applications/{client_id}/edit", {"scopes": "authz:decide"}),
        (f"/applications/{client_id}/rotate-secret", {}),
        (f"/applications/{client_id}/enable", {}),
    ):
        assert client.post(path, data={"csrf_token": token, **data}).status_code == 403, path
    assert client.get(f"/applications/{client_id}/certificate").status_code == 403
    assert client.get(f"/applications/{client_id}/edit").status_code == 403
    assert counts(portal) == before
    assert not application(portal, name).disabled


def test_the_navigation_links_applications_and_the_explain_page(portal: Portal) -> None:
    admin = text(signed_in(portal).get("/dashboard"))
    assert 'href="/applications"' in admin and ">应用系统<" in admin
    assert 'href="/authz/explain"' in admin
    auditor = text(signed_in(portal, Role.SECURITY_AUDITOR).get("/dashboard"))
    assert 'href="/authz/explain"' not in auditor  # auditors read the audit only
    assert 'href="/applications"' not in auditor
    operator = text(signed_in(portal, Role.CA_OPERATOR).get("/dashboard"))
    assert 'href="/authz/explain"' not in operator


# ----- registering -----------------------------------------------------------------------


def test_a_confidential_client_gets_a_secret_shown_once_that_works(portal: Portal) -> None:
    client, username = signed_in_as(portal)
    name = unique("oa-system")
    apps, entries = counts(portal)
    page = register(client, name=name, scopes=["audit:write", "authz:decide"])
    assert page.status_code == 200
    body = text(page)
    assert "请立即复制客户端密钥：它只显示这一次。" in body
    client_id = _CLIENT_ID.search(body)
    secret = _SECRET.search(body)
    assert client_id and secret
    client_id_value, secret_value = client_id.group(1), secret.group(1)

    row = application(portal, name)
    assert row.client_id == client_id_value
    assert row.client_type == "confidential"
    assert row.scopes == "audit:write authz:decide"
    assert row.secret_sha256 == hashlib.sha256(secret_value.encode("ascii")).hexdigest()
    assert counts(portal) == (apps + 1, entries + 1)
    entry = last_audit(portal, client_id_value)
    assert entry.action == "authz:application:register"
    assert entry.actor.endswith(username)
    assert json.loads(entry.details or "{}")["client_type"] == "confidential"

    with portal.services.sessions() as db:
        principal = portal.services.applications.authenticate(db, client_id_value, secret_value)
    assert principal.name == name and "audit:write" in principal.scopes

    listing = text(client.get("/applications"))
    assert name in listing and client_id_value in listing
    assert secret_value not in listing
    assert "机密客户端" in listing and "有效" in listing


def test_a_public_oidc_client_has_no_secret_and_keeps_its_uris(portal: Portal) -> None:
    client = signed_in(portal)
    name = unique("portal-spa")
    page = register(
        client,
        name=name,
        client_type="public",
        scopes=["openid", "profile"],
        redirect_uris="https://spa.example.gov.cn/callback\r\n\r\n  http://127.0.0.1:8400/cb  \n",
        post_logout_redirect_uris="https://spa.example.gov.cn/bye",
    )
    assert page.status_code == 200
    body = text(page)
    assert _SECRET.search(body) is None
    assert "公开客户端没有客户端密钥" in body
    row = application(portal, name)
    assert row.client_type == "public" and row.secret_sha256 is None
    assert row.scopes == "openid profile"
    assert json.loads(row.redirect_uris) == ["https://spa.example.gov.cn/callback", "http://127.0.0.1:8400/cb"]
    assert json.loads(row.post_logout_redirect_uris) == ["https://spa.example.gov.cn/bye"]
    entry = last_audit(portal, row.client_id)
    assert json.loads(entry.details or "{}")["redirect_uris"] == json.loads(row.redirect_uris)
    listing = text(client.get("/applications"))
    assert "https://spa.example.gov.cn/callback" in listing and "https://spa.example.gov.cn/bye" in listing


TAKEN = "taken-app"

BAD_FORMS = [
    pytest.param({"name": ""}, "name", "请输入应用系统名称。", id="empty-name"),
    pytest.param({"name": "OA System"}, "name", "须为 3 至 48 个小写字母、数字或 “-”，以字母开头。", id="bad-name"),
    pytest.param({"name": TAKEN}, "name", f"名为 {TAKEN} 的应用系统已经注册。", id="duplicate-name"),
    pytest.param({"client_type": "hybrid"}, "client_type", "请选择机密客户端或公开客户端。", id="bad-type"),
    pytest.param(
        {"scopes": ["audit:write", "root:everything"]},
        "scopes",
        "root:everything 不是本服务提供的授权范围。",
        id="unknown-scope",
    ),
    pytest.param(
        {"client_type": "public", "scopes": ["openid", "audit:write"], "redirect_uris": "https://a.example/cb"},
        "scopes",
        "公开客户端没有客户端密钥，只能申请 OpenID Connect 授权范围，不能申请 audit:write。",
        id="public-with-secret-scope",
    ),
    pytest.param(
        {"client_type": "public", "scopes": ["profile"]},
        "scopes",
        "公开客户端用于用户登录，必须申请授权范围 openid。",
        id="public-without-openid",
    ),
    pytest.param(
        {"scopes": ["openid"], "redirect_uris": "https://oa.example.gov.cn/cb#top"},
        "redirect_uris",
        "https://oa.example.gov.cn/cb#top 不得带有片段标识（#…）。",
        id="fragment",
    ),
    pytest.param(
        {"scopes": ["openid"], "redirect_uris": "/oidc/callback"},
        "redirect_uris",
        "/oidc/callback 不是完整的 https 地址。",
        id="relative-uri",
    ),
    pytest.param(
        {"scopes": ["openid"], "redirect_uris": "http://oa.example.gov.cn/cb"},
        "redirect_uris",
        "http://oa.example.gov.cn/cb：仅 127.0.0.1 或 localhost 可使用 http，其他地址请使用 https。",
        id="http-not-loopback",
    ),
    pytest.param(
        {"scopes": ["openid"]},
        "redirect_uris",
        "OpenID Connect 客户端（授权范围 openid）至少需要一个重定向地址。",
        id="oidc-without-redirect",
    ),
    pytest.param(
        {"scopes": ["audit:write"], "redirect_uris": "https://oa.example.gov.cn/cb"},
        "redirect_uris",
        "只有 OpenID Connect 客户端（授权范围 openid）才能填写重定向地址。",
        id="redirect-without-openid",
    ),
    pytest.param(
        {
            "scopes": ["openid"],
            "redirect_uris": "https://oa.example.gov.cn/cb",
            "post_logout_redirect_uris": "https://oa.example.gov.cn/bye#x",
        },
        "post_logout_redirect_uris",
        "https://oa.example.gov.cn/bye#x 不得带有片段标识（#…）。",
        id="post-logout-fragment",
    ),
]


@pytest.fixture(scope="module")
def admin(portal: Portal) -> FlaskClient:
    client = signed_in(portal)
    if register(client, name=TAKEN, scopes=["audit:write"]).status_code != 200:
        raise AssertionError("the application to collide with was not registered")
    return client


@pytest.mark.parametrize(("fields", "field", "message"), BAD_FORMS)
def test_bad_input_is_shown_at_its_field_and_changes_nothing(
    portal: Portal, admin: FlaskClient, fields: dict[str, str | list[str]], field: str, message: str
) -> None:
    before = counts(portal)
    data: dict[str, str | list[str]] = {"name": unique("refused"), **fields}
    page = register(admin, **data)
    assert page.status_code == 422
    assert field_errors(text(page), field) == [message]
    assert counts(portal) == before


def test_bad_input_in_english(portal: Portal) -> None:
    client = signed_in(portal)
    client.get("/lang/en")
    before = counts(portal)
    page = register(client, name="refused-en", scopes=["openid"], redirect_uris="https://oa.example/cb#x")
    assert page.status_code == 422
    assert field_errors(text(page), "redirect_uris") == ["https://oa.example/cb#x must not have a fragment (#…)."]
    unknown = register(client, name="refused-en", scopes=["nope"])
    assert field_errors(text(unknown), "scopes") == ["nope is not a scope of this service."]
    assert counts(portal) == before


def test_markup_is_escaped(portal: Portal, admin: FlaskClient) -> None:
    script = "<script>alert(1)</script>"
    refused = register(admin, name=script, scopes=["openid"], redirect_uris=f"https://x.example/{script}#f")
    assert refused.status_code == 422
    assert script not in text(refused)
    assert "&lt;script&gt;" in text(refused)
    # a row made outside the portal's checks still shows as text, never as markup
    with portal.services.sessions() as db:
        db.add(
            Application(
                name=f"x{script}"[:48],
                client_id=f"app_markup{next(_numbers)}",
                secret_sha256="0" * 64,
                client_type="confidential",
                redirect_uris=json.dumps([f"https://x.example/?q={script}"]),
                post_logout_redirect_uris="[]",
                scopes="audit:write",
                created_by=f"account:{script}",
                created_at=portal.services.clock.now(),
                disabled=False,
            )
        )
        db.commit()
    listing = text(admin.get("/applications"))
    assert script not in listing
    assert "x&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    assert "https://x.example/?q=&lt;script&gt;" in listing


def test_a_stale_csrf_token_is_refused_and_changes_nothing(portal: Portal, admin: FlaskClient) -> None:
    name, client_id = registered(portal, admin)
    other = signed_in(portal)
    stale = csrf(other.get("/applications"))  # another session's token
    before = counts(portal)
    for token in (stale, "forged", None):
        data = {"name": unique("stale"), "client_type": "confidential", "scopes": "audit:write"}
        if token is not None:
            data["csrf_token"] = token
        page = admin.post("/applications", data=data)
        assert page.status_code == 400
        assert "表单已过期或并非来自本站" in text(page)
        assert admin.post(f"/applications/{client_id}/disable", data=data).status_code == 400
        for action in ("rotate-secret", "enable", "edit"):
            assert admin.post(f"/applications/{client_id}/{action}", data=data).status_code == 400, action
    assert counts(portal) == before
    row = application(portal, name)
    assert not row.disabled and row.scopes == "audit:write"


# ----- disabling -----------------------------------------------------------------------


def test_disable_is_audited_stops_the_secret_and_twice_is_a_clear_message(portal: Portal) -> None:
    client, username = signed_in_as(portal)
    name = unique("retired")
    created = text(register(client, name=name, scopes=["audit:write"]))
    client_id = _CLIENT_ID.search(created)
    secret = _SECRET.search(created)
    assert client_id and secret
    listing = text(client.get("/applications"))
    assert f'action="/applications/{client_id[1]}/disable"' in listing
    assert 'src="/static/confirm.js"' in listing and "data-confirm=" in listing

    page = post_form(client, f"/applications/{client_id[1]}/disable", {}, form_page="/applications")
    assert page.status_code == 302 and page.headers["Location"] == "/applications"
    after = text(client.get("/applications"))
    assert f"应用系统 {name} 已停用，其凭据即时失效。" in after
    assert "已于" in after
    assert f'action="/applications/{client_id[1]}/disable"' not in after
    row = application(portal, name)
    assert row.disabled and row.disabled_at is not None
    entry = last_audit(portal, client_id[1])
    assert entry.action == "authz:application:disable" and entry.actor.endswith(username)
    with portal.services.sessions() as db, pytest.raises(UnauthenticatedError):
        portal.services.applications.authenticate(db, client_id[1], secret[1])

    before = counts(portal)
    again = post_form(client, f"/applications/{client_id[1]}/disable", {}, form_page="/applications")
    assert again.status_code == 409
    assert f"应用系统 {name} 已处于停用状态。" in text(again)
    missing = post_form(client, "/applications/app_nosuch/disable", {}, form_page="/applications")
    assert missing.status_code == 404
    assert "不存在客户端标识为 app_nosuch 的应用系统。" in text(missing)
    assert counts(portal) == before


# ----- client certificates ---------------------------------------------------------------


def test_a_client_certificate_is_bound_shown_and_removed(portal: Portal, admin: FlaskClient) -> None:
    name, client_id = registered(portal, admin)
    path = f"/applications/{client_id}/certificate"
    assert admin.get(path).status_code == 200
    pem = client_certificate("oa.example.gov.cn")
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    fingerprint = hashlib.sha256(der).hexdigest()
    token = csrf(admin.get(path))
    bound = admin.post(
        path,
        data={"csrf_token": token, "certificate_file": (io.BytesIO(pem), "oa.pem")},
        content_type="multipart/form-data",
    )
    assert bound.status_code == 302, text(bound)
    row = application(portal, name)
    assert row.cert_sha256 == fingerprint
    assert last_audit(portal, client_id).action == "authz:application:bind_certificate"
    listing = text(admin.get("/applications"))
    assert fingerprint.upper()[:2] + ":" + fingerprint.upper()[2:4] in listing
    assert f"已绑定到应用系统 {name}" in listing

    # the same certificate for another application: refused at the field
    _other, other_id = registered(portal, admin)
    before = counts(portal)
    page = post_form(admin, f"/applications/{other_id}/certificate", {"certificate_text": pem.decode()})
    assert page.status_code == 422
    assert field_errors(text(page), "certificate_text") == [f"该证书已绑定到应用系统 {name}。"]
    assert counts(portal) == before

    removed = post_form(admin, f"{path}/remove", {}, form_page=path)
    assert removed.status_code == 302
    assert application(portal, name).cert_sha256 is None
    assert last_audit(portal, client_id).action == "authz:application:unbind_certificate"
    again = post_form(admin, f"{path}/remove", {}, form_page="/applications")
    assert again.status_code == 409
    assert f"应用系统 {name} 未绑定证书。" in text(again)


def test_bad_certificates_are_shown_at_their_field_and_change_nothing(portal: Portal, admin: FlaskClient) -> None:
    name, client_id = registered(portal, admin)
    path = f"/applications/{client_id}/certificate"
    with portal.services.sessions() as db:
        ca_der = portal.services.ca.list_cas(db)[0].cert_der
    before = counts(portal)
    for data, field, message in (
        ({}, "certificate_file", "请选择证书文件或粘贴证书内容。"),
        (
            {"certificate_text": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----"},
            "certificate_text",
            "这不是 X.509 证书（PEM 或 DER 格式）。",
        ),
        (
            {"certificate_file": (io.BytesIO(b"\x30\x03garbage"), "bad.der")},
            "certificate_file",
            "这不是 X.509 证书（PEM 或 DER 格式）。",
        ),
        (
            {"certificate_file": (io.BytesIO(ca_der), "ca.der")},
            "certificate_file",
            "这是 CA 证书；请绑定该应用系统自己的客户端证书。",
        ),
        (
            {"certificate_text": client_certificate("srv.example.gov.cn", client_auth=False).decode()},
            "certificate_text",
            "这不是 TLS 客户端证书（其扩展密钥用法不含 clientAuth）。",
        ),
    ):
        token = csrf(admin.get(path))
        page = admin.post(path, data={"csrf_token": token, **data}, content_type="multipart/form-data")
        assert page.status_code == 422, data
        assert field_errors(text(page), field) == [message]
    assert counts(portal) == before
    assert application(portal, name).cert_sha256 is None
    assert admin.get("/applications/app_nosuch/certificate").status_code == 404


# ----- rotating the secret ----------------------------------------------------------------


def test_rotate_secret_shows_the_new_one_once_and_the_old_one_stops(portal: Portal) -> None:
    client, username = signed_in_as(portal)
    name = unique("rotated")
    created = text(register(client, name=name, scopes=["audit:write"]))
    client_id, old = _CLIENT_ID.search(created), _SECRET.search(created)
    assert client_id and old
    path = f"/applications/{client_id[1]}/rotate-secret"
    listing = text(client.get("/applications"))
    assert f'action="{path}"' in listing and "当前密钥将立即失效" in listing
    before = counts(portal)
    page = post_form(client, path, {}, form_page="/applications")
    assert page.status_code == 200
    body = text(page)
    assert f"应用系统 {name} 的新客户端密钥" in body and "请立即复制客户端密钥：它只显示这一次。" in body
    new = _SECRET.search(body)
    assert new and new[1] != old[1]
    assert counts(portal) == (before[0], before[1] + 1)
    entry = last_audit(portal, client_id[1])
    assert entry.action == "authz:application:secret_rotate" and entry.actor.endswith(username)
    assert new[1] not in (entry.details or "") and old[1] not in (entry.details or "")
    with portal.services.sessions() as db:
        assert portal.services.applications.authenticate(db, client_id[1], new[1]).name == name
        with pytest.raises(UnauthenticatedError):
            portal.services.applications.authenticate(db, client_id[1], old[1])
    assert new[1] not in text(client.get("/applications"))


def test_a_public_client_has_no_rotate_button_and_rotating_it_is_refused(portal: Portal) -> None:
    client = signed_in(portal)
    name = unique("spa")
    page = register(
        client, name=name, client_type="public", scopes=["openid"], redirect_uris="https://spa.example.gov.cn/cb"
    )
    assert page.status_code == 200
    client_id = application(portal, name).client_id
    assert f'action="/applications/{client_id}/rotate-secret"' not in text(client.get("/applications"))
    assert f'action="/applications/{client_id}/rotate-secret"' not in text(
        client.get(f"/applications/{client_id}/edit")
    )
    before = counts(portal)
    refused = post_form(client, f"/applications/{client_id}/rotate-secret", {}, form_page="/applications")
    assert refused.status_code == 409
    assert f"应用系统 {name} 是公开客户端，没有客户端密钥。" in text(refused)
    assert _SECRET.search(text(refused)) is None
    assert counts(portal) == before
    client.get("/lang/en")
    english = post_form(client, f"/applications/{client_id}/rotate-secret", {}, form_page="/applications")
    assert f"Application {name} is a public client: it has no client secret." in text(english)


def row_of(listing: str, client_id: str) -> str:
    """The application's row in the list page."""
    found = re.search(rf'<tr id="app-{client_id}">(.*?)</tr>', listing, re.S)
    assert found, client_id
    return found.group(1)


# ----- enabling --------------------------------------------------------------------------


def test_disable_then_enable_and_enabling_twice_is_a_clear_message(portal: Portal) -> None:
    client, username = signed_in_as(portal)
    name = unique("back")
    created = text(register(client, name=name, scopes=["audit:write"]))
    client_id, secret = _CLIENT_ID.search(created), _SECRET.search(created)
    assert client_id and secret
    enable = f"/applications/{client_id[1]}/enable"
    assert f'action="{enable}"' not in text(client.get("/applications"))
    assert post_form(client, f"/applications/{client_id[1]}/disable", {}, form_page="/applications").status_code == 302
    listing = row_of(text(client.get("/applications")), client_id[1])
    assert f'action="{enable}"' in listing and "之后可以重新启用" not in listing
    with portal.services.sessions() as db, pytest.raises(UnauthenticatedError):
        portal.services.applications.authenticate(db, client_id[1], secret[1])

    page = post_form(client, enable, {}, form_page="/applications")
    assert page.status_code == 302 and page.headers["Location"] == "/applications"
    after = text(client.get("/applications"))
    assert f"应用系统 {name} 已启用，其凭据重新生效。" in after
    row_html = row_of(after, client_id[1])
    assert f'action="/applications/{client_id[1]}/disable"' in row_html and "之后可以重新启用" in row_html
    assert f'action="{enable}"' not in row_html
    row = application(portal, name)
    assert not row.disabled and row.disabled_at is None
    entry = last_audit(portal, client_id[1])
    assert entry.action == "authz:application:enable" and entry.actor.endswith(username)
    with portal.services.sessions() as db:
        assert portal.services.applications.authenticate(db, client_id[1], secret[1]).name == name

    before = counts(portal)
    again = post_form(client, enable, {}, form_page="/applications")
    assert again.status_code == 409
    assert f"应用系统 {name} 未处于停用状态。" in text(again)
    missing = post_form(client, "/applications/app_nosuch/enable", {}, form_page="/applications")
    assert missing.status_code == 404
    assert counts(portal) == before


# ----- editing ---------------------------------------------------------------------------


def edit(client: FlaskClient, client_id: str, **fields: str | list[str]) -> TestResponse:
    path = f"/applications/{client_id}/edit"
    token = csrf(client.get(path))
    return client.post(path, data={"csrf_token": token, **fields})


def test_the_edit_page_shows_what_is_registered_and_saves_a_change(portal: Portal) -> None:
    client, username = signed_in_as(portal)
    client_id, _secret = register_client(portal, unique("rp"), redirect_uris=(REDIRECT, "https://rp.example.gov.cn/2"))
    page = client.get(f"/applications/{client_id}/edit")
    assert page.status_code == 200
    body = text(page)
    assert "（不可更改）" in body and "机密客户端" in body
    for scope in ("openid", "profile", "offline_access"):
        assert re.search(rf'<input checked id="scopes-\d" name="scopes" type="checkbox" value="{scope}">', body)
    assert re.search(r'<input id="scopes-\d" name="scopes" type="checkbox" value="audit:write">', body)
    assert f"{REDIRECT}\nhttps://rp.example.gov.cn/2</textarea>" in body
    assert 'href="/applications/' + client_id + '/edit"' in text(client.get("/applications"))

    before = counts(portal)
    saved = edit(
        client,
        client_id,
        scopes=["openid", "profile", "offline_access", "authz:decide"],
        redirect_uris=f"{REDIRECT}\r\n",
        post_logout_redirect_uris="",
    )
    assert saved.status_code == 302 and saved.headers["Location"] == "/applications"
    assert counts(portal) == (before[0], before[1] + 1)
    assert "已更新" in text(client.get("/applications"))
    with portal.services.sessions() as db:
        row = portal.services.applications.get(db, client_id)
        assert row.scopes == "authz:decide offline_access openid profile"
        assert json.loads(row.redirect_uris) == [REDIRECT] and json.loads(row.post_logout_redirect_uris) == []
    entry = last_audit(portal, client_id)
    assert entry.action == "authz:application:update" and entry.actor.endswith(username)
    details = json.loads(entry.details or "{}")
    assert details["before"]["redirect_uris"] == [REDIRECT, "https://rp.example.gov.cn/2"]
    assert details["after"] == {
        "scopes": ["authz:decide", "offline_access", "openid", "profile"],
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": [],
    }

    same = edit(
        client, client_id, scopes=["openid", "profile", "offline_access", "authz:decide"], redirect_uris=REDIRECT
    )
    assert same.status_code == 302
    assert "没有任何更改" in text(client.get("/applications"))
    assert counts(portal) == (before[0], before[1] + 1)


EDIT_ERRORS = [
    pytest.param(
        {"scopes": ["openid", "root:all"]}, "scopes", "root:all 不是本服务提供的授权范围。", id="unknown-scope"
    ),
    pytest.param(
        {"scopes": ["audit:write"]},
        "redirect_uris",
        "只有 OpenID Connect 客户端（授权范围 openid）才能填写重定向地址。",
        id="uris-without-openid",
    ),
    pytest.param(
        {"redirect_uris": ""},
        "redirect_uris",
        "OpenID Connect 客户端（授权范围 openid）至少需要一个重定向地址。",
        id="no-redirect",
    ),
    pytest.param(
        {"redirect_uris": "https://rp.example.gov.cn/cb#x"},
        "redirect_uris",
        "https://rp.example.gov.cn/cb#x 不得带有片段标识（#…）。",
        id="fragment",
    ),
    pytest.param(
        {"redirect_uris": "http://rp.example.gov.cn/cb"},
        "redirect_uris",
        "http://rp.example.gov.cn/cb：仅 127.0.0.1 或 localhost 可使用 http，其他地址请使用 https。",
        id="http",
    ),
    pytest.param(
        {"post_logout_redirect_uris": "/bye"},
        "post_logout_redirect_uris",
        "/bye 不是完整的 https 地址。",
        id="relative-post-logout",
    ),
]


@pytest.mark.parametrize(("fields", "field", "message"), EDIT_ERRORS)
def test_bad_edits_are_shown_at_their_field_and_change_nothing(
    portal: Portal, admin: FlaskClient, fields: dict[str, str | list[str]], field: str, message: str
) -> None:
    client_id, _secret = register_client(portal, unique("rp"))
    with portal.services.sessions() as db:
        row = portal.services.applications.get(db, client_id)
        registered = (row.scopes, row.redirect_uris, row.post_logout_redirect_uris)
    before = counts(portal)
    data: dict[str, str | list[str]] = {
        "scopes": ["openid", "profile"],
        "redirect_uris": REDIRECT,
        "post_logout_redirect_uris": "",
        **fields,
    }
    page = edit(admin, client_id, **data)
    assert page.status_code == 422
    assert field_errors(text(page), field) == [message]
    assert counts(portal) == before
    with portal.services.sessions() as db:
        row = portal.services.applications.get(db, client_id)
        assert (row.scopes, row.redirect_uris, row.post_logout_redirect_uris) == registered


def test_a_bad_edit_in_english(portal: Portal) -> None:
    client = signed_in(portal)
    client.get("/lang/en")
    client_id, _secret = register_client(portal, unique("rp"))
    page = edit(client, client_id, scopes=["openid"], redirect_uris="https://rp.example.gov.cn/cb#x")
    assert page.status_code == 422
    assert field_errors(text(page), "redirect_uris") == [
        "https://rp.example.gov.cn/cb#x must not have a fragment (#…)."
    ]
    assert "Edit application" in text(page)


def test_a_removed_redirect_uri_and_scope_stop_at_once(portal: Portal) -> None:
    """After an edit, the authorization endpoint refuses the removed redirect URI, and the
    tokens granted with the removed scope (offline_access) are revoked: refresh and userinfo fail."""
    user, _username = two_factor_client(portal)
    other = "https://rp.example.gov.cn/other"
    client_id, secret = register_client(portal, unique("rp"), redirect_uris=(REDIRECT, other))
    tokens = exchange(portal, client_id, secret, code_of(authorize(user, client_id))).get_json()
    assert userinfo(portal, tokens["access_token"]).status_code == 200
    kept = exchange(portal, client_id, secret, code_of(authorize(user, client_id, scope="openid profile"))).get_json()
    assert kept["scope"] == "openid profile"
    pending = code_of(authorize(user, client_id))  # issued, not yet exchanged

    admin = signed_in(portal)
    saved = edit(admin, client_id, scopes=["openid", "profile"], redirect_uris=other, post_logout_redirect_uris="")
    assert saved.status_code == 302
    assert "1 个 OpenID Connect 令牌已被吊销" in text(admin.get("/applications"))

    refused = authorize(user, client_id)
    assert refused.status_code == 400 and "Location" not in refused.headers
    assert "invalid_request" in text(refused)
    assert authorize(user, client_id, redirect_uri=other, scope="openid").status_code == 302
    late = exchange(portal, client_id, secret, pending)
    assert late.status_code == 400 and late.get_json()["error"] == "invalid_grant"

    def refresh(token: str) -> TestResponse:
        return portal.app.test_client().post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            headers=basic(client_id, secret),
        )

    revoked = refresh(tokens["refresh_token"])
    assert revoked.status_code == 400 and revoked.get_json()["error"] == "invalid_grant"
    assert userinfo(portal, tokens["access_token"]).status_code == 401
    assert userinfo(portal, kept["access_token"]).status_code == 200  # within the new scopes: kept
    assert refresh(kept["refresh_token"]).status_code == 200
    with portal.services.sessions() as db:
        reasons = {t.revoked_reason for t in db.scalars(select(OidcToken).where(OidcToken.subject == _username)).all()}
    assert reasons == {"scope no longer registered", None}


# ----- refusals by code -------------------------------------------------------------------------

_CODE = re.compile(r'\bcode="(authz\.[a-z0-9_]+)"')
_CJK = re.compile(r"[\u4e00-\u9fff]")


class _Sample(dict[str, str | int]):
    """Any value a message asks for."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def test_every_refusal_of_the_application_service_has_a_message_in_both_languages(portal: Portal) -> None:
    source = Path(__file__).resolve().parents[2] / "authz" / "applications.py"
    codes = set(_CODE.findall(source.read_text(encoding="utf-8")))
    assert len(codes) >= 20
    for locale in ("zh_CN", "en"):
        with portal.app.test_request_context(), force_locale(locale):
            for code in sorted(codes):
                shown = app_message(code, _Sample(), "FALLBACK")
                assert shown is not None and "FALLBACK" not in shown, (code, locale)
                assert bool(_CJK.search(shown)) == (locale == "zh_CN"), (code, locale, shown)
    with portal.app.test_request_context(), force_locale("zh_CN"):
        # the wording of the service's English text does not matter, the code does
        reworded = ConflictError("reworded", code="authz.application_exists", params={"name": "oa"})
        assert app_message(reworded.code, reworded.params, reworded.reason) == "名为 oa 的应用系统已经注册。"
        assert app_message("authz.not_yet_translated", {}, "x") is None
