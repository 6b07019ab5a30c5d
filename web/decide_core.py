"""The access decision API without a web framework: one implementation of
``POST /api/v1/authz/decide`` and ``…/decide/batch`` for both fronts — the Flask views
(:mod:`web.api_authz`) and the dedicated decision server (:mod:`web.authz_server`) —
so they give the same answers, byte for byte: the same order of checks (client
credentials → media type → body size → JSON schema → scopes → decision), limits,
problem documents and JSON text.

How a front authenticates and decides is its :class:`Decider`: the Flask views read
the database through the request's session; the decision server answers from its
credential cache and its in-memory policy snapshot, and goes to the database (in a
thread) only on a cache miss."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from authz.decisions import Decision
from authz.policy_schema import DecisionBatch, DecisionRequest, parse_json
from govpki.errors import GovpkiError, InvalidError, UnauthenticatedError
from govpki.principal import Principal
from web.problem_json import MEDIA_TYPE as PROBLEM_MEDIA_TYPE
from web.problem_json import document, dumps, error_document

DECIDE_PATH = "/api/v1/authz/decide"
BATCH_PATH = "/api/v1/authz/decide/batch"
MAX_DECIDE_BODY = 64 * 1024
MAX_BATCH_BODY = 1024 * 1024
MAX_BATCH_ITEMS = 1000  # DecisionBatch's limit
JSON_MEDIA_TYPE = "application/json"
BASIC_CHALLENGE = 'Basic realm="govpki", charset="UTF-8"'
_NO_CREDENTIALS = "client credentials are required: 'Authorization: Basic base64(client_id:client_secret)'"


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """An answer of the decision API: status, media type, body and extra headers."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class Decider(Protocol):
    """How a front checks client credentials and decides."""

    def authenticate(self, client_id: str, secret: str) -> Principal:
        """The application's principal; UnauthenticatedError when the credentials are not valid."""
        ...

    def certificate_client(self) -> Principal | None:
        """Without an Authorization header: the application that authenticated by mutual TLS
        (a bound certificate passed on by the trusted TLS front), ``None`` when there is none;
        UnauthenticatedError when the certificate is not valid or bound to no application."""
        ...

    def decide(self, principal: Principal, item: DecisionRequest) -> Decision: ...

    def decide_many(self, principal: Principal, items: Sequence[DecisionRequest]) -> list[Decision]: ...


def basic_credentials(header: str | None) -> tuple[str, str]:
    """``client_secret_basic`` (RFC 6749 2.3.1): the client id and secret of an
    ``Authorization: Basic`` header, each part form-urlencoded; parsed as Werkzeug parses
    it for :func:`web.api_events._client`. UnauthenticatedError when there is none."""
    if header:
        scheme, _, rest = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(rest.strip(" \t"), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeError):
                pass
            else:
                return unquote(client_id), unquote(secret)
    raise UnauthenticatedError(_NO_CREDENTIALS, field="authorization")


def is_json(content_type: str | None) -> bool:
    """Werkzeug's ``request.is_json``: application/json or application/*+json."""
    mt = (content_type or "").split(";", 1)[0].strip().lower()
    return mt == JSON_MEDIA_TYPE or (mt.startswith("application/") and mt.endswith("+json"))


def problem(error: GovpkiError, path: str, headers: tuple[tuple[str, str], ...] = ()) -> ApiAnswer:
    status, body = error_document(error, path)
    return ApiAnswer(status, PROBLEM_MEDIA_TYPE, dumps(body).encode(), headers)


def too_large(limit: int, path: str) -> ApiAnswer:
    """The app's 413 (``web.app``'s HTTPException handler) for a body over ``limit``."""
    body = document(413, f"the request body is larger than {limit} bytes", code="http.413", instance=path)
    return ApiAnswer(413, PROBLEM_MEDIA_TYPE, dumps(body).encode())


def internal_error(path: str) -> ApiAnswer:
    """The app's 500 (``web.app``'s catch-all handler); the caller logs the exception."""
    body = document(500, "an internal error occurred; it was logged", code="govpki.internal", instance=path)
    return ApiAnswer(500, PROBLEM_MEDIA_TYPE, dumps(body).encode())


def limit_of(batch: bool) -> int:
    return MAX_BATCH_BODY if batch else MAX_DECIDE_BODY


def answer(
    path: str,
    *,
    batch: bool,
    authorization: str | None,
    content_type: str | None,
    content_length: int | None,
    read_body: Callable[[], bytes],
    decider: Decider,
) -> ApiAnswer:
    """Answer one request to ``/decide`` (``batch`` False) or ``/decide/batch``.

    ``read_body`` is called only once the client is authenticated, the media type is
    JSON and ``content_length`` is within the limit."""
    try:
        found = decider.certificate_client() if authorization is None else None
        who = found if found is not None else decider.authenticate(*basic_credentials(authorization))
    except UnauthenticatedError as exc:
        return problem(exc, path, (("WWW-Authenticate", BASIC_CHALLENGE),))
    try:
        if not is_json(content_type):
            raise InvalidError("send the request body as application/json", field="body", code="api.media_type")
        limit = limit_of(batch)
        if content_length is not None and content_length > limit:
            return too_large(limit, path)
        raw = read_body()
        if batch:
            items = parse_json(DecisionBatch, raw, code="authz.invalid_request").items
            out = {"decisions": [d.as_dict() for d in decider.decide_many(who, items)]}
            return ApiAnswer(200, JSON_MEDIA_TYPE, dumps(out).encode())
        item = parse_json(DecisionRequest, raw, code="authz.invalid_request")
        return ApiAnswer(200, JSON_MEDIA_TYPE, dumps(decider.decide(who, item).as_dict()).encode())
    except GovpkiError as exc:
        return problem(exc, path)
