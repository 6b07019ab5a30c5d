"""One error hierarchy for every layer. Kinds map to HTTP only in ``web``.

Each error names the field it is about (dotted path, or ``None`` for the request
as a whole) and a reason a person can act on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        if code is not None:
            self.code = code
        self.problems: list[FieldProblem] = problems or [FieldProblem(field, reason)]


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
