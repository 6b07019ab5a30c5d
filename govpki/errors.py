"""One error hierarchy for every layer. Kinds map to HTTP only in ``web``.

Each error names the field it is about (dotted path, or ``None`` for the request
as a whole) and a reason a person can act on. Its ``code`` is stable (the web portal picks
its translation by the code, never by the English text); ``params`` carries the values the
reason names (a serial, a prefecture, a count…), so that a translation can name them too.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _field


class ErrorKind(enum.Enum):
    INVALID = "invalid"
    NOT_FOUND = "not-found"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class FieldProblem:
    field: str | None
    reason: str
    code: str | None = None
    params: Mapping[str, str | int] = _field(default_factory=dict)


class GovpkiError(Exception):
    kind: ErrorKind = ErrorKind.INVALID
    code: str = "govpki.error"

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        code: str | None = None,
        problems: list[FieldProblem] | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        if code is not None:
            self.code = code
        self.params: Mapping[str, str | int] = dict(params or {})
        self.problems: list[FieldProblem] = problems or [FieldProblem(field, reason, self.code, self.params)]


class InvalidError(GovpkiError):
    kind = ErrorKind.INVALID
    code = "govpki.invalid"


class NotFoundError(GovpkiError):
    kind = ErrorKind.NOT_FOUND
    code = "govpki.not_found"


class ForbiddenError(GovpkiError):
    kind = ErrorKind.FORBIDDEN
    code = "govpki.forbidden"


class ConflictError(GovpkiError):
    kind = ErrorKind.CONFLICT
    code = "govpki.conflict"


class UnauthenticatedError(GovpkiError):
    kind = ErrorKind.UNAUTHENTICATED
    code = "govpki.unauthenticated"


class UnavailableError(GovpkiError):
    kind = ErrorKind.UNAVAILABLE
    code = "govpki.unavailable"


class ConfigError(Exception):
    """Configuration is wrong; start-up stops with this message."""
