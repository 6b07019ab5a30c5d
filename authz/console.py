"""The auditors' console: search the audit log, read one entry, the verification badge,
failed sign-ins per hour. Only a security auditor (or the system) may use it; every
method checks that itself, so the web view's check is not the only one.

Prefecture and application: an entry carries them only inside its ``details`` (JSON
text), e.g. ``{"prefecture_code": "6501"}``, ``{"prefecture": "乌鲁木齐市"}`` or an RA
entry whose object is the prefecture code; a certificate entry also belongs to the
prefecture its certificate record names (``certificates.prefecture_code``, set at
issuance — read through a table clause, so this module does not import the CA domain).
They are derived at query time by JSON
extraction in SQL (``json_extract`` on SQLite, ``jsonb_extract_path_text`` on
PostgreSQL) rather than stored in a side column: the hashed entry format and the
append path (:func:`govpki.audit.record`, on every change of every domain) stay exactly
as they are, and no backfill is needed for existing or archived entries. The cost is a
scan of the rows the other conditions leave (time range, action, actor); an expression
index per dialect can be added later without touching the chain.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import JSON, ColumnElement, and_, cast, column, func, or_, select, table
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from authz.auditing import AuditCheckpointService, VerificationReport
from authz.events import AuthzEvent
from govpki.audit import AuditArchive, AuditEntry, AuditVerification, archive_anchor
from govpki.clock import Clock
from govpki.errors import ForbiddenError, InvalidError, NotFoundError
from govpki.principal import Principal, PrincipalKind, Role
from govpki.sqltime import bucket

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PREFECTURE_KEYS = ("prefecture_code", "prefecture")
PREFECTURE_OBJECTS = ("ra", "prefecture")
_CERTIFICATES = table("certificates", column("serial"), column("prefecture_code"))
# dotted: a nested key (``source.application`` is where application events name their source)
APPLICATION_KEYS = ("application", "application_name", "source.application")
APPLICATION_OBJECTS = ("application",)
_OUTCOME = re.compile(r"^[a-z_]{1,20}$")
_ACTION = re.compile(r"^[a-z0-9_:]{1,100}$")
_LIMITS = {"actor": 200, "action": 100, "object_type": 50, "object_id": 200, "prefecture": 100, "application": 200}


def authorise_auditor(principal: Principal, what: str = "use the audit console") -> None:
    if principal.kind is PrincipalKind.SYSTEM or principal.has(Role.SECURITY_AUDITOR):
        return
    raise ForbiddenError(f"only a security auditor may {what}", field="role")


def parse_time(value: str, name: str) -> _dt.datetime:
    """RFC 3339 or the HTML ``datetime-local`` form (``YYYY-MM-DDTHH:MM[:SS]``, taken as UTC)."""
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidError("is not a time (YYYY-MM-DDTHH:MM, UTC, or RFC 3339)", field=name) from None
    return parsed.replace(tzinfo=_dt.UTC) if parsed.tzinfo is None else parsed.astimezone(_dt.UTC)


@dataclass(frozen=True)
class AuditFilter:
    """What to look for. Empty fields do not filter. ``action`` is a prefix
    (``ca:certificate`` finds issue, revoke, …), ``actor`` a substring, the rest exact."""

    since: _dt.datetime | None = None
    until: _dt.datetime | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    prefecture: str | None = None
    application: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str | None]) -> AuditFilter:
        """From query parameters or CLI options; a bad value is an InvalidError naming it."""
        values: dict[str, Any] = {}
        for name in ("since", "until"):
            raw = (params.get(name) or "").strip()
            values[name] = parse_time(raw, name) if raw else None
        for name, limit in _LIMITS.items():
            raw = (params.get(name) or "").strip()
            if len(raw) > limit:
                raise InvalidError(f"must be at most {limit} characters", field=name)
            values[name] = raw or None
        raw_outcome = (params.get("outcome") or "").strip()
        if raw_outcome and not _OUTCOME.match(raw_outcome):
            raise InvalidError("must be an outcome such as success or failure", field="outcome")
        values["outcome"] = raw_outcome or None
        if values["action"] and not _ACTION.match(values["action"]):
            raise InvalidError("must be an action tag or its start, e.g. ca:certificate", field="action")
        made = cls(**values)
        if made.since and made.until and made.until < made.since:
            raise InvalidError("must not be before since", field="until")
        return made

    def to_params(self) -> dict[str, str]:
        """The non-empty fields as strings (query string, audit details, bundle)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = value.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, _dt.datetime) else str(value)
        return out

    @property
    def empty(self) -> bool:
        return not self.to_params()


