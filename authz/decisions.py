"""The policy decision point: permit or deny, with the reason and the rule that decided.

Deny by default: a request is permitted only when some assignment of the subject to a
role of the application, whose scope covers the resource, meets a permission (rule) of
that role for the action and resource type with every one of its conditions holding.

Evaluation is pure, over an in-memory *compiled snapshot* of the policy (rules indexed
by application, action and resource type; assignments by subject and role). Every
policy change bumps the ``policy_version`` row in its own transaction; a decider reads
that one row at most once per ``refresh`` interval (``GOVPKI_AUTHZ_POLICY_REFRESH_MS``,
default 1000 ms; 0: on every call) and rebuilds the snapshot when it moved. So a change
is in force in every process at most ``refresh`` after it was committed.

Decisions are not audited one by one (thousands a second would drown the chain); the
policy changes behind them are (``authz:policy:*``). Per-process counters of permits and
denies are kept (:attr:`DecisionService.counts`).
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from authz.policy_models import PolicyAssignment, PolicyPermission, PolicyRole, PolicySubject, PolicyVersion
from authz.policy_schema import DAYS, DecisionRequest
from govpki.clock import Clock
from govpki.errors import ForbiddenError
from govpki.principal import Principal, PrincipalKind, Role

AUTHZ_DECIDE = "authz:decide"
"""Scope: an application may ask for decisions about its own application name."""
AUTHZ_DECIDE_ANY = "authz:decide:any"
"""Scope: an application (a gateway) may ask for decisions about any application."""

PERMIT = "permit"
DENY = "deny"

Attributes = Mapping[str, str | int | bool]


# ----- compiled policy ------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectAttrs:
    subject_id: str
    prefecture: str | None
    department: str | None
    title: str | None


Params = Mapping[str, str]


@dataclass(frozen=True)
class Check:
    """One condition's outcome: what was checked, whether it held and why. ``code`` and
    ``params`` say the same as ``why`` as data (the portal shows it in the reader's
    language); ``why`` is the English text of the API and the CLI."""

    what: str
    ok: bool
    why: str
    code: str = ""
    params: Params = field(default_factory=dict, compare=False)


class _Cond:
    kind: str = ""

    def check(self, subject: SubjectAttrs, attributes: Attributes, now: _dt.datetime) -> Check:
        raise NotImplementedError


class _SameAttr(_Cond):
    def __init__(self, kind: str, attr: str) -> None:
        self.kind = kind
        self._attr = attr

    def check(self, subject: SubjectAttrs, attributes: Attributes, now: _dt.datetime) -> Check:
        mine = getattr(subject, self._attr)
        theirs = attributes.get(self._attr)
        attr = self._attr
        if mine is None:
            return Check(self.kind, False, f"the subject has no {attr}", "subject_lacks", {"attribute": attr})
        if theirs is None:
            return Check(
                self.kind, False, f"the resource has no attribute {attr!r}", "resource_lacks", {"attribute": attr}
            )
        if str(theirs) != mine:
            return Check(
                self.kind,
                False,
                f"the subject's {attr} {mine!r} is not the resource's {theirs!r}",
                "differs",
                {"attribute": attr, "mine": mine, "theirs": str(theirs)},
            )
        return Check(self.kind, True, f"{attr} {mine!r} is the resource's", "same", {"attribute": attr, "mine": mine})


class _TitleIn(_Cond):
    kind = "title_in"

    def __init__(self, titles: Sequence[str]) -> None:
        self._titles = frozenset(titles)
        self._shown = ", ".join(repr(t) for t in titles)

    def check(self, subject: SubjectAttrs, attributes: Attributes, now: _dt.datetime) -> Check:
        titles = {"titles": self._shown}
        if subject.title is None:
            return Check(self.kind, False, f"the subject has no title (needs one of {self._shown})", "no_title", titles)
        if subject.title not in self._titles:
            return Check(
                self.kind,
                False,
                f"the subject's title {subject.title!r} is not one of {self._shown}",
                "title_not_in",
                {**titles, "title": subject.title},
            )
        return Check(
            self.kind,
            True,
            f"title {subject.title!r} is one of {self._shown}",
            "title_in",
            {**titles, "title": subject.title},
        )


class _TimeWindow(_Cond):
    kind = "time_window"

    def __init__(self, days: Sequence[str], start: str, end: str, tz: str) -> None:
        self._days = frozenset(DAYS.index(d) for d in days)
        self._start = _dt.time.fromisoformat(start)
        self._end = _dt.time.fromisoformat(end)
        self._zone = zoneinfo.ZoneInfo(tz)
        self._shown = f"{','.join(d for d in DAYS if d in days)} {start}-{end} {tz}"

    def check(self, subject: SubjectAttrs, attributes: Attributes, now: _dt.datetime) -> Check:
        local = now.astimezone(self._zone)
        t = local.time().replace(tzinfo=None)
        day = local.weekday()
        if self._start < self._end:
            inside = self._start <= t < self._end
        else:  # over midnight: the part after midnight belongs to the day before
            inside = t >= self._start or t < self._end
            if t < self._end:
                day = (day - 1) % 7
        at = f"{DAYS[local.weekday()]} {local:%H:%M}"
        params = {"at": at, "window": self._shown}
        if day not in self._days or not inside:
            return Check(self.kind, False, f"{at} is outside {self._shown}", "outside", params)
        return Check(self.kind, True, f"{at} is within {self._shown}", "within", params)


class _AttrEquals(_Cond):
    kind = "resource_attribute_equals"

    def __init__(self, attribute: str, value: str | int | bool) -> None:
        self._attr = attribute
        self._value = value

    def check(self, subject: SubjectAttrs, attributes: Attributes, now: _dt.datetime) -> Check:
        attr = self._attr
        if attr not in attributes:
            return Check(
                self.kind, False, f"the resource has no attribute {attr!r}", "resource_lacks", {"attribute": attr}
            )
        got = attributes[attr]
        params = {"attribute": attr, "got": repr(got), "want": repr(self._value)}
        # bool is an int in Python: compare types too, so true never equals 1
        if type(got) is not type(self._value) or got != self._value:
            return Check(
                self.kind, False, f"the resource's {attr} is {got!r}, not {self._value!r}", "value_differs", params
            )
        return Check(self.kind, True, f"the resource's {attr} is {got!r}", "value_equals", params)


def compile_condition(data: Mapping[str, Any]) -> _Cond:
    kind = data["kind"]
    if kind == "same_prefecture_as_resource":
        return _SameAttr(kind, "prefecture")
    if kind == "same_department_as_resource":
        return _SameAttr(kind, "department")
    if kind == "title_in":
        return _TitleIn(data["titles"])
    if kind == "time_window":
        return _TimeWindow(data.get("days", DAYS), data["from"], data["to"], data.get("tz", "Asia/Shanghai"))
    if kind == "resource_attribute_equals":
        return _AttrEquals(data["attribute"], data["value"])
    raise ValueError(f"unknown condition kind {kind!r}")  # stored conditions were validated


@dataclass(frozen=True)
class Rule:
    """A permission of a role: it grants ``action`` on ``resource_type`` when every condition holds."""

    id: int
    name: str
    application: str
    role_id: int
    role: str
    action: str
    resource_type: str
    conditions: tuple[_Cond, ...]

    @property
    def label(self) -> str:
        return f"{self.application}/{self.role}/{self.name}"


@dataclass(frozen=True)
class Grant:
    """An assignment of a subject to a role, with its scope."""

    id: int
    role_id: int
    prefecture: str | None
    department: str | None

    def scope_check(self, attributes: Attributes) -> Check:
        for attr, want in (("prefecture", self.prefecture), ("department", self.department)):
            if want is None:
                continue
            got = attributes.get(attr)
            if got is None:
                return Check(
                    "scope",
                    False,
                    f"the assignment is for {attr} {want!r}; the resource has no {attr}",
                    "scope_resource_lacks",
                    {"attribute": attr, "want": want},
                )
            if str(got) != want:
                return Check(
                    "scope",
                    False,
                    f"the assignment is for {attr} {want!r}, the resource's is {got!r}",
                    "scope_differs",
                    {"attribute": attr, "want": want, "got": str(got)},
                )
        shown = ", ".join(
            f"{a} {w!r}" for a, w in (("prefecture", self.prefecture), ("department", self.department)) if w
        )
        return Check(
            "scope",
            True,
            f"the assignment covers the resource ({shown or 'no scope limit'})",
            "scope_covers",
            {"prefecture": self.prefecture or "", "department": self.department or ""},
        )


@dataclass(frozen=True)
class Snapshot:
    version: int
    applications: frozenset[str]
    subjects: Mapping[str, SubjectAttrs]
    rules: Mapping[tuple[str, str, str], tuple[Rule, ...]]
    grants: Mapping[tuple[str, int], tuple[Grant, ...]]
    roles_of: Mapping[int, str]

    @property
    def size(self) -> dict[str, int]:
        return {
            "applications": len(self.applications),
            "roles": len(self.roles_of),
            "rules": sum(len(r) for r in self.rules.values()),
            "subjects": len(self.subjects),
            "assignments": sum(len(g) for g in self.grants.values()),
        }


def load_snapshot(session: Session) -> Snapshot:
    version = session.scalar(select(PolicyVersion.version).where(PolicyVersion.id == 1)) or 0
    roles = {
        r.id: (r.application, r.name)
        for r in session.execute(select(PolicyRole.id, PolicyRole.application, PolicyRole.name))
    }
    rules: dict[tuple[str, str, str], list[Rule]] = {}
    compiled: dict[str, tuple[_Cond, ...]] = {}
    perms = session.execute(
        select(
            PolicyPermission.id,
            PolicyPermission.role_id,
            PolicyPermission.name,
            PolicyPermission.action,
            PolicyPermission.resource_type,
            PolicyPermission.conditions,
        ).order_by(PolicyPermission.id)
    )
    for pid, role_id, name, action, rtype, conditions in perms:
        app, role = roles[role_id]
        conds = compiled.get(conditions)
        if conds is None:
            conds = tuple(compile_condition(c) for c in json.loads(conditions))
            compiled[conditions] = conds
        rules.setdefault((app, action, rtype), []).append(Rule(pid, name, app, role_id, role, action, rtype, conds))
    subjects: dict[int, SubjectAttrs] = {}
    for sid, subject_id, prefecture, department, title in session.execute(
        select(
            PolicySubject.id,
            PolicySubject.subject_id,
            PolicySubject.prefecture,
            PolicySubject.department,
            PolicySubject.title,
        )
    ):
        subjects[sid] = SubjectAttrs(subject_id, prefecture, department, title)
    grants: dict[tuple[str, int], list[Grant]] = {}
    for aid, sid, role_id, prefecture, department in session.execute(
        select(
            PolicyAssignment.id,
            PolicyAssignment.subject_id,
            PolicyAssignment.role_id,
            PolicyAssignment.scope_prefecture,
            PolicyAssignment.scope_department,
        ).order_by(PolicyAssignment.id)
    ):
        grants.setdefault((subjects[sid].subject_id, role_id), []).append(Grant(aid, role_id, prefecture, department))
    return Snapshot(
        version=version,
        applications=frozenset(app for app, _ in roles.values()),
        subjects={s.subject_id: s for s in subjects.values()},
        rules={k: tuple(v) for k, v in rules.items()},
        grants={k: tuple(v) for k, v in grants.items()},
        roles_of={rid: name for rid, (_, name) in roles.items()},
    )


# ----- decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    effect: str  # "permit" | "deny"
    reason: str
    rule_id: int | None = None
    rule: str | None = None  # application/role/rule name
    assignment_id: int | None = None
    policy_version: int = 0
    code: str = field(default="", compare=False)
    """What ``reason`` says, as data (the portal shows it in the reader's language):
    ``no_application``, ``no_rule``, ``unknown_subject``, ``permit``, ``conditions_fail``
    or ``no_role``, with its values in ``params``."""
    params: Params = field(default_factory=dict, compare=False)

    @property
    def permitted(self) -> bool:
        return self.effect == PERMIT

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.effect,
            "reason": self.reason,
            "rule": None if self.rule_id is None else {"id": self.rule_id, "name": self.rule},
            "assignment_id": self.assignment_id,
            "policy_version": self.policy_version,
        }


@dataclass(frozen=True)
class Candidate:
    """One (rule, assignment) pair explain looked at: the checks in order, and whether it matched."""

    rule_id: int
    rule: str
    role: str
    assignment_id: int | None
    scope: str
    matched: bool
    checks: tuple[Check, ...]
    scope_prefecture: str | None = field(default=None, compare=False)
    scope_department: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": {"id": self.rule_id, "name": self.rule},
            "role": self.role,
            "assignment_id": self.assignment_id,
            "scope": self.scope,
            "matched": self.matched,
            "checks": [{"what": c.what, "ok": c.ok, "why": c.why} for c in self.checks],
        }


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    subject: SubjectAttrs | None
    candidates: tuple[Candidate, ...]
    evaluated_at: _dt.datetime

    def as_dict(self) -> dict[str, Any]:
        s = self.subject
        return {
            **self.decision.as_dict(),
            "evaluated_at": self.evaluated_at.isoformat(),
            "subject": None
            if s is None
            else {"id": s.subject_id, "prefecture": s.prefecture, "department": s.department, "title": s.title},
            "candidates": [c.as_dict() for c in self.candidates],
        }


@dataclass
class DecisionCounts:
    permit: int = 0
    deny: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, decision: Decision) -> None:
        with self.lock:
            if decision.permitted:
                self.permit += 1
            else:
                self.deny += 1


def _scope_text(grant: Grant | None) -> str:
    if grant is None:
        return "-"
    parts = [
        f"prefecture {grant.prefecture}" if grant.prefecture else "",
        f"department {grant.department}" if grant.department else "",
    ]
    return ", ".join(p for p in parts if p) or "any"


class DecisionService:
    """Decides over a compiled snapshot kept per process (thread-safe)."""

    def __init__(self, clock: Clock, *, refresh: _dt.timedelta = _dt.timedelta(seconds=1)) -> None:
        self._clock = clock
        self._refresh_s = refresh.total_seconds()
        self._snapshot: Snapshot | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.counts = DecisionCounts()

    # -- who may ask -----------------------------------------------------------------

    @staticmethod
    def check_asker(principal: Principal, application: str, field: str = "application") -> None:
        """An application with ``authz:decide`` asks about itself; with ``authz:decide:any``
        about any application. Security administrators and the system may ask about any
        (the CLI). Security auditors read the audit only: a decision's reason names
        subjects' attributes and assignments."""
        if principal.kind is PrincipalKind.APPLICATION:
            if AUTHZ_DECIDE_ANY in principal.scopes:
                return
            if AUTHZ_DECIDE not in principal.scopes:
                raise ForbiddenError(f"application {principal.name!r} lacks the scope {AUTHZ_DECIDE!r}")
            if application != principal.name:
                raise ForbiddenError(
                    f"application {principal.name!r} may ask only about itself (scope {AUTHZ_DECIDE_ANY!r} "
                    f"is needed to ask about {application!r})",
                    field=field,
                )
            return
        if principal.kind is PrincipalKind.SYSTEM:
            return
        if principal.has(Role.SECURITY_ADMIN):
            return
        raise ForbiddenError(
            "only security administrators and registered applications may ask", code="authz.decide_forbidden"
        )

    @staticmethod
    def check_explainer(principal: Principal) -> None:
        """Explain shows policy subjects' attributes and assignments: security
        administrators (the portal's explain page) and the system (``govpki policy
        explain``) only — not auditors, who read the audit only, nor applications."""
        if principal.kind is PrincipalKind.SYSTEM or (
            principal.kind is not PrincipalKind.APPLICATION and principal.has(Role.SECURITY_ADMIN)
        ):
            return
        raise ForbiddenError("only security administrators may explain decisions", code="authz.explain_forbidden")

    # -- the snapshot ----------------------------------------------------------------

    def snapshot(self, session: Session) -> Snapshot:
        """The compiled policy; the version row is read at most once per refresh interval."""
        snap = self._snapshot
        if snap is not None and time.monotonic() - self._checked < self._refresh_s:
            return snap
        return self.refresh(session)

    def refresh(self, session: Session) -> Snapshot:
        """Read the version row now and rebuild the snapshot when it moved (the dedicated
        decision server calls this from a background thread once per refresh interval)."""
        snap = self._snapshot
        version = session.scalar(select(PolicyVersion.version).where(PolicyVersion.id == 1)) or 0
        if snap is not None and snap.version == version:
            self._checked = time.monotonic()
            return snap
        with self._lock:
            snap = self._snapshot
            if snap is None or snap.version != version:
                snap = load_snapshot(session)
                self._snapshot = snap
            self._checked = time.monotonic()
            return snap

    @property
    def refresh_seconds(self) -> float:
        return self._refresh_s

    # -- deciding --------------------------------------------------------------------

    def decide(self, session: Session, principal: Principal, request: DecisionRequest) -> Decision:
        self.check_asker(principal, request.application)
        return self._decided(self.snapshot(session), request)

    def decide_on(self, snap: Snapshot, principal: Principal, request: DecisionRequest) -> Decision:
        """:meth:`decide` over a snapshot the caller keeps fresh (no database access)."""
        self.check_asker(principal, request.application)
        return self._decided(snap, request)

    def _decided(self, snap: Snapshot, request: DecisionRequest) -> Decision:
        decision = self.evaluate(snap, request, self._clock.now())
        self.counts.add(decision)
        return decision

    def decide_many(
        self, session: Session, principal: Principal, requests: Sequence[DecisionRequest]
    ) -> list[Decision]:
        """Every item's asker is checked before any is evaluated (a forbidden item: 403, nothing answered)."""
        self._check_askers(principal, requests)
        return self._decided_many(self.snapshot(session), requests)

    def decide_many_on(
        self, snap: Snapshot, principal: Principal, requests: Sequence[DecisionRequest]
    ) -> list[Decision]:
        """:meth:`decide_many` over a snapshot the caller keeps fresh (no database access)."""
        self._check_askers(principal, requests)
        return self._decided_many(snap, requests)

    def _check_askers(self, principal: Principal, requests: Sequence[DecisionRequest]) -> None:
        for i, item in enumerate(requests):
            self.check_asker(principal, item.application, f"items[{i}].application")

    def _decided_many(self, snap: Snapshot, requests: Sequence[DecisionRequest]) -> list[Decision]:
        now = self._clock.now()
        out = [self.evaluate(snap, item, now) for item in requests]
        for d in out:
            self.counts.add(d)
        return out

    @staticmethod
    def evaluate(snap: Snapshot, request: DecisionRequest, now: _dt.datetime) -> Decision:
        app, action, rtype = request.application, request.action, request.resource.type
        v = snap.version
        asked = {"application": app, "action": action, "type": rtype, "subject": request.subject}
        if app not in snap.applications:
            return Decision(
                DENY,
                f"application {app!r} has no roles in the policy",
                policy_version=v,
                code="no_application",
                params=asked,
            )
        rules = snap.rules.get((app, action, rtype))
        if not rules:
            return Decision(
                DENY,
                f"no role of application {app!r} grants action {action!r} on type {rtype!r}",
                policy_version=v,
                code="no_rule",
                params=asked,
            )
        subject = snap.subjects.get(request.subject)
        if subject is None:
            return Decision(
                DENY,
                f"subject {request.subject!r} is not known to the policy",
                policy_version=v,
                code="unknown_subject",
                params=asked,
            )
        attributes = request.resource.attributes
        failures: list[tuple[Rule, Grant, Check]] = []
        for rule in rules:
            for grant in snap.grants.get((subject.subject_id, rule.role_id), ()):
                check = grant.scope_check(attributes)
                held: list[str] = []
                if check.ok:
                    for cond in rule.conditions:
                        check = cond.check(subject, attributes, now)
                        if not check.ok:
                            break
                        held.append(check.why)
                if not check.ok:
                    failures.append((rule, grant, check))
                    continue
                because = f": {'; '.join(held)}" if held else ""
                return Decision(
                    PERMIT,
                    f"role {rule.role!r} (assignment #{grant.id}, scope {_scope_text(grant)}) grants {action!r} "
                    f"on {rtype!r} by rule {rule.name!r}{because}",
                    rule.id,
                    rule.label,
                    grant.id,
                    v,
                    code=PERMIT,
                    params={
                        **asked,
                        "role": rule.role,
                        "rule": rule.name,
                        "assignment": str(grant.id),
                        "prefecture": grant.prefecture or "",
                        "department": grant.department or "",
                    },
                )
        if failures:
            rule, grant, _check = failures[0]
            why = "; ".join(
                f"role {r.role!r} (assignment #{g.id}) would grant it by rule {r.name!r}, but {c.what}: {c.why}"
                for r, g, c in failures[:5]
            )
            more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
            return Decision(
                DENY,
                f"no rule granting {action!r} on {rtype!r} holds: {why}{more}",
                rule.id,
                rule.label,
                grant.id,
                v,
                code="conditions_fail",
                params={**asked, "count": str(len(failures))},
            )
        roles = sorted({r.role for r in rules})
        return Decision(
            DENY,
            f"subject {request.subject!r} holds no role of application {app!r} that grants {action!r} on {rtype!r} "
            f"(roles that do: {', '.join(roles)})",
            policy_version=v,
            code="no_role",
            params={**asked, "roles": ", ".join(roles)},
        )

    def explain(self, session: Session, principal: Principal, request: DecisionRequest) -> Explanation:
        """The decision, and every candidate (rule, assignment) with each check and its outcome."""
        self.check_explainer(principal)
        snap = self.snapshot(session)
        now = self._clock.now()
        decision = self.evaluate(snap, request, now)
        subject = snap.subjects.get(request.subject)
        attributes = request.resource.attributes
        candidates: list[Candidate] = []
        for rule in snap.rules.get((request.application, request.action, request.resource.type), ()):
            grants = snap.grants.get((request.subject, rule.role_id), ()) if subject is not None else ()
            if not grants:
                candidates.append(
                    Candidate(
                        rule.id,
                        rule.label,
                        rule.role,
                        None,
                        "-",
                        False,
                        (
                            Check(
                                "assignment",
                                False,
                                f"the subject does not hold role {rule.role!r}",
                                "no_assignment",
                                {"role": rule.role},
                            ),
                        ),
                    )
                )
                continue
            assert subject is not None
            for grant in grants:
                checks = [grant.scope_check(attributes)]
                checks.extend(c.check(subject, attributes, now) for c in rule.conditions)
                candidates.append(
                    Candidate(
                        rule.id,
                        rule.label,
                        rule.role,
                        grant.id,
                        _scope_text(grant),
                        all(c.ok for c in checks),
                        tuple(checks),
                        grant.prefecture,
                        grant.department,
                    )
                )
        return Explanation(decision, subject, tuple(candidates), now)
