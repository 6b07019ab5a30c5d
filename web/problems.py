"""Map the one error hierarchy to HTTP: RFC 9457 problem details for the API."""

from __future__ import annotations

from flask import Response

from govpki.errors import FieldProblem, GovpkiError
from web.problem_json import MEDIA_TYPE, STATUS, TITLES, document, dumps, error_document

__all__ = ["STATUS", "TITLES", "from_error", "problem"]


def problem(
    status: int, detail: str, *, code: str, instance: str | None = None, problems: list[FieldProblem] | None = None
) -> Response:
    body = document(status, detail, code=code, instance=instance, problems=problems)
    response = Response(dumps(body), status=status, mimetype=MEDIA_TYPE)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="govpki"'
    return response


def from_error(error: GovpkiError, instance: str | None = None) -> Response:
    status, body = error_document(error, instance)
    response = Response(dumps(body), status=status, mimetype=MEDIA_TYPE)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="govpki"'
    return response
