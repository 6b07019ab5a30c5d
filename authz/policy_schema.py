"""What the access policy and a decision request may hold, checked with pydantic
(``extra="forbid"`` everywhere): the closed set of condition kinds, the policy file of
``govpki policy load`` and the decision request of ``POST /api/v1/authz/decide``.

A validation error becomes one :class:`InvalidError` naming every bad field as a dotted
path with list indexes (``applications[0].roles[2].permissions[0].conditions[1].to``);
each problem has a stable code (``authz.field.pattern``, ``authz.field.type``…, see
:func:`problem_code`) and its values besides the English reason the API answers with."""

from __future__ import annotations

import datetime as _dt
import zoneinfo
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from govpki.errors import FieldProblem, InvalidError

APP_NAME = r"^[a-z][a-z0-9-]{2,47}$"
ROLE_NAME = r"^[a-z][a-z0-9_.-]{0,63}$"
ACTION = r"^[a-z][a-z0-9_.:-]{0,63}$"
RESOURCE_TYPE = r"^[a-z][a-z0-9_.-]{0,63}$"
ATTRIBUTE = r"^[a-z][a-z0-9_]{0,63}$"
SUBJECT_ID = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,128}$"
TEXT_128 = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,128}$"
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_CONDITIONS = 16
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_TEXT = 256

AttributeValue = Annotated[str, Field(max_length=MAX_ATTRIBUTE_TEXT)] | int | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SamePrefectureAsResource(_Strict):
    """The subject's prefecture equals the resource's ``prefecture`` attribute."""

    kind: Literal["same_prefecture_as_resource"]


class SameDepartmentAsResource(_Strict):
    """The subject's department equals the resource's ``department`` attribute."""

    kind: Literal["same_department_as_resource"]


class TitleIn(_Strict):
    """The subject's title is one of ``titles``."""

    kind: Literal["title_in"]
    titles: list[Annotated[str, Field(pattern=TEXT_128)]] = Field(min_length=1, max_length=64)


class TimeWindow(_Strict):
    """The decision's time, in ``tz``, is on one of ``days`` and from ``from`` (inclusive)
    to ``to`` (exclusive); ``from`` after ``to`` is a window over midnight."""

    kind: Literal["time_window"]
    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1, max_length=7)
    from_: str = Field(alias="from", pattern=HHMM)
    to: str = Field(pattern=HHMM)
    tz: str = Field(default="Asia/Shanghai", max_length=64)

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. Asia/Shanghai") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.from_ == self.to:
            raise ValueError("'from' and 'to' must differ (from after to is a window over midnight)")
        return self


class ResourceAttributeEquals(_Strict):
    """The resource's attribute ``attribute`` equals ``value``."""

    kind: Literal["resource_attribute_equals"]
    attribute: str = Field(pattern=ATTRIBUTE)
    value: AttributeValue


Condition = Annotated[
    SamePrefectureAsResource | SameDepartmentAsResource | TitleIn | TimeWindow | ResourceAttributeEquals,
    Field(discriminator="kind"),
]
CONDITION_KINDS = (
    "same_prefecture_as_resource",
    "same_department_as_resource",
    "title_in",
    "time_window",
    "resource_attribute_equals",
)


class ConditionList(_Strict):
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)


# ----- the policy file ----------------------------------------------------------------


class PermissionIn(_Strict):
    name: str = Field(pattern=ROLE_NAME, description="the rule's name, shown as the rule that decided")
    action: str = Field(pattern=ACTION)
    resource_type: str = Field(pattern=RESOURCE_TYPE)
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)


class RoleIn(_Strict):
    name: str = Field(pattern=ROLE_NAME)
    description: str = Field(default="", max_length=500)
    permissions: list[PermissionIn] = Field(default_factory=list, max_length=200)


class ApplicationIn(_Strict):
    name: str = Field(pattern=APP_NAME)
    roles: list[RoleIn] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _unique_roles(self) -> ApplicationIn:
        seen: set[str] = set()
        for role in self.roles:
            if role.name in seen:
                raise ValueError(f"role {role.name!r} is given twice")
            seen.add(role.name)
        return self


class SubjectIn(_Strict):
    id: str = Field(pattern=SUBJECT_ID)
    prefecture: str | None = Field(default=None, pattern=r"^[0-9A-Za-z_-]{1,32}$")
    department: str | None = Field(default=None, pattern=TEXT_128)
    title: str | None = Field(default=None, pattern=TEXT_128)


class AssignmentIn(_Strict):
    subject: str = Field(pattern=SUBJECT_ID)
    application: str = Field(pattern=APP_NAME)
    role: str = Field(pattern=ROLE_NAME)
    prefecture: str | None = Field(default=None, pattern=r"^[0-9A-Za-z_-]{1,32}$")
    department: str | None = Field(default=None, pattern=TEXT_128)


class PolicyDocument(_Strict):
    """``govpki policy load FILE``: it replaces every role (with its permissions and
    assignments) of the applications it names, and sets the subjects it lists."""

    subjects: list[SubjectIn] = Field(default_factory=list, max_length=1_000_000)
    applications: list[ApplicationIn] = Field(default_factory=list, max_length=10_000)
    assignments: list[AssignmentIn] = Field(default_factory=list, max_length=1_000_000)


