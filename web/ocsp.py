"""The OCSP endpoint: ``POST /ocsp`` (application/ocsp-request) and ``GET /ocsp/<base64>``.

The HTTP semantics live here once (:func:`route` → :func:`reply`), and two fronts use
them: a small WSGI dispatcher in front of the Flask app (:class:`OcspDispatcher`; the
hot path is a parse, one primary-key look-up and the stored bytes, and Flask's request
machinery would cost more than that), and the dedicated asyncio responder
(:mod:`web.ocsp_server`). Every answer is HTTP 200 with an OCSP response (errors as OCSP
statuses: malformedRequest, unauthorized, tryLater, internalError); only a body over the
app's 1 MiB limit gets a plain 413, and a method other than GET/HEAD/POST a 405.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import email.utils
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ca.ocsp import MAX_REQUEST_BYTES, OcspAnswer, OcspService, OcspStatus, error_response
from web.httpserver import HttpReply

log = logging.getLogger("govpki.web.ocsp")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

PREFIX = "/ocsp"
CONTENT_TYPE = "application/ocsp-response"
_MALFORMED = OcspAnswer(error_response(OcspStatus.MALFORMED_REQUEST), OcspStatus.MALFORMED_REQUEST)
_INTERNAL = OcspAnswer(error_response(OcspStatus.INTERNAL_ERROR), OcspStatus.INTERNAL_ERROR)


@dataclass(frozen=True)
class OcspCall:
    """A request for the OCSP service: its DER (``None``: not a usable request, answered
    malformedRequest without asking the service), and how the answer goes back."""

    der: bytes | None
    get: bool = False
    head: bool = False


def decode_get_path(text: str) -> bytes | None:
    """The DER of a GET request's path part: standard or URL-safe base64, padded or not,
    percent-encoded or not (RFC 6960 A.1). ``None`` when it is not base64."""
    if "%" in text:
        text = unquote(text)
    text = text.strip().replace("-", "+").replace("_", "/")
    text = text.rstrip("=")
    if not text:
        return None
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _http_date(value: _dt.datetime) -> str:
    return email.utils.format_datetime(value.astimezone(_dt.UTC), usegmt=True)


def is_ocsp_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def too_large(max_body: int) -> HttpReply:
    body = f"the request body is larger than {max_body} bytes\n".encode()
    return HttpReply(
        "413 Request Entity Too Large",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")],
        body,
        close=True,
    )


def route(
    method: str, path: str, content_length: int | None, read_body: Callable[[int], bytes], max_body: int
) -> HttpReply | OcspCall:
    """What an HTTP request on ``/ocsp`` or ``/ocsp/...`` asks for: a final reply (413,
    405), or an :class:`OcspCall` for the service. ``path`` is percent-decoded (as WSGI's
    PATH_INFO); ``content_length`` ``None`` or -1 when absent or not a number;
    ``read_body(length)`` returns the body (``length`` ≤ 0: read up to EOF, at most
    ``MAX_REQUEST_BYTES + 1``) and is called only for a POST within ``max_body``."""
    if method == "POST" and path in (PREFIX, PREFIX + "/"):
        length = -1 if content_length is None else content_length
        if length > max_body:
            return too_large(max_body)
        # read what was sent (so the client sees the answer, not a reset), up to the limit
        data = read_body(length)
        if len(data) > MAX_REQUEST_BYTES:
            return OcspCall(None)
        return OcspCall(data)
    if method in ("GET", "HEAD") and path.startswith(PREFIX + "/"):
        # a percent-decoded path: "/" inside the base64 makes more segments
        return OcspCall(decode_get_path(path[len(PREFIX) + 1 :]), get=True, head=method == "HEAD")
    if method in ("GET", "HEAD"):  # GET /ocsp with no request
        return OcspCall(None)
    body = b"OCSP requests are POST /ocsp or GET /ocsp/<base64 request>\n"
    return HttpReply(
        "405 Method Not Allowed",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Allow", "GET, HEAD, POST")],
        body,
    )


def answer(service: OcspService, call: OcspCall) -> OcspAnswer:
    """The service's answer to ``call`` (signing if it must)."""
    return service.respond(call.der) if call.der is not None else _MALFORMED


def answer_stored(service: OcspService, call: OcspCall) -> OcspAnswer | None:
    """The answer to ``call`` when it needs no signing, else ``None`` (see
    :meth:`OcspService.respond_stored`)."""
    return service.respond_stored(call.der) if call.der is not None else _MALFORMED


def reply(answer: OcspAnswer, call: OcspCall) -> HttpReply:
    """The HTTP reply carrying ``answer``: RFC 5019 §6 cache headers on cacheable GET answers."""
    headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(answer.der)))]
    if call.get and answer.cacheable and answer.this_update is not None and answer.next_update is not None:
        # RFC 5019 §6: let HTTP caches keep the answer until nextUpdate
        now = _dt.datetime.now(_dt.UTC)
        max_age = max(0, int((answer.next_update - now).total_seconds()))
        headers += [
            ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
            ("Last-Modified", _http_date(answer.this_update)),
            ("Expires", _http_date(answer.next_update)),
            ("ETag", '"' + hashlib.sha256(answer.der).hexdigest() + '"'),
        ]
    else:
        headers.append(("Cache-Control", "no-store"))
    return HttpReply("200 OK", headers, b"" if call.head else answer.der)


def internal_error() -> HttpReply:
    """What a front sends when handling failed (never a 500)."""
    log.exception("OCSP endpoint failed")
    return reply(_INTERNAL, OcspCall(None))


class OcspDispatcher:
    """WSGI middleware: ``/ocsp`` and ``/ocsp/...`` here, everything else to ``app``."""

    def __init__(self, app: WsgiApp, service: OcspService, max_body: int) -> None:
        self._app = app
        self._service = service
        self._max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not is_ocsp_path(path):
            return self._app(environ, start_response)
        try:
            result = self._handle(environ, path)
        except Exception:  # never a 500
            result = internal_error()
        start_response(result.status, result.headers)
        return [result.body]

    def _handle(self, environ: dict[str, Any], path: str) -> HttpReply:
        try:
            content_length: int | None = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            content_length = None
        stream = environ["wsgi.input"]

        def read_body(length: int) -> bytes:
            return bytes(stream.read(length) if length > 0 else stream.read(MAX_REQUEST_BYTES + 1))

        call = route(environ.get("REQUEST_METHOD", "GET"), path, content_length, read_body, self._max_body)
        if isinstance(call, HttpReply):
            return call
        return reply(answer(self._service, call), call)
