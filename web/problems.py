"""Map the one error hierarchy to HTTP: RFC 9457 problem details for the API."""

from __future__ import annotations

from typing import Any

from flask import Response, json

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


def problem(
    status: int, detail: str, *, code: str, instance: str | None = None, problems: list[FieldProblem] | None = None
) -> Response:
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
    response = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/problem+json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="govpki"'
    return response


def from_error(error: GovpkiError, instance: str | None = None) -> Response:
    status = STATUS[error.kind]
    detail = f"{error.field}: {error.reason}" if error.field else error.reason
    return problem(status, detail, code=error.code, instance=instance, problems=error.problems)
