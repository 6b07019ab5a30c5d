"""The OpenID Connect provider's HTTP endpoints (authlib's Flask integration over
:mod:`authz.oidc`).

``/.well-known/openid-configuration``, ``/oauth/jwks.json``, ``/oauth/authorize`` (a
signed-in portal user; registered clients are first-party, so there is no consent
screen), ``/oauth/token``, ``/oauth/userinfo``, ``/oauth/introspect``,
``/oauth/revoke`` and ``/oauth/logout``. Protocol errors are RFC 6749/6750/7009/7662
JSON (``invalid_request``, ``invalid_client``, ``invalid_grant``, ``invalid_token``…);
at the authorization endpoint an unknown client or a redirect URI that is not
registered exactly gets an error page and never a redirect — in the reader's language,
with the OAuth error code shown as data (the JSON errors stay as OAuth has them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.flask_oauth2 import AuthorizationServer as FlaskAuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.core.errors import InteractionRequiredError, LoginRequiredError
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import logout_user  # type: ignore[import-untyped, unused-ignore]
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError

from authz.oidc import OidcProvider, OidcServer
from authz.oidc_keys import TokenError
from govpki.principal import Principal
from web import ui
from web.ui import _

bp = Blueprint("oidc", __name__)


class GovpkiOidcServer(OidcServer, FlaskAuthorizationServer):  # type: ignore[misc]
    """authlib's Flask request/response glue under govpki's provider."""


def _provider() -> OidcProvider:
    return ui.services().oidc


def _server() -> GovpkiOidcServer:
    found: GovpkiOidcServer = current_app.extensions["govpki_oidc"]
    return found


def _breach() -> None:
    """A replayed code or reused refresh token revoked tokens: the failing request commits that."""
    ui.keep_refusal()


def _acting_user() -> Principal | None:
    user = ui.signed_in_user()
    return user.principal if user is not None else None


# The error page (when the client cannot be told by a redirect) in the reader's language:
# by the OAuth error code and, where authlib's English description tells situations apart,
# by that description. The code stays on the page as data, e.g. "(invalid_client)".
_SITUATIONS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        "invalid_client",
        re.compile(r"Missing 'client_id' parameter\.?"),
        lambda m: _("The application's request does not say which application it is (client_id is missing)."),
    ),
    (
        "invalid_client",
        re.compile(r".*"),
        lambda m: _("This application is not registered here, or it has been disabled."),
    ),
    (
        "invalid_request",
        re.compile(r"Redirect URI (.*) is not supported by client\.", re.S),
        lambda m: _(
            "The return address %(uri)s is not registered for this application, so you cannot be sent back to it.",
            uri=m[1],
        ),
    ),
    (
        "invalid_request",
        re.compile(r"Missing 'redirect_uri' in request\.?"),
        lambda m: _("The application's request has no return address (redirect_uri)."),
    ),
    (
        "invalid_request",
        re.compile(r"Multiple '(.+)' in request\.?"),
        lambda m: _("The application's request gives the parameter %(name)s more than once.", name=m[1]),
    ),
    (
        "invalid_request",
        re.compile(r"PKCE is required for public clients.*", re.S),
        lambda m: _(
            "This application must protect its sign-in with PKCE: its request lacks code_challenge "
            "(with code_challenge_method S256)."
        ),
    ),
    (
        "invalid_request",
        re.compile(r"code_challenge_method must be S256"),
        lambda m: _("The application's request must use code_challenge_method S256."),
    ),
    (
        "invalid_request",
        re.compile(r"max_age must be .*"),
        lambda m: _("The application's request has a max_age that is not a whole number of seconds."),
    ),
    (
        "invalid_request",
        re.compile(r"post_logout_redirect_uri needs an id_token_hint"),
        lambda m: _("The sign-out request names a return address but not the ID token (id_token_hint) it is for."),
    ),
    (
        "invalid_request",
        re.compile(r"post_logout_redirect_uri is not registered for this client"),
        lambda m: _("The sign-out request's return address is not registered for this application."),
    ),
    (
        "invalid_request",
        re.compile(r"id_token_hint: .*", re.S),
        lambda m: _("The sign-out request's ID token (id_token_hint) is not valid here."),
    ),
    (
        "invalid_request",
        re.compile(r"the sign-out form was out of date; reload it"),
        lambda m: _("The sign-out form was out of date; reload the page and sign out again."),
    ),
    (
        "invalid_request",
        re.compile(r".*", re.S),
        lambda m: _("The application's request is missing a parameter or has one that is not valid."),
    ),
    (
        "unsupported_response_type",
        re.compile(r".*", re.S),
        lambda m: _(
            "The application asked for a kind of response this service does not give (use response_type=code)."
        ),
    ),
    (
        "unauthorized_client",
        re.compile(r".*", re.S),
        lambda m: _("This application may not use this kind of request."),
    ),
    (
        "invalid_scope",
        re.compile(r".*", re.S),
        lambda m: _("The application asked for a permission (scope) it is not registered for, or one that is unknown."),
    ),
    (
        "access_denied",
        re.compile(r".*", re.S),
        lambda m: _("The request was refused."),
    ),
]


def page_message(error: str, description: str | None) -> str:
    """An OAuth error shown as a page, in the reader's language, with its code as data."""
    for code, pattern, render in _SITUATIONS:
        if code == error:
            match = pattern.fullmatch(description or "")
            if match:
                return f"{render(match)} ({error})"
    fallback = _("The application's request could not be handled.")
    return f"{fallback} ({error})"


