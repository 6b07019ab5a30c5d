"""RFC 9457 problem documents without Flask: the one error hierarchy's HTTP mapping
(:data:`STATUS`), the titles, the document and its JSON text. :mod:`web.problems`
renders them as Flask responses; the dedicated decision server (:mod:`web.authz_server`)
sends the same bytes."""

from __future__ import annotations

import json
from typing import Any

from govpki.errors import ErrorKind, FieldProblem, GovpkiError

STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 422,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.CONFLICT: 409,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.UNAVAILABLE: 503,
}
TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    500: "Internal error",
    503: "Service unavailable",
}
MEDIA_TYPE = "application/problem+json"


def dumps(value: Any) -> str:
    """JSON text as the app's responses have it (Flask's provider: sorted keys; here
    without escaping non-ASCII, as ``json.dumps(..., ensure_ascii=False)`` in the views)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def document(
    status: int, detail: str, *, code: str, instance: str | None = None, problems: list[FieldProblem] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:govpki:problem:{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if problems:
        body["errors"] = [{"field": p.field, "reason": p.reason} for p in problems]
    return body


def error_document(error: GovpkiError, instance: str | None = None) -> tuple[int, dict[str, Any]]:
    """The status and problem document of a domain error."""
    status = STATUS[error.kind]
    detail = f"{error.field}: {error.reason}" if error.field else error.reason
    return status, document(status, detail, code=error.code, instance=instance, problems=error.problems)