def _json_text(column: Any, key: str, dialect: str) -> Any:
    path = key.split(".")
    if dialect == "postgresql":
        return func.jsonb_extract_path_text(cast(column, JSONB), *path)
    if dialect == "sqlite":
        return func.json_extract(column, "$." + ".".join(path))
    return cast(column, JSON)[tuple(path)].as_string()


def _derived_match(keys: Sequence[str], objects: Sequence[str], value: str, dialect: str) -> ColumnElement[bool]:
    c = AuditEntry
    options = [_json_text(c.details, key, dialect) == value for key in keys]
    options.append(and_(c.object_type.in_(objects), c.object_id == value))
    return or_(*options)


def conditions(flt: AuditFilter, dialect: str) -> list[ColumnElement[bool]]:
    """The filter as SQL conditions on ``audit_log`` (the console and the evidence export share them)."""
    c = AuditEntry
    out: list[ColumnElement[bool]] = []
    if flt.since is not None:
        out.append(c.at >= flt.since)
    if flt.until is not None:
        out.append(c.at <= flt.until)
    if flt.actor:
        out.append(c.actor.contains(flt.actor, autoescape=True))
    if flt.action:
        out.append(c.action.startswith(flt.action, autoescape=True))
    if flt.outcome:
        out.append(c.outcome == flt.outcome)
    if flt.object_type:
        out.append(c.object_type == flt.object_type)
    if flt.object_id:
        out.append(c.object_id == flt.object_id)
    if flt.prefecture:
        by_certificate = and_(
            c.object_type == "certificate",
            c.object_id.in_(select(_CERTIFICATES.c.serial).where(_CERTIFICATES.c.prefecture_code == flt.prefecture)),
        )
        out.append(or_(_derived_match(PREFECTURE_KEYS, PREFECTURE_OBJECTS, flt.prefecture, dialect), by_certificate))
    if flt.application:
        out.append(_derived_match(APPLICATION_KEYS, APPLICATION_OBJECTS, flt.application, dialect))
    return out


def details_of(entry: AuditEntry) -> dict[str, Any]:
    try:
        value = json.loads(entry.details)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _derive(entry: AuditEntry, details: Mapping[str, Any], keys: Sequence[str], objects: Sequence[str]) -> str | None:
    for key in keys:
        value: Any = details
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return entry.object_id if entry.object_type in objects else None


def prefecture_of(entry: AuditEntry, certificates: Mapping[str, str] | None = None) -> str | None:
    """From the details or object; else, for a certificate entry, from ``certificates``
    (serial → prefecture code, see :meth:`AuditConsoleService.certificate_prefectures`)."""
    found = _derive(entry, details_of(entry), PREFECTURE_KEYS, PREFECTURE_OBJECTS)
    if found is None and certificates and entry.object_type == "certificate":
        return certificates.get(entry.object_id)
    return found


def application_of(entry: AuditEntry) -> str | None:
    return _derive(entry, details_of(entry), APPLICATION_KEYS, APPLICATION_OBJECTS)


