"""Registered applications: register, authenticate, disable; their events on the audit chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json

import pytest
from asn1crypto import x509 as asn1_x509
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from authz.applications import AUDIT_WRITE
from authz.console import AuditFilter, application_of
from authz.models import Application
from authz.oidc_models import OidcToken
from govpki import audit
from govpki.audit import AuditEntry, AuditHead, NewEntry, entry_hash, verify_chain
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnauthenticatedError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from web.cli import main
from web.container import Services

SECADMIN = Principal(PrincipalKind.ACCOUNT, "8", "secadmin", frozenset({Role.SECURITY_ADMIN}))
SYSADMIN = Principal(PrincipalKind.ACCOUNT, "9", "sysadmin", frozenset({Role.SYSTEM_ADMIN}))
AUDITOR = Principal(PrincipalKind.ACCOUNT, "10", "auditor", frozenset({Role.SECURITY_AUDITOR}))

EVENT = {
    "actor": "user:zhang.san",
    "action": "document:sign",
    "object_type": "document",
    "object_id": "DOC-2026-0001",
    "outcome": "success",
    "time": "2026-03-01T08:00:00+08:00",
    "details": {"pages": 3, "名": "值"},
}


def _register(services: Services, name: str = "e-docs", scopes: tuple[str, ...] = (AUDIT_WRITE,)) -> tuple[str, str]:
    with services.sessions() as s:
        app, secret = services.applications.register(s, SECADMIN, name=name, scopes=scopes)
        client_id = app.client_id
        s.commit()
    assert secret is not None  # a confidential client
    return client_id, secret


def _head(services: Services) -> tuple[int, str]:
    with services.sessions() as s:
        head = s.get(AuditHead, 1)
        assert head is not None
        return head.seq, head.hash


def test_register_authenticate_disable(bare_services: Services):
    client_id, secret = _register(bare_services)
    assert client_id.startswith("app_") and len(secret) >= 43
    with bare_services.sessions() as s:
        app = s.scalar(select(Application).where(Application.client_id == client_id))
        assert app is not None and app.scopes == AUDIT_WRITE and app.created_by == "account:secadmin"
        assert app.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest() and secret not in app.secret_sha256
        who = bare_services.applications.authenticate(s, client_id, secret)
        assert who.kind is PrincipalKind.APPLICATION and who.name == "e-docs" and who.id == client_id
        assert who.scopes == frozenset({AUDIT_WRITE}) and who.roles == frozenset()
        assert who.audit_name == "application:e-docs"
        registered = s.scalar(select(AuditEntry).where(AuditEntry.action == "authz:application:register"))
        assert registered is not None and registered.object_id == client_id and secret not in registered.details

        with pytest.raises(UnauthenticatedError, match="not valid"):
            bare_services.applications.authenticate(s, client_id, secret + "x")
        with pytest.raises(UnauthenticatedError, match="not valid"):
            bare_services.applications.authenticate(s, "app_" + "0" * 24, secret)
        with pytest.raises(UnauthenticatedError, match="required"):
            bare_services.applications.authenticate(s, client_id, None)

        bare_services.applications.disable(s, SECADMIN, client_id)
        s.commit()
    with bare_services.sessions() as s:
        with pytest.raises(UnauthenticatedError, match="not valid"):
            bare_services.applications.authenticate(s, client_id, secret)
        with pytest.raises(ConflictError):
            bare_services.applications.disable(s, SECADMIN, client_id)
        with pytest.raises(NotFoundError) as missing:
            bare_services.applications.disable(s, SECADMIN, "app_nope")
        assert missing.value.field == "client_id"
        disabled = s.scalar(select(AuditEntry).where(AuditEntry.action == "authz:application:disable"))
        assert disabled is not None and disabled.actor == "account:secadmin"
        assert [a.name for a in bare_services.applications.list(s)] == ["e-docs"]


@pytest.mark.parametrize("who", [SYSADMIN, AUDITOR])
def test_only_a_security_administrator_registers(bare_services: Services, who: Principal):
    before = _head(bare_services)
    with bare_services.sessions() as s, pytest.raises(ForbiddenError):
        bare_services.applications.register(s, who, name="e-docs")
    client_id, _ = _register(bare_services)
    with bare_services.sessions() as s, pytest.raises(ForbiddenError):
        bare_services.applications.disable(s, who, client_id)
    assert _head(bare_services)[0] == before[0] + 1  # only the administrator's registration


@pytest.mark.parametrize(
    ("name", "scopes", "field"),
    [
        ("E-Docs", (AUDIT_WRITE,), "name"),
        ("x", (AUDIT_WRITE,), "name"),
        ("e-docs", ("admin:everything",), "scope"),
    ],
)
def test_bad_registrations(bare_services: Services, name: str, scopes: tuple[str, ...], field: str):
    before = _head(bare_services)
    with bare_services.sessions() as s, pytest.raises(InvalidError) as exc:
        bare_services.applications.register(s, SECADMIN, name=name, scopes=scopes)
    assert exc.value.field == field
    assert _head(bare_services) == before


def test_duplicate_name(bare_services: Services):
    _register(bare_services)
    with bare_services.sessions() as s, pytest.raises(ConflictError):
        bare_services.applications.register(s, SECADMIN, name="e-docs")


def test_append_events_with_the_application_as_source(bare_services: Services):
    client_id, secret = _register(bare_services)
    with bare_services.sessions() as s:
        who = bare_services.applications.authenticate(s, client_id, secret)
        result = bare_services.applications.append_events(
            s, who, [EVENT, {**EVENT, "action": "app:document:archive", "outcome": "denied"}], batch=True
        )
        s.commit()
    assert result.last.seq == result.first.seq + 1
    with bare_services.sessions() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.seq >= result.first.seq).order_by(AuditEntry.seq)).all()
        assert [r.action for r in rows] == ["app:document:sign", "app:document:archive"]
        assert rows[0].actor == "application:e-docs/user:zhang.san" and rows[1].outcome == "denied"
        assert rows[0].details == audit.canonical_json(
            {
                "data": {"pages": 3, "名": "值"},
                "occurred_at": "2026-03-01T00:00:00.000000Z",
                "source": {"application": "e-docs", "client_id": client_id},
            }
        )
        assert verify_chain(s).ok
        # the auditors' console finds them by application (details.source.application)
        page = bare_services.audit_console.search(s, AUDITOR, AuditFilter(application="e-docs"))
        assert [e.seq for e in page.entries] == [result.last.seq, result.first.seq]
        assert {application_of(e) for e in page.entries} == {"e-docs"}
        assert bare_services.audit_console.search(s, AUDITOR, AuditFilter(application="other")).entries == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"actor": "bob\nadmin"}, "events[1].actor"),
        ({"actor": "x" * 129}, "events[1].actor"),
        ({"actor": ""}, "events[1].actor"),
        ({"action": "ca:cert:issue"}, "events[1].action"),
        ({"action": "authz:audit:export"}, "events[1].action"),
        ({"action": "Document:Sign"}, "events[1].action"),
        ({"action": "sign"}, "events[1].action"),
        ({"outcome": "maybe"}, "events[1].outcome"),
        ({"time": "2026-03-01T08:00:00"}, "events[1].time"),
        ({"time": "yesterday"}, "events[1].time"),
        ({"details": {"blob": "x" * 17000}}, "events[1].details"),
        ({"details": [1, 2]}, "events[1].details"),
        ({"details": {"n": float("nan")}}, "events[1].details"),
        ({"object_type": ""}, "events[1].object_type"),
        ({"role": "admin"}, "events[1].role"),
    ],
)
def test_one_bad_event_appends_nothing(bare_services: Services, change: dict[str, object], field: str):
    client_id, secret = _register(bare_services)
    before = _head(bare_services)
    with bare_services.sessions() as s:
        who = bare_services.applications.authenticate(s, client_id, secret)
        with pytest.raises(InvalidError) as exc:
            bare_services.applications.append_events(s, who, [EVENT, {**EVENT, **change}, EVENT], batch=True)
        s.rollback()
    assert exc.value.field == field
    assert _head(bare_services) == before


def test_scope_and_kind_are_checked(bare_services: Services):
    client_id, secret = _register(bare_services, "no-scope", scopes=())
    with bare_services.sessions() as s:
        who = bare_services.applications.authenticate(s, client_id, secret)
        with pytest.raises(ForbiddenError, match="audit:write"):
            bare_services.applications.append_events(s, who, [EVENT], batch=False)
        with pytest.raises(ForbiddenError):
            bare_services.applications.append_events(s, SYSTEM, [EVENT], batch=False)
        with pytest.raises(InvalidError) as exc:
            bare_services.applications.append_events(
                s, who.__class__(who.kind, who.id, who.name, scopes=frozenset({AUDIT_WRITE})), [], batch=True
            )
        assert exc.value.field == "events"


def test_record_many_hashes_exactly_like_record(bare_services: Services):
    """Batch-appended entries chain and hash as single ones would, and verify."""
    with bare_services.sessions() as s:
        audit.record(s, SYSTEM, "test:thing:touch", object_type="thing", object_id="single", details={"i": 0})
        refs = audit.record_many(
            s,
            [
                NewEntry("system:system", "test:thing:touch", "thing", str(i), details={"i": i, "名": "值"})
                for i in range(1, 6)
            ]
            + [NewEntry("x:y", "test:thing:poke", "thing", "t", outcome="failure", details_text='{"a":1}')],
        )
        audit.record(s, SYSTEM, "test:thing:touch", object_type="thing", object_id="after")
        s.commit()
    with bare_services.sessions() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
        for prev, row in itertools.pairwise(rows):
            assert row.prev_hash == prev.hash
        for row in rows:
            assert row.hash == entry_hash(
                row.prev_hash,
                seq=row.seq,
                at=row.at,
                actor=row.actor,
                action=row.action,
                object_type=row.object_type,
                object_id=row.object_id,
                outcome=row.outcome,
                details=row.details,
            )
        assert [r.seq for r in refs] == [rows[1].seq + i for i in range(6)]
        assert refs[-1].hash == rows[-2].hash and rows[-2].details == '{"a":1}'
        assert verify_chain(s).ok
    with bare_services.sessions() as s:
        audit.record_many(s, [NewEntry("a:b", "test:thing:touch", "thing", "rolled-back")] * 3)
        s.rollback()
        assert audit.record_many(s, []) == []
        with pytest.raises(ValueError, match="domain:object:verb"):
            audit.record_many(s, [NewEntry("a:b", "bad", "thing", "x")])
    with bare_services.sessions() as s:
        assert verify_chain(s).ok and s.get(AuditHead, 1).seq == len(rows)


def _cli(services: Services, *args: str):
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_register_list_disable(bare_services: Services):
    result = _cli(bare_services, "app", "register", "e-docs")
    assert result.exit_code == 0, result.output
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    client_id, secret = values["client_id"], values["client_secret"]
    with bare_services.sessions() as s:
        assert bare_services.applications.authenticate(s, client_id, secret).scopes == {AUDIT_WRITE}
    listed = _cli(bare_services, "app", "list")
    assert listed.exit_code == 0 and client_id in listed.output and "active" in listed.output
    assert secret not in listed.output
    again = _cli(bare_services, "app", "register", "e-docs")
    assert again.exit_code == 2 and "name:" in again.output
    bad = _cli(bare_services, "app", "register", "other", "--scope", "root:all")
    assert bad.exit_code == 2 and "scope:" in bad.output
    disabled = _cli(bare_services, "app", "disable", client_id)
    assert disabled.exit_code == 0 and "disabled application 'e-docs'" in disabled.output
    assert "disabled" in _cli(bare_services, "app", "list").output
    assert _cli(bare_services, "app", "disable", "app_nope").exit_code == 2


# ----- rotating the secret, enabling, updating -------------------------------------------

OIDC_REDIRECT = "https://rp.example.gov.cn/callback"


def _register_oidc(services: Services, name: str = "rp-portal", client_type: str = "confidential") -> str:
    with services.sessions() as s:
        app, _secret = services.applications.register(
            s,
            SECADMIN,
            name=name,
            scopes=("openid", "profile", "offline_access"),
            client_type=client_type,
            redirect_uris=(OIDC_REDIRECT, "https://rp.example.gov.cn/other"),
            post_logout_redirect_uris=("https://rp.example.gov.cn/bye",),
        )
        client_id = app.client_id
        s.commit()
    return client_id


def _entries(services: Services, action: str, client_id: str) -> list[AuditEntry]:
    with services.sessions() as s:
        found = list(
            s.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == action, AuditEntry.object_id == client_id)
                .order_by(AuditEntry.seq)
            )
        )
        s.expunge_all()
        return found


def test_rotate_secret_old_refused_new_works_audited_without_the_secret(bare_services: Services):
    client_id, old = _register(bare_services)
    with bare_services.sessions() as s:
        app, new = bare_services.applications.rotate_secret(s, SECADMIN, client_id)
        assert new != old and len(new) >= 43
        assert app.secret_sha256 == hashlib.sha256(new.encode()).hexdigest()
        s.commit()
    with bare_services.sessions() as s:
        with pytest.raises(UnauthenticatedError, match="not valid"):
            bare_services.applications.authenticate(s, client_id, old)  # at once: no overlap
        assert bare_services.applications.authenticate(s, client_id, new).name == "e-docs"
    [entry] = _entries(bare_services, "authz:application:secret_rotate", client_id)
    assert entry.actor == "account:secadmin" and json.loads(entry.details) == {"name": "e-docs", "disabled": False}
    assert new not in entry.details and hashlib.sha256(new.encode()).hexdigest() not in entry.details


def test_a_public_client_has_no_secret_to_rotate(bare_services: Services):
    client_id = _register_oidc(bare_services, client_type="public")
    before = _head(bare_services)
    with bare_services.sessions() as s, pytest.raises(ConflictError) as refused:
        bare_services.applications.rotate_secret(s, SECADMIN, client_id)
    assert refused.value.code == "authz.public_client" and refused.value.field == "client_id"
    assert _head(bare_services) == before
    with bare_services.sessions() as s, pytest.raises(NotFoundError):
        bare_services.applications.rotate_secret(s, SECADMIN, "app_nope")


def test_disable_enable_round_trip(bare_services: Services):
    client_id, secret = _register(bare_services)
    with bare_services.sessions() as s:
        bare_services.applications.disable(s, SECADMIN, client_id)
        s.commit()
    with bare_services.sessions() as s:
        with pytest.raises(UnauthenticatedError):
            bare_services.applications.authenticate(s, client_id, secret)
        app, revoked = bare_services.applications.enable(s, SECADMIN, client_id)
        assert not app.disabled and app.disabled_at is None and revoked == 0
        s.commit()
    with bare_services.sessions() as s:
        assert bare_services.applications.authenticate(s, client_id, secret).id == client_id
    before = _head(bare_services)
    with bare_services.sessions() as s, pytest.raises(ConflictError) as twice:
        bare_services.applications.enable(s, SECADMIN, client_id)
    assert twice.value.code == "authz.application_active" and "is not disabled" in twice.value.reason
    assert _head(bare_services) == before
    [entry] = _entries(bare_services, "authz:application:enable", client_id)
    details = json.loads(entry.details)
    assert entry.actor == "account:secadmin" and details["name"] == "e-docs" and details["disabled_at"]


def test_a_disabled_client_may_rotate_then_be_enabled(bare_services: Services):
    client_id, old = _register(bare_services)
    with bare_services.sessions() as s:
        bare_services.applications.disable(s, SECADMIN, client_id)
        _app, new = bare_services.applications.rotate_secret(s, SECADMIN, client_id)
        s.commit()
    with bare_services.sessions() as s:
        with pytest.raises(UnauthenticatedError):
            bare_services.applications.authenticate(s, client_id, new)  # still disabled
        bare_services.applications.enable(s, SECADMIN, client_id)
        s.commit()
    with bare_services.sessions() as s:
        assert bare_services.applications.authenticate(s, client_id, new).id == client_id
        with pytest.raises(UnauthenticatedError):
            bare_services.applications.authenticate(s, client_id, old)


@pytest.mark.parametrize("who", [SYSADMIN, AUDITOR])
def test_only_a_security_administrator_rotates_enables_updates(bare_services: Services, who: Principal):
    client_id, secret = _register(bare_services)
    with bare_services.sessions() as s:
        bare_services.applications.disable(s, SECADMIN, client_id)
        s.commit()
    before = _head(bare_services)
    with bare_services.sessions() as s:
        with pytest.raises(ForbiddenError):
            bare_services.applications.rotate_secret(s, who, client_id)
        with pytest.raises(ForbiddenError):
            bare_services.applications.enable(s, who, client_id)
        with pytest.raises(ForbiddenError):
            bare_services.applications.update(s, who, client_id, scopes=("authz:decide",))
    assert _head(bare_services) == before
    with bare_services.sessions() as s:
        app = bare_services.applications.get(s, client_id)
        assert app.disabled and app.scopes == AUDIT_WRITE
        assert app.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()


def test_update_replaces_the_given_lists_and_audits_before_and_after(bare_services: Services):
    client_id = _register_oidc(bare_services)
    with bare_services.sessions() as s:
        done = bare_services.applications.update(
            s, SECADMIN, client_id, redirect_uris=[OIDC_REDIRECT, OIDC_REDIRECT, "http://127.0.0.1:8400/cb"]
        )
        assert done.changed == ("redirect_uris",) and done.tokens_revoked == 0
        app = done.app
        assert json.loads(app.redirect_uris) == [OIDC_REDIRECT, "http://127.0.0.1:8400/cb"]
        assert app.scopes == "offline_access openid profile"  # kept
        assert json.loads(app.post_logout_redirect_uris) == ["https://rp.example.gov.cn/bye"]  # kept
        s.commit()
    [entry] = _entries(bare_services, "authz:application:update", client_id)
    details = json.loads(entry.details)
    assert entry.actor == "account:secadmin" and details["changed"] == ["redirect_uris"]
    assert details["before"] == {"redirect_uris": [OIDC_REDIRECT, "https://rp.example.gov.cn/other"]}
    assert details["after"] == {"redirect_uris": [OIDC_REDIRECT, "http://127.0.0.1:8400/cb"]}

    # nothing changed: nothing written
    before = _head(bare_services)
    with bare_services.sessions() as s:
        same = bare_services.applications.update(s, SECADMIN, client_id, scopes=["profile", "openid", "offline_access"])
        assert same.changed == ()
        s.commit()
    assert _head(bare_services) == before

    # dropping openid: the URIs must go in the same change
    with bare_services.sessions() as s:
        done = bare_services.applications.update(
            s, SECADMIN, client_id, scopes=["authz:decide"], redirect_uris=[], post_logout_redirect_uris=[]
        )
        assert set(done.changed) == {"scopes", "redirect_uris", "post_logout_redirect_uris"}
        s.commit()
    with bare_services.sessions() as s:
        app = bare_services.applications.get(s, client_id)
        assert app.scopes == "authz:decide" and app.redirect_uris == "[]" and app.post_logout_redirect_uris == "[]"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"scopes": ["openid", "root:all"]}, "scope", "is not a known scope"),
        ({"scopes": ["audit:write"]}, "redirect_uri", "only for OIDC clients"),
        ({"redirect_uris": []}, "redirect_uri", "needs at least one redirect URI"),
        ({"redirect_uris": ["https://rp.example.gov.cn/cb#x"]}, "redirect_uri", "must not have a fragment"),
        ({"redirect_uris": ["http://rp.example.gov.cn/cb"]}, "redirect_uri", "plain http only on a loopback"),
        ({"redirect_uris": ["/relative"]}, "redirect_uri", "not an absolute"),
        ({"redirect_uris": ["https://[::1/cb"]}, "redirect_uri", "not an absolute"),  # unclosed IPv6 bracket
        ({"redirect_uris": ["https://rp.example.gov.cn:99999/cb"]}, "redirect_uri", "not an absolute"),  # port
        (
            {"post_logout_redirect_uris": ["https://rp.example.gov.cn:x/"]},
            "post_logout_redirect_uri",
            "not an absolute",
        ),
        ({"post_logout_redirect_uris": ["https://rp.example.gov.cn/bye#x"]}, "post_logout_redirect_uri", "fragment"),
        ({"scopes": "openid"}, "scope", "must be a list"),
    ],
)
def test_bad_updates_name_the_field_and_change_nothing(
    bare_services: Services, change: dict[str, object], field: str, reason: str
):
    client_id = _register_oidc(bare_services)
    with bare_services.sessions() as s:
        settings = bare_services.applications.get(s, client_id)
        was = (settings.scopes, settings.redirect_uris, settings.post_logout_redirect_uris)
    before = _head(bare_services)
    with bare_services.sessions() as s, pytest.raises(InvalidError) as refused:
        bare_services.applications.update(s, SECADMIN, client_id, **change)  # type: ignore[arg-type]
    assert refused.value.field == field and reason in refused.value.reason
    assert _head(bare_services) == before
    with bare_services.sessions() as s:
        app = bare_services.applications.get(s, client_id)
        assert (app.scopes, app.redirect_uris, app.post_logout_redirect_uris) == was


def test_a_public_client_stays_public_with_only_oidc_scopes(bare_services: Services):
    client_id = _register_oidc(bare_services, client_type="public")
    with bare_services.sessions() as s, pytest.raises(InvalidError, match="only OIDC scopes") as refused:
        bare_services.applications.update(s, SECADMIN, client_id, scopes=["openid", "audit:write"])
    assert refused.value.field == "scope"
    with bare_services.sessions() as s:
        assert bare_services.applications.update(s, SECADMIN, client_id, scopes=["openid"]).changed == ("scopes",)
        assert bare_services.applications.get(s, client_id).client_type == "public"


def _grant(services: Services, client_id: str, scope: str, *, family: str) -> int:
    """An OIDC token row as the provider stores it (digests only) and its rotated successor."""
    with services.sessions() as s:
        app = services.applications.get(s, client_id)
        now = services.clock.now()
        ids: list[int] = []
        for n in range(2):
            row = OidcToken(
                application_id=app.id,
                subject="zhang.san",
                claims="{}",
                scope=scope,
                access_sha256=hashlib.sha256(f"{family}-access-{n}".encode()).hexdigest(),
                refresh_sha256=hashlib.sha256(f"{family}-refresh-{n}".encode()).hexdigest(),
                family_id=ids[0] if ids else None,
                issued_at=now,
                access_expires_at=now + dt.timedelta(minutes=5),
                refresh_expires_at=now + dt.timedelta(days=1),
                refreshed_at=now if n == 0 else None,
            )
            s.add(row)
            s.flush()
            if row.family_id is None:
                row.family_id = row.id
            ids.append(row.id)
        s.commit()
        return ids[0]


def _revoked(services: Services, family: int) -> list[str | None]:
    with services.sessions() as s:
        return [
            row.revoked_reason
            for row in s.scalars(select(OidcToken).where(OidcToken.family_id == family).order_by(OidcToken.id))
        ]


def test_narrowing_scopes_revokes_the_tokens_granted_beyond_them(bare_services: Services):
    client_id = _register_oidc(bare_services)
    offline = _grant(bare_services, client_id, "openid profile offline_access", family="a")
    online = _grant(bare_services, client_id, "openid profile", family="b")
    with bare_services.sessions() as s:
        done = bare_services.applications.update(s, SECADMIN, client_id, scopes=["openid", "profile"])
        assert done.changed == ("scopes",) and done.tokens_revoked == 2
        s.commit()
    assert _revoked(bare_services, offline) == ["scope no longer registered"] * 2
    assert _revoked(bare_services, online) == [None, None]
    [entry] = _entries(bare_services, "authz:application:update", client_id)
    details = json.loads(entry.details)
    assert details["before"]["scopes"] == ["offline_access", "openid", "profile"]
    assert details["after"]["scopes"] == ["openid", "profile"] and details["tokens_revoked"] == 2


def test_enabling_revokes_the_grants_made_before_the_disable(bare_services: Services):
    client_id = _register_oidc(bare_services)
    family = _grant(bare_services, client_id, "openid profile", family="c")
    with bare_services.sessions() as s:
        bare_services.applications.disable(s, SECADMIN, client_id)
        s.commit()
    assert _revoked(bare_services, family) == [None, None]  # unusable while disabled (the provider checks)
    with bare_services.sessions() as s:
        _app, revoked = bare_services.applications.enable(s, SECADMIN, client_id)
        assert revoked == 2
        s.commit()
    assert _revoked(bare_services, family) == ["application disabled"] * 2
    [entry] = _entries(bare_services, "authz:application:enable", client_id)
    assert json.loads(entry.details)["tokens_revoked"] == 2


def test_cli_rotate_enable_update(bare_services: Services):
    values = dict(line.split("=", 1) for line in _cli(bare_services, "app", "register", "e-docs").stdout.splitlines())
    client_id, old = values["client_id"], values["client_secret"]
    rotated = _cli(bare_services, "app", "rotate-secret", client_id)
    assert rotated.exit_code == 0, rotated.output
    new = dict(line.split("=", 1) for line in rotated.stdout.splitlines())["client_secret"]
    assert new != old and "shown only now" in rotated.stderr
    with bare_services.sessions() as s:
        assert bare_services.applications.authenticate(s, client_id, new).id == client_id
        with pytest.raises(UnauthenticatedError):
            bare_services.applications.authenticate(s, client_id, old)
    assert new not in _cli(bare_services, "app", "list").output

    assert _cli(bare_services, "app", "disable", client_id).exit_code == 0
    enabled = _cli(bare_services, "app", "enable", client_id)
    assert enabled.exit_code == 0 and "enabled application 'e-docs'" in enabled.output
    twice = _cli(bare_services, "app", "enable", client_id)
    assert twice.exit_code == 2 and "client_id:" in twice.output and "is not disabled" in twice.output

    updated = _cli(
        bare_services,
        *("app", "update", client_id, "--scope", "openid", "--scope", "audit:write"),
        *("--redirect-uri", OIDC_REDIRECT, "--post-logout-redirect-uri", "https://rp.example.gov.cn/bye"),
    )
    assert updated.exit_code == 0, updated.output
    assert "updated application 'e-docs': scopes, redirect_uris, post_logout_redirect_uris" in updated.output
    listed = _cli(bare_services, "app", "list").output
    assert f"redirect_uri={OIDC_REDIRECT}" in listed
    bad = _cli(bare_services, "app", "update", client_id, "--redirect-uri", "http://rp.example.gov.cn/cb")
    assert bad.exit_code == 2 and "redirect_uri:" in bad.output
    assert _cli(bare_services, "app", "update", client_id).exit_code == 2  # nothing to change: a usage error
    same = _cli(bare_services, "app", "update", client_id, "--scope", "audit:write", "--scope", "openid")
    assert same.exit_code == 0 and "nothing changed" in same.output
    dropped = _cli(
        bare_services,
        *("app", "update", client_id, "--scope", "audit:write", "--no-redirect-uris", "--no-post-logout-redirect-uris"),
    )
    assert dropped.exit_code == 0, dropped.output
    with bare_services.sessions() as s:
        app = bare_services.applications.get(s, client_id)
        assert app.scopes == "audit:write" and app.redirect_uris == "[]" and app.post_logout_redirect_uris == "[]"

    public = _cli(
        bare_services,
        *("app", "register", "spa", "--type", "public", "--scope", "openid", "--redirect-uri", OIDC_REDIRECT),
    )
    public_id = dict(line.split("=", 1) for line in public.stdout.splitlines())["client_id"]
    refused = _cli(bare_services, "app", "rotate-secret", public_id)
    assert refused.exit_code == 2 and "public client" in refused.output and "client_secret=" not in refused.output


def _duplicate_extension_certificate() -> bytes:
    """A client certificate whose BasicConstraints extension is there twice (RFC 5280 4.2:
    each extension at most once), as a careless tool might make it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twice.example.gov.cn")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    tbs = parsed["tbs_certificate"]
    extensions = tbs["extensions"]
    tbs["extensions"] = asn1_x509.Extensions([*extensions, extensions[1]])
    parsed["tbs_certificate"] = tbs
    return bytes(parsed.dump(force=True))


def test_a_certificate_with_a_duplicate_extension_is_refused_at_the_field(bare_services: Services):
    with bare_services.sessions() as s:
        app, _secret = bare_services.applications.register(s, SECADMIN, name="dup-extension")
        s.commit()
    before = _head(bare_services)
    with bare_services.sessions() as s, pytest.raises(InvalidError) as refused:
        bare_services.applications.bind_certificate(s, SECADMIN, app.client_id, _duplicate_extension_certificate())
    assert refused.value.field == "certificate" and refused.value.code == "authz.not_a_certificate"
    assert _head(bare_services) == before
