"""Access decisions: deny by default, every condition kind, scopes, time windows,
reload after a policy change, explain; the admin service's refusals and audit entries."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from authz.decisions import AUTHZ_DECIDE, AUTHZ_DECIDE_ANY, DENY, PERMIT, Decision, DecisionService
from authz.policy_models import PolicyRole, PolicyVersion
from authz.policy_schema import DecisionRequest
from govpki.audit import AuditEntry
from govpki.config import Config
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import make_config
from web.container import Services, build_services

SECADMIN = Principal(PrincipalKind.ACCOUNT, "8", "secadmin", frozenset({Role.SECURITY_ADMIN}))
AUDITOR = Principal(PrincipalKind.ACCOUNT, "7", "auditor", frozenset({Role.SECURITY_AUDITOR}))
# Monday 2026-03-02 10:00 in Asia/Shanghai (02:00 UTC)
MONDAY_10 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)


class MovableClock:
    def __init__(self, now: dt.datetime) -> None:
        self.at = now

    def now(self) -> dt.datetime:
        return self.at

    def set(self, at: dt.datetime) -> None:
        self.at = at


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(MONDAY_10)


@pytest.fixture
def svc(tmp_path: Any, database_url: str, clock: MovableClock) -> Iterator[Services]:
    # the version row is read on every decision here (0 ms), so a committed change is seen at once
    config: Config = make_config(tmp_path / "instance", database_url, GOVPKI_AUTHZ_POLICY_REFRESH_MS="0")
    services = build_services(config, clock=clock)
    try:
        yield services
    finally:
        services.dispose()


POLICY: dict[str, Any] = {
    "subjects": [
        {"id": "zhang.san", "prefecture": "6501", "department": "finance", "title": "科长"},
        {"id": "li.si", "prefecture": "6502", "department": "finance", "title": "科员"},
        {"id": "wang.wu"},
    ],
    "applications": [
        {
            "name": "e-docs",
            "roles": [
                {
                    "name": "reader",
                    "description": "reads documents",
                    "permissions": [
                        {
                            "name": "read-public",
                            "action": "read",
                            "resource_type": "document",
                            "conditions": [
                                {"kind": "resource_attribute_equals", "attribute": "classification", "value": "public"}
                            ],
                        },
                        {
                            "name": "read-own-prefecture",
                            "action": "read",
                            "resource_type": "document",
                            "conditions": [{"kind": "same_prefecture_as_resource"}],
                        },
                    ],
                },
                {
                    "name": "approver",
                    "permissions": [
                        {
                            "name": "approve-own-dept-chief",
                            "action": "approve",
                            "resource_type": "document",
                            "conditions": [
                                {"kind": "same_department_as_resource"},
                                {"kind": "title_in", "titles": ["科长", "处长"]},
                                {
                                    "kind": "time_window",
                                    "days": ["mon", "tue", "wed", "thu", "fri"],
                                    "from": "08:30",
                                    "to": "18:00",
                                    "tz": "Asia/Shanghai",
                                },
                            ],
                        },
                    ],
                },
                {
                    "name": "clerk",
                    "permissions": [{"name": "edit", "action": "edit", "resource_type": "document", "conditions": []}],
                },
            ],
        }
    ],
    "assignments": [
        {"subject": "zhang.san", "application": "e-docs", "role": "reader"},
        {"subject": "zhang.san", "application": "e-docs", "role": "approver"},
        {"subject": "li.si", "application": "e-docs", "role": "reader"},
        {"subject": "li.si", "application": "e-docs", "role": "clerk", "prefecture": "6502", "department": "finance"},
    ],
}


@pytest.fixture
def loaded(svc: Services) -> Services:
    with svc.sessions() as s:
        svc.policy.load(s, SECADMIN, POLICY, source="test")
        s.commit()
    return svc


def req(subject: str, action: str, rtype: str = "document", app: str = "e-docs", **attrs: Any) -> DecisionRequest:
    return DecisionRequest.model_validate(
        {
            "subject": subject,
            "application": app,
            "action": action,
            "resource": {"type": rtype, "id": "D-1", "attributes": attrs},
        }
    )


def decide(svc: Services, request: DecisionRequest, who: Principal = SYSTEM) -> Decision:
    with svc.sessions() as s:
        return svc.decisions.decide(s, who, request)


def test_deny_by_default_names_why(loaded: Services):
    d = decide(loaded, req("zhang.san", "delete"))
    assert d.effect == DENY and d.rule_id is None
    assert d.reason == "no role of application 'e-docs' grants action 'delete' on type 'document'"
    d = decide(loaded, req("zhang.san", "read", app="no-such-app"))
    assert d.effect == DENY and "has no roles in the policy" in d.reason
    d = decide(loaded, req("nobody", "read", classification="public"))
    assert d.effect == DENY and "'nobody' is not known to the policy" in d.reason
    d = decide(loaded, req("wang.wu", "read", classification="public"))
    assert d.effect == DENY and "holds no role of application 'e-docs'" in d.reason and "reader" in d.reason


def test_resource_attribute_equals(loaded: Services):
    d = decide(loaded, req("li.si", "read", classification="public", prefecture="6501"))
    assert d.effect == PERMIT and d.rule == "e-docs/reader/read-public" and d.assignment_id is not None
    d = decide(loaded, req("li.si", "read", classification="secret", prefecture="6501"))
    assert d.effect == DENY and d.rule == "e-docs/reader/read-public"
    assert "classification is 'secret', not 'public'" in d.reason
    # a bool never equals the string, nor 1 equals true
    assert decide(loaded, req("li.si", "read", classification=True)).effect == DENY


def test_same_prefecture(loaded: Services):
    assert decide(loaded, req("zhang.san", "read", prefecture="6501")).effect == PERMIT
    d = decide(loaded, req("zhang.san", "read", prefecture="6502"))
    assert d.effect == DENY and "'6501' is not the resource's '6502'" in d.reason
    d = decide(loaded, req("zhang.san", "read"))
    assert d.effect == DENY and "the resource has no attribute" in d.reason


def test_same_department_title_and_time_window(loaded: Services, clock: MovableClock):
    ok = req("zhang.san", "approve", department="finance")
    d = decide(loaded, ok)
    assert d.effect == PERMIT and d.rule == "e-docs/approver/approve-own-dept-chief"
    assert "within mon,tue,wed,thu,fri 08:30-18:00 Asia/Shanghai" in d.reason
    d = decide(loaded, req("zhang.san", "approve", department="audit"))
    assert d.effect == DENY and "same_department_as_resource" in d.reason
    clock.set(dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC))  # Monday 18:00 in Shanghai: the end is exclusive
    d = decide(loaded, ok)
    assert d.effect == DENY and "mon 18:00 is outside" in d.reason
    clock.set(dt.datetime(2026, 3, 2, 0, 30, tzinfo=dt.UTC))  # Monday 08:30 Shanghai: the start is inclusive
    assert decide(loaded, ok).effect == PERMIT
    clock.set(dt.datetime(2026, 3, 7, 2, 0, tzinfo=dt.UTC))  # Saturday 10:00
    d = decide(loaded, ok)
    assert d.effect == DENY and "sat 10:00 is outside" in d.reason


def test_title_in(loaded: Services):
    with loaded.sessions() as s:
        loaded.policy.set_subject(s, SECADMIN, "zhang.san", prefecture="6501", department="finance", title="科员")
        s.commit()
    d = decide(loaded, req("zhang.san", "approve", department="finance"))
    assert d.effect == DENY and "title '科员' is not one of '科长', '处长'" in d.reason


def test_time_window_over_midnight(svc: Services, clock: MovableClock):
    with svc.sessions() as s:
        svc.policy.set_subject(s, SECADMIN, "guard")
        svc.policy.create_role(s, SECADMIN, "duty", "night")
        svc.policy.add_permission(
            s,
            SECADMIN,
            "duty",
            "night",
            name="patrol",
            action="patrol",
            resource_type="site",
            conditions=[{"kind": "time_window", "days": ["fri"], "from": "22:00", "to": "06:00"}],
        )
        svc.policy.assign(s, SECADMIN, "guard", "duty", "night")
        s.commit()
    patrol = req("guard", "patrol", "site", app="duty")
    shanghai = dt.timezone(dt.timedelta(hours=8))
    for local, effect in (
        (dt.datetime(2026, 3, 6, 23, 0), PERMIT),  # Friday 23:00
        (dt.datetime(2026, 3, 7, 5, 59), PERMIT),  # Saturday 05:59 belongs to Friday's night
        (dt.datetime(2026, 3, 7, 6, 0), DENY),
        (dt.datetime(2026, 3, 7, 23, 0), DENY),  # Saturday night is not Friday's
        (dt.datetime(2026, 3, 6, 5, 0), DENY),  # Friday 05:00 belongs to Thursday's night
    ):
        clock.set(local.replace(tzinfo=shanghai))
        assert decide(svc, patrol).effect == effect, local


def test_scope_by_prefecture_and_department(loaded: Services):
    assert decide(loaded, req("li.si", "edit", prefecture="6502", department="finance")).effect == PERMIT
    d = decide(loaded, req("li.si", "edit", prefecture="6501", department="finance"))
    assert d.effect == DENY and "the assignment is for prefecture '6502', the resource's is '6501'" in d.reason
    d = decide(loaded, req("li.si", "edit", prefecture="6502", department="audit"))
    assert d.effect == DENY and "department 'finance'" in d.reason
    d = decide(loaded, req("li.si", "edit"))
    assert d.effect == DENY and "the resource has no prefecture" in d.reason


def test_policy_reload_after_a_committed_change(loaded: Services):
    before = decide(loaded, req("wang.wu", "edit", prefecture="6502", department="finance"))
    assert before.effect == DENY
    with loaded.sessions() as s:
        loaded.policy.assign(loaded_s := s, SECADMIN, "wang.wu", "e-docs", "clerk")  # noqa: F841
        s.rollback()  # not committed: nothing changes
    assert decide(loaded, req("wang.wu", "edit")).effect == DENY
    with loaded.sessions() as s:
        assignment = loaded.policy.assign(s, SECADMIN, "wang.wu", "e-docs", "clerk")
        s.commit()
        assignment_id = assignment.id
    after = decide(loaded, req("wang.wu", "edit"))
    assert after.effect == PERMIT and after.policy_version == before.policy_version + 1
    with loaded.sessions() as s:
        loaded.policy.unassign(s, SECADMIN, assignment_id)
        s.commit()
    assert decide(loaded, req("wang.wu", "edit")).effect == DENY


def test_refresh_interval_keeps_the_snapshot(tmp_path: Any, database_url: str, clock: MovableClock):
    """With a refresh interval the version row is not read again within it (a fresh
    DecisionService with a long interval keeps deciding on the snapshot it has)."""
    config = make_config(tmp_path / "instance", database_url, GOVPKI_AUTHZ_POLICY_REFRESH_MS="3600000")
    services = build_services(config, clock=clock)
    try:
        with services.sessions() as s:
            services.policy.load(s, SECADMIN, POLICY)
            s.commit()
        assert decide(services, req("wang.wu", "edit")).effect == DENY
        with services.sessions() as s:
            services.policy.assign(s, SECADMIN, "wang.wu", "e-docs", "clerk")
            s.commit()
        assert decide(services, req("wang.wu", "edit")).effect == DENY  # not yet re-read
        fresh = DecisionService(clock, refresh=dt.timedelta(0))
        with services.sessions() as s:
            assert fresh.decide(s, SYSTEM, req("wang.wu", "edit")).effect == PERMIT
    finally:
        services.dispose()


def test_explain_lists_every_candidate(loaded: Services):
    with loaded.sessions() as s:
        out = loaded.decisions.explain(
            s, SECADMIN, req("zhang.san", "read", classification="secret", prefecture="6502")
        )
    assert out.decision.effect == DENY
    body = out.as_dict()
    assert body["subject"] == {"id": "zhang.san", "prefecture": "6501", "department": "finance", "title": "科长"}
    names = [c["rule"]["name"] for c in body["candidates"]]
    assert names == ["e-docs/reader/read-public", "e-docs/reader/read-own-prefecture"]
    public, own = body["candidates"]
    assert [c["what"] for c in public["checks"]] == ["scope", "resource_attribute_equals"]
    assert public["checks"][0]["ok"] and not public["checks"][1]["ok"] and not public["matched"]
    assert not own["checks"][1]["ok"] and "'6501' is not the resource's '6502'" in own["checks"][1]["why"]
    with loaded.sessions() as s:
        out = loaded.decisions.explain(s, SECADMIN, req("wang.wu", "read"))
    assert all(c.assignment_id is None and not c.matched for c in out.candidates)
    assert out.candidates[0].checks[0].why == "the subject does not hold role 'reader'"
    assert out.candidates[0].checks[0].code == "no_assignment" and out.candidates[0].checks[0].params == {
        "role": "reader"
    }


def test_decisions_and_checks_say_what_they_say_as_data(loaded: Services):
    """The code and values behind each reason (the portal words them in the reader's language)."""
    d = decide(loaded, req("zhang.san", "read", classification="secret", prefecture="6502"))
    assert d.code == "conditions_fail" and d.params["action"] == "read" and d.params["type"] == "document"
    d = decide(loaded, req("zhang.san", "read", classification="public"))
    assert d.code == "permit" and d.params["rule"] == "read-public" and d.params["role"] == "reader"
    assert decide(loaded, req("nobody", "read")).code == "unknown_subject"
    assert decide(loaded, req("zhang.san", "delete")).code == "no_rule"
    with loaded.sessions() as s:
        out = loaded.decisions.explain(s, SYSTEM, req("zhang.san", "read", classification="secret", prefecture="6502"))
    checks = {c.what: c for cand in out.candidates for c in cand.checks}
    assert checks["same_prefecture_as_resource"].code == "differs"
    assert checks["same_prefecture_as_resource"].params == {"attribute": "prefecture", "mine": "6501", "theirs": "6502"}
    assert checks["resource_attribute_equals"].code == "value_differs"
    assert checks["resource_attribute_equals"].params["got"] == "'secret'"


@pytest.mark.parametrize("role", [Role.SECURITY_AUDITOR, Role.SYSTEM_ADMIN, Role.CA_OPERATOR])
def test_only_security_admins_explain_and_ask(loaded: Services, role: Role):
    """Auditors read the audit only: explain (subjects' attributes, assignments) and decisions are refused."""
    who = Principal(PrincipalKind.ACCOUNT, "9", "someone", frozenset({role}))
    with loaded.sessions() as s, pytest.raises(ForbiddenError) as err:
        loaded.decisions.explain(s, who, req("zhang.san", "read"))
    assert err.value.code == "authz.explain_forbidden"
    with pytest.raises(ForbiddenError):
        decide(loaded, req("zhang.san", "read"), who)
    gateway = Principal(
        PrincipalKind.APPLICATION, "app_g", "gateway", frozenset(), scopes=frozenset({AUTHZ_DECIDE_ANY})
    )
    with loaded.sessions() as s, pytest.raises(ForbiddenError):
        loaded.decisions.explain(s, gateway, req("zhang.san", "read"))


def test_who_may_ask(loaded: Services):
    def app(name: str, *scopes: str) -> Principal:
        return Principal(PrincipalKind.APPLICATION, "app_x", name, frozenset(), scopes=frozenset(scopes))

    assert decide(loaded, req("li.si", "read", classification="public"), app("e-docs", AUTHZ_DECIDE)).permitted
    with pytest.raises(ForbiddenError) as err:
        decide(loaded, req("li.si", "read"), app("other-app", AUTHZ_DECIDE))
    assert err.value.field == "application"
    assert decide(loaded, req("li.si", "read", classification="public"), app("gateway", AUTHZ_DECIDE_ANY)).permitted
    with pytest.raises(ForbiddenError):
        decide(loaded, req("li.si", "read"), app("e-docs", "audit:write"))
    operator = Principal(PrincipalKind.ACCOUNT, "3", "op", frozenset({Role.CA_OPERATOR}))
    with pytest.raises(ForbiddenError):
        decide(loaded, req("li.si", "read"), operator)


@pytest.mark.parametrize("role", [Role.SYSTEM_ADMIN, Role.SECURITY_AUDITOR, Role.CA_OPERATOR, Role.RA_OFFICER])
def test_only_security_admins_change_the_policy(svc: Services, role: Role):
    who = Principal(PrincipalKind.ACCOUNT, "5", "someone", frozenset({role}))
    with svc.sessions() as s:
        version = svc.policy.version(s)
        for call in (
            lambda: svc.policy.load(s, who, POLICY),
            lambda: svc.policy.set_subject(s, who, "x"),
            lambda: svc.policy.create_role(s, who, "e-docs", "r"),
            lambda: svc.policy.assign(s, who, "x", "e-docs", "r"),
            lambda: svc.policy.add_permission(s, who, "e-docs", "r", name="n", action="a", resource_type="t"),
            lambda: svc.policy.unassign(s, who, 1),
            lambda: svc.policy.delete_role(s, who, "e-docs", "r"),
            lambda: svc.policy.remove_permission(s, who, 1),
        ):
            with pytest.raises(ForbiddenError):
                call()
        assert svc.policy.version(s) == version
        assert s.scalar(select(func.count()).select_from(PolicyRole)) == 0


def test_policy_changes_are_audited_with_the_version(svc: Services):
    with svc.sessions() as s:
        svc.policy.set_subject(s, SECADMIN, "zhao.liu", prefecture="6501")
        svc.policy.create_role(s, SECADMIN, "e-docs", "reader")
        perm = svc.policy.add_permission(
            s,
            SECADMIN,
            "e-docs",
            "reader",
            name="r",
            action="read",
            resource_type="document",
            conditions=[{"kind": "title_in", "titles": ["科长"]}],
        )
        a = svc.policy.assign(s, SECADMIN, "zhao.liu", "e-docs", "reader", prefecture="6501")
        svc.policy.unassign(s, SECADMIN, a.id)
        svc.policy.remove_permission(s, SECADMIN, perm.id)
        svc.policy.delete_role(s, SECADMIN, "e-docs", "reader")
        report = svc.policy.load(s, SECADMIN, POLICY, source="file.toml")
        s.commit()
    with svc.sessions() as s:
        entries = s.scalars(
            select(AuditEntry).where(AuditEntry.action.like("authz:policy:%")).order_by(AuditEntry.seq)
        ).all()
        version = s.scalar(select(PolicyVersion.version))
    assert [e.action for e in entries] == [
        "authz:policy:subject_set",
        "authz:policy:role_create",
        "authz:policy:permission_add",
        "authz:policy:assignment_create",
        "authz:policy:assignment_delete",
        "authz:policy:permission_remove",
        "authz:policy:role_delete",
        "authz:policy:load",
    ]
    assert all(e.actor == "account:secadmin" for e in entries)
    assert [json.loads(e.details)["policy_version"] for e in entries] == list(range(1, 9)) and version == 8
    load = json.loads(entries[-1].details)
    assert load["counts"] == {"applications": 1, "roles": 3, "permissions": 4, "subjects": 3, "assignments": 4}
    assert load["sha256"] == report.sha256 and load["source"] == "file.toml"
    assert json.loads(entries[2].details)["conditions"] == [{"kind": "title_in", "titles": ["科长"]}]


def test_load_replaces_the_applications_roles(loaded: Services):
    smaller = {
        "applications": [
            {
                "name": "e-docs",
                "roles": [
                    {
                        "name": "reader",
                        "permissions": [{"name": "read-all", "action": "read", "resource_type": "document"}],
                    }
                ],
            }
        ],
        "assignments": [{"subject": "wang.wu", "application": "e-docs", "role": "reader"}],
    }
    with loaded.sessions() as s:
        loaded.policy.load(s, SECADMIN, smaller)
        s.commit()
    assert decide(loaded, req("wang.wu", "read")).effect == PERMIT  # a subject known from before
    assert decide(loaded, req("zhang.san", "read", prefecture="6501")).effect == DENY  # its old assignment went
    assert decide(loaded, req("zhang.san", "approve", department="finance")).effect == DENY


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (
            lambda p: p["applications"][0]["roles"][0]["permissions"][0]["conditions"].append({"kind": "moon_phase"}),
            "applications[0].roles[0].permissions[0].conditions[1]",
            "kind must be one of",
        ),
        (
            lambda p: p["applications"][0]["roles"][1]["permissions"][0]["conditions"][2].update({"to": "25:00"}),
            "applications[0].roles[1].permissions[0].conditions[2].to",
            "form that is not allowed",
        ),
        (
            lambda p: p["applications"][0]["roles"][1]["permissions"][0]["conditions"][2].update(
                {"tz": "Mars/Olympus"}
            ),
            "applications[0].roles[1].permissions[0].conditions[2].tz",
            "not an IANA time zone",
        ),
        (
            lambda p: p["applications"][0]["roles"][1]["permissions"][0]["conditions"][2].update({"from": "18:00"}),
            "applications[0].roles[1].permissions[0].conditions[2]",
            "must differ",
        ),
        (
            lambda p: p["applications"][0]["roles"][1]["permissions"][0]["conditions"][1].update({"titles": []}),
            "applications[0].roles[1].permissions[0].conditions[1].titles",
            "at least 1",
        ),
        (
            lambda p: p["applications"][0]["roles"][0].update({"colour": "red"}),
            "applications[0].roles[0].colour",
            "is not a known field",
        ),
        (lambda p: p["applications"][0]["roles"].append({"name": "reader"}), "applications[0]", "given twice"),
        (
            lambda p: p["assignments"].append({"subject": "ghost", "application": "e-docs", "role": "reader"}),
            "assignments[4].subject",
            "neither in this file nor known",
        ),
        (
            lambda p: p["assignments"].append({"subject": "li.si", "application": "e-docs", "role": "boss"}),
            "assignments[4].role",
            "no role 'boss'",
        ),
        (lambda p: p["subjects"][0].update({"id": "bad\nid"}), "subjects[0].id", "not allowed"),
    ],
)
def test_bad_policy_names_the_field_and_changes_nothing(svc: Services, change: Any, field: str, reason: str):
    policy = json.loads(json.dumps(POLICY))
    change(policy)
    with svc.sessions() as s:
        with pytest.raises(InvalidError) as err:
            svc.policy.load(s, SECADMIN, policy)
        s.rollback()
    assert err.value.field == field and reason in err.value.reason, (err.value.field, err.value.reason)
    with svc.sessions() as s:
        assert svc.policy.version(s) == 0
        assert s.scalar(select(func.count()).select_from(PolicyRole)) == 0


def test_admin_errors(loaded: Services):
    with loaded.sessions() as s:
        with pytest.raises(ConflictError):
            loaded.policy.create_role(s, SECADMIN, "e-docs", "reader")
        with pytest.raises(NotFoundError) as nf:
            loaded.policy.assign(s, SECADMIN, "zhang.san", "e-docs", "boss")
        assert nf.value.field == "role"
        with pytest.raises(NotFoundError) as nf:
            loaded.policy.assign(s, SECADMIN, "ghost", "e-docs", "reader")
        assert nf.value.field == "subject"
        with pytest.raises(ConflictError):
            loaded.policy.assign(s, SECADMIN, "zhang.san", "e-docs", "reader")
        with pytest.raises(InvalidError) as bad:
            loaded.policy.add_permission(
                s,
                SECADMIN,
                "e-docs",
                "reader",
                name="x",
                action="read",
                resource_type="document",
                conditions=[{"kind": "title_in"}],
            )
        assert bad.value.field == "conditions[0].titles"
