"""Registered applications: register, authenticate, disable; their events on the audit chain."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from authz.applications import AUDIT_WRITE
from authz.console import AuditFilter, application_of
from authz.models import Application
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