# ----- decision requests --------------------------------------------------------------


class ResourceIn(_Strict):
    type: str = Field(pattern=RESOURCE_TYPE)
    id: str = Field(min_length=1, max_length=200)
    attributes: dict[Annotated[str, Field(pattern=ATTRIBUTE)], AttributeValue] = Field(
        default_factory=dict, max_length=MAX_ATTRIBUTES
    )


class DecisionRequest(_Strict):
    subject: str = Field(pattern=SUBJECT_ID, description="the person's stable subject id")
    application: str = Field(pattern=APP_NAME)
    action: str = Field(pattern=ACTION)
    resource: ResourceIn


class DecisionBatch(_Strict):
    items: list[DecisionRequest] = Field(min_length=1, max_length=1000)


# ----- errors ---------------------------------------------------------------------------


def field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in CONDITION_KINDS:
            continue  # the discriminated union's branch, not a field
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _reason(error: Any) -> str:
    message = str(error.get("msg", "is not valid"))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "missing":
        return "is required"
    if kind == "union_tag_invalid":
        return f"kind must be one of {', '.join(CONDITION_KINDS)}"
    if kind == "string_pattern_mismatch":
        return f"has characters or a form that is not allowed ({message.lower()})"
    return message.removeprefix("Value error, ")


# what a pattern asks for, by name (the portal words it in the reader's language)
PATTERN_NAMES: dict[str, str] = {
    APP_NAME: "application",
    ROLE_NAME: "name",  # also RESOURCE_TYPE: the same pattern
    ACTION: "action",
    ATTRIBUTE: "attribute",
    SUBJECT_ID: "text",  # also TEXT_128
    HHMM: "hhmm",
    r"^[0-9A-Za-z_-]{1,32}$": "code",
}
_TYPES = {"dict": "object", "string": "text", "int": "integer", "bool": "boolean", "list": "list", "float": "number"}
_UNION_MEMBERS = frozenset({"str", "constrained-str", "int", "bool"})


def problem_code(error: Any) -> tuple[str, dict[str, str | int]]:
    """A stable code (``authz.field.*``) and its values for one pydantic error: what the
    problem is, independent of pydantic's English wording (the API keeps the reason text)."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    loc = tuple(error.get("loc", ()))
    if len(loc) >= 3 and loc[-3:-2] == ("attributes",) and str(loc[-1]) in _UNION_MEMBERS:
        return "authz.field.attribute_value", {"key": str(loc[-2]), "max_length": MAX_ATTRIBUTE_TEXT}
    if kind == "extra_forbidden":
        return "authz.field.unknown", {}
    if kind == "missing":
        return "authz.field.required", {}
    if kind == "union_tag_invalid":
        return "authz.field.condition_kind", {"kinds": ", ".join(CONDITION_KINDS)}
    if kind == "string_pattern_mismatch":
        params: dict[str, str | int] = {"format": PATTERN_NAMES.get(str(ctx.get("pattern", "")), "other")}
        if loc and loc[-1] == "[key]" and len(loc) >= 2:
            params["key"] = str(loc[-2])
        return "authz.field.pattern", params
    if kind == "string_too_short":
        return "authz.field.too_short", {"min_length": int(ctx.get("min_length", 1))}
    if kind == "string_too_long":
        return "authz.field.too_long", {"max_length": int(ctx.get("max_length", 0))}
    if kind == "too_short":
        return "authz.field.too_few", {"min_length": int(ctx.get("min_length", 1))}
    if kind == "too_long":
        return "authz.field.too_many", {"max_length": int(ctx.get("max_length", 0))}
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "authz.field.type", {"expected": _TYPES.get(kind.split("_", maxsplit=1)[0], "other")}
    if kind == "literal_error":
        return "authz.field.choice", {"expected": str(ctx.get("expected", ""))}
    return "authz.field.invalid", {}


def invalid_from(exc: ValidationError, prefix: str = "", code: str = "authz.invalid") -> InvalidError:
    problems = [
        FieldProblem(field_path(tuple(e["loc"]), prefix), _reason(e), *problem_code(e)) for e in exc.errors()[:20]
    ]
    first = problems[0]
    more = f" (and {len(problems) - 1} more: see errors)" if len(problems) > 1 else ""
    return InvalidError(first.reason + more, field=first.field, problems=problems, code=code)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any, *, prefix: str = "", code: str = "authz.invalid") -> M:
    """Validate ``data`` (already decoded JSON/TOML) as ``model`` or raise an InvalidError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc, prefix, code) from None


def parse_json(model: type[M], raw: bytes, *, code: str = "authz.invalid") -> M:
    """Validate raw JSON bytes as ``model`` (one pass) or raise an InvalidError."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors() and exc.errors()[0].get("type") == "json_invalid":
            raise InvalidError("is not valid JSON", field="body", code="api.malformed_json") from None
        raise invalid_from(exc, "", code) from None


def now_in(tz: str, at: _dt.datetime) -> _dt.datetime:
    return at.astimezone(zoneinfo.ZoneInfo(tz))