def _error_page(status: int, error: str, description: str | None) -> Response:
    return ui._error_page(status, page_message(error, description))


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.get("/.well-known/openid-configuration")
def discovery() -> ResponseReturnValue:
    response = jsonify(_server().metadata())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/oauth/jwks.json")
def jwks() -> ResponseReturnValue:
    response = jsonify(_provider().signer.jwks(g.db))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _prompts() -> set[str]:
    return set((request.values.get("prompt") or "").split())


def _max_age(grant: Any) -> int | None:
    """The request's ``max_age`` in seconds (None: not given); a value that is not a
    non-negative integer is ``invalid_request``, told to the client."""
    raw = request.values.get("max_age")
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise InvalidRequestError(
            "max_age must be a non-negative number of seconds",
            state=grant.request.payload.state,
            redirect_uri=grant.redirect_uri,
        )
    return int(raw)


def _auth_time() -> int | None:
    value = session.get(ui.SESSION_AUTH_TIME)
    return value if isinstance(value, int) else None


def _sign_in_again() -> ResponseReturnValue:
    """``prompt=login`` or an exceeded ``max_age``: end this session and sign in afresh, then
    come back to the same authorization request without ``prompt=login`` (so the new
    sign-in is not asked for again)."""
    logout_user()
    session.clear()
    query: list[tuple[str, str]] = []
    for name, value in request.args.items(multi=True):
        if name == "max_age":  # met by the new sign-in (its auth_time is in the ID token)
            continue
        kept = " ".join(p for p in value.split() if p != "login") if name == "prompt" else value
        if kept:
            query.append((name, kept))
    target = f"{request.path}?{urlencode(query)}"
    flash(_("The application asks you to sign in again."), "info")
    return redirect(url_for("ui.login", next=target))


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> ResponseReturnValue:
    """OIDC Core §3.1.2: the client and its exact redirect URI are checked first (else an
    error page, never a redirect). ``prompt=none``: no page at all — without a usable
    session, or with one older than ``max_age``, the client gets ``login_required``
    (``interaction_required`` while the account must still change its password or set
    up TOTP); ``none`` with another value is ``invalid_request``. ``prompt=login``, or a
    session older than ``max_age``: the session ends and the user signs in afresh."""
    user = ui.signed_in_user()
    official = ui.signed_in_official()  # an official signed in with their certificate
    end_user = user or official
    server = _server()
    try:
        grant = server.get_consent_grant(end_user=end_user)
        max_age = _max_age(grant)
    except OAuth2Error as error:
        if error.redirect_uri:  # the client and its exact redirect URI are known: tell the client
            return _to_client(error)
        return _error_page(400, error.error, error.description)
    prompts = _prompts()
    auth_time = _auth_time()
    too_old = max_age is not None and (auth_time is None or _provider().now().timestamp() - auth_time > max_age)
    if "none" in prompts:
        refusal: OAuth2Error | None = None
        if end_user is None or too_old:
            refusal = LoginRequiredError(description="the user must sign in")
        elif user is not None and (user.account.must_change_password or not user.account.totp_enrolled):
            refusal = InteractionRequiredError(description="the user must finish setting up their account")
        if refusal is not None:
            refusal.state = grant.request.payload.state
            refusal.redirect_uri = grant.redirect_uri
            return _to_client(refusal)
    elif end_user is not None and ("login" in prompts or too_old):
        return _sign_in_again()
    if official is not None:
        return _grant_code(grant, official.principal)
    return _authorize(grant)