def changes_of(details: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, before, after) when the details carry before/after values
    (``{"before": {...}, "after": {...}}`` or ``{"old": ..., "new": ...}``)."""
    for old_key, new_key in (("before", "after"), ("old", "new")):
        if old_key in details or new_key in details:
            before, after = details.get(old_key), details.get(new_key)
            if isinstance(before, dict | type(None)) and isinstance(after, dict | type(None)):
                b, a = before or {}, after or {}
                return [(k, b.get(k), a.get(k)) for k in sorted(set(b) | set(a))]
            return [("value", before, after)]
    return []


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    newer: int | None  # pass as ``after`` for the newer page
    older: int | None  # pass as ``before`` for the older page


@dataclass(frozen=True)
class Bar:
    label: str
    value: int


class AuditConsoleService:
    def __init__(self, clock: Clock, checkpoints: AuditCheckpointService) -> None:
        self._clock = clock
        self._checkpoints = checkpoints

    def search(
        self,
        session: Session,
        principal: Principal,
        flt: AuditFilter,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = PAGE_SIZE,
    ) -> AuditPage:
        """Newest first, ``limit`` a page; keyset pagination on ``seq`` (no OFFSET)."""
        authorise_auditor(principal)
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidError(f"must be between 1 and {MAX_PAGE_SIZE}", field="limit")
        for name, value in (("before", before), ("after", after)):
            if value is not None and value < 0:
                raise InvalidError("must be 0 or more", field=name)
        dialect = session.get_bind().dialect.name
        where = conditions(flt, dialect)
        query = select(AuditEntry).where(*where)
        if after is not None:
            rows = list(session.scalars(query.where(AuditEntry.seq > after).order_by(AuditEntry.seq).limit(limit)))
            rows.reverse()
        else:
            if before is not None:
                query = query.where(AuditEntry.seq < before)
            rows = list(session.scalars(query.order_by(AuditEntry.seq.desc()).limit(limit)))
        if not rows:
            return AuditPage([], None, None)
        top, bottom = rows[0].seq, rows[-1].seq

        def exists(extra: ColumnElement[bool]) -> bool:
            return session.scalar(select(AuditEntry.seq).where(*where, extra).limit(1)) is not None

        return AuditPage(
            rows,
            top if exists(AuditEntry.seq > top) else None,
            bottom if exists(AuditEntry.seq < bottom) else None,
        )

    def certificate_prefectures(
        self, session: Session, principal: Principal, entries: Sequence[AuditEntry]
    ) -> dict[str, str]:
        """Serial → prefecture code for the certificate entries among ``entries`` (one query)."""
        authorise_auditor(principal)
        serials = sorted({e.object_id for e in entries if e.object_type == "certificate"})
        if not serials:
            return {}
        t = _CERTIFICATES
        rows = session.execute(
            select(t.c.serial, t.c.prefecture_code).where(t.c.serial.in_(serials), t.c.prefecture_code.is_not(None))
        )
        return {str(serial): str(code) for serial, code in rows}

    def entry(self, session: Session, principal: Principal, seq: int) -> AuditEntry:
        authorise_auditor(principal)
        found = session.get(AuditEntry, seq)
        if found is not None:
            return found
        anchor, _ = archive_anchor(session)
        if 0 < seq <= anchor.seq:
            archive = session.scalars(
                select(AuditArchive).where(AuditArchive.first_seq <= seq, AuditArchive.last_seq >= seq)
            ).first()
            where = archive.file_name if archive is not None else "an archive file"
            raise NotFoundError(f"audit entry {seq} was archived to {where}", field="seq")
        raise NotFoundError(f"there is no audit entry {seq}", field="seq")

    def latest_verification(self, session: Session, principal: Principal) -> AuditVerification | None:
        authorise_auditor(principal)
        return self._checkpoints.latest_verification(session)

    def verify_now(self, session: Session, principal: Principal) -> VerificationReport:
        """The full verification (recorded as an ``audit_verifications`` row); the caller commits."""
        authorise_auditor(principal, "verify the audit log from the console")
        return self._checkpoints.verify(session, principal)

    def failed_sign_ins_per_hour(self, session: Session, principal: Principal, hours: int = 24) -> list[Bar]:
        """Failed sign-ins in each of the last ``hours`` hours (UTC), oldest first, zeros included."""
        authorise_auditor(principal)
        now = self._clock.now().astimezone(_dt.UTC).replace(minute=0, second=0, microsecond=0)
        start = now - _dt.timedelta(hours=hours - 1)
        hour = bucket(AuditEntry.at, "hour", session.get_bind().dialect.name)
        counts = {
            str(label): int(count)
            for label, count in session.execute(
                select(hour, func.count())
                .where(AuditEntry.action == AuthzEvent.SIGN_IN_FAIL.value, AuditEntry.at >= start)
                .group_by(hour)
            )
        }
        bars = []
        for i in range(hours):
            at = start + _dt.timedelta(hours=i)
            bars.append(Bar(at.strftime("%H:00"), counts.get(at.strftime("%Y-%m-%d %H"), 0)))
        return bars


__all__ = [
    "AuditConsoleService",
    "AuditFilter",
    "AuditPage",
    "Bar",
    "application_of",
    "authorise_auditor",
    "changes_of",
    "conditions",
    "details_of",
    "prefecture_of",
]
