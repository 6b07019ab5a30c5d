"""The OCSP endpoint: ``POST /ocsp`` (application/ocsp-request) and ``GET /ocsp/<base64>``.

Served by a small WSGI dispatcher in front of the Flask app: the hot path is a parse,
one primary-key look-up and the stored bytes, and Flask's request machinery (session,
unit of work, error handlers) would cost more than that. Every answer is HTTP 200 with
an OCSP response (errors as OCSP statuses: malformedRequest, unauthorized, tryLater,
internalError); only a body over the app's 1 MiB limit gets a plain 413, and a method
other than GET/POST a 405.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import email.utils
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from ca.ocsp import MAX_REQUEST_BYTES, OcspAnswer, OcspService, OcspStatus, error_response

log = logging.getLogger("govpki.web.ocsp")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

PREFIX = "/ocsp"
CONTENT_TYPE = "application/ocsp-response"
_MALFORMED = error_response(OcspStatus.MALFORMED_REQUEST)
_INTERNAL = error_response(OcspStatus.INTERNAL_ERROR)
_MALFORMED_STATUS = OcspStatus.MALFORMED_REQUEST


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


class OcspDispatcher:
    """WSGI middleware: ``/ocsp`` and ``/ocsp/...`` here, everything else to ``app``."""

    def __init__(self, app: WsgiApp, service: OcspService, max_body: int) -> None:
        self._app = app
        self._service = service
        self._max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return self._app(environ, start_response)
        try:
            return self._handle(environ, start_response, path)
        except Exception:  # never a 500
            log.exception("OCSP endpoint failed")
            return self._send(start_response, OcspAnswer(_INTERNAL, OcspStatus.INTERNAL_ERROR), get=False)

    def _handle(self, environ: dict[str, Any], start_response: Callable[..., Any], path: str) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST" and path in (PREFIX, PREFIX + "/"):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if length > self._max_body:
                body = f"the request body is larger than {self._max_body} bytes\n".encode()
                start_response(
                    "413 Request Entity Too Large",
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")],
                )
                return [body]
            stream = environ["wsgi.input"]
            # read what was sent (so the client sees the answer, not a reset), up to the limit
            data = stream.read(length) if length > 0 else stream.read(MAX_REQUEST_BYTES + 1)
            if len(data) > MAX_REQUEST_BYTES:
                return self._send(start_response, OcspAnswer(_MALFORMED, OcspStatus.MALFORMED_REQUEST), get=False)
            return self._send(start_response, self._service.respond(data), get=False)
        if method in ("GET", "HEAD") and path.startswith(PREFIX + "/"):
            # PATH_INFO is already percent-decoded; "/" inside the base64 makes more segments
            der = decode_get_path(path[len(PREFIX) + 1 :])
            answer = self._service.respond(der) if der is not None else OcspAnswer(_MALFORMED, _MALFORMED_STATUS)
            return self._send(start_response, answer, get=True, head=method == "HEAD")
        if method in ("GET", "HEAD"):  # GET /ocsp with no request
            return self._send(start_response, OcspAnswer(_MALFORMED, OcspStatus.MALFORMED_REQUEST), get=False)
        body = b"OCSP requests are POST /ocsp or GET /ocsp/<base64 request>\n"
        start_response(
            "405 Method Not Allowed",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Allow", "GET, HEAD, POST")],
        )
        return [body]

    @staticmethod
    def _send(
        start_response: Callable[..., Any], answer: OcspAnswer, *, get: bool, head: bool = False
    ) -> Iterable[bytes]:
        headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(answer.der)))]
        if get and answer.cacheable and answer.this_update is not None and answer.next_update is not None:
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
        start_response("200 OK", headers)
        return [b""] if head else [answer.der]