def _to_client(error: OAuth2Error) -> Response:
    response: Response = _server().handle_error_response(None, error)
    return response


@ui.login_required
def _authorize(grant: Any) -> ResponseReturnValue:
    user = ui.signed_in_user()
    assert user is not None  # login_required
    return _grant_code(grant, user.principal)


def _grant_code(grant: Any, principal: Principal) -> ResponseReturnValue:
    """The code for the signed-in staff member or official (``principal``), with the
    session's sign-in methods, time and certificate."""
    server = _server()
    auth_time = _auth_time()
    serial = session.get("cert_serial")  # set by certificate sign-in (hex)
    oidc_user = _provider().user_for(
        g.db,
        principal,
        amr=ui.session_amr(),
        auth_time=auth_time if auth_time is not None else int(_provider().now().timestamp()),
        cert_serial=str(serial) if serial else None,
    )
    response: Response = server.create_authorization_response(grant=grant, grant_user=oidc_user)
    return response


@bp.post("/oauth/token")
def token() -> ResponseReturnValue:
    response: Response = _server().create_token_response()
    return _no_store(response)


@bp.post("/oauth/introspect")
def introspect() -> ResponseReturnValue:
    response: Response = _server().create_endpoint_response("introspection")
    return _no_store(response)


@bp.post("/oauth/revoke")
def revoke() -> ResponseReturnValue:
    response: Response = _server().create_endpoint_response("revocation")
    return _no_store(response)


def _bearer_error(error: str, description: str) -> Response:
    response = jsonify({"error": error, "error_description": description})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = f'Bearer error="{error}", error_description="{description}"'
    return _no_store(response)


@bp.route("/oauth/userinfo", methods=["GET", "POST"])
def userinfo() -> ResponseReturnValue:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return _bearer_error("invalid_request", "a bearer access token is required (Authorization: Bearer ...)")
    try:
        claims = _provider().userinfo(g.db, value.strip())
    except TokenError as exc:
        return _bearer_error("invalid_token", exc.reason)
    return _no_store(jsonify(claims))


@bp.route("/oauth/logout", methods=["GET", "POST"])
def logout() -> ResponseReturnValue:
    server = _server()
    try:
        end_session = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return _error_page(400, error.error, error.description)
    if end_session.needs_confirmation:
        # no id_token_hint: sign out only when the user confirms on our own form
        if request.method == "GET":
            return render_template("oidc/logout_confirm.html")
        try:
            validate_csrf(request.form.get("csrf_token"))
        except (ValidationError, CSRFError):
            return _error_page(400, "invalid_request", "the sign-out form was out of date; reload it")
    response: Response | None = server.create_endpoint_response("end_session", end_session)
    logout_user()
    session.clear()
    if response is not None and response.status_code == 302:
        return response
    return render_template("oidc/logged_out.html")


def init_app(app: Flask, provider: OidcProvider) -> None:
    def db() -> Any:
        return g.db

    app.extensions["govpki_oidc"] = GovpkiOidcServer(provider, db, _breach, _acting_user)
    app.register_blueprint(bp)
    app.extensions["csrf"].exempt(bp)  # client credentials or bearer tokens, no cookies; logout checks its own form
