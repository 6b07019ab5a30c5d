"""The OpenID Connect provider's HTTP endpoints (authlib's Flask integration over
:mod:`authz.oidc`).

``/.well-known/openid-configuration``, ``/oauth/jwks.json``, ``/oauth/authorize`` (a
signed-in portal user; registered clients are first-party, so there is no consent
screen), ``/oauth/token``, ``/oauth/userinfo``, ``/oauth/introspect``,
``/oauth/revoke`` and ``/oauth/logout``. Protocol errors are RFC 6749/6750/7009/7662
JSON (``invalid_request``, ``invalid_client``, ``invalid_grant``, ``invalid_token``…);
at the authorization endpoint an unknown client or a redirect URI that is not
registered exactly gets an error page and never a redirect.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer as FlaskAuthorizationServer
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, Response, current_app, g, jsonify, make_response, render_template, request, session
from flask.typing import ResponseReturnValue
from flask_login import logout_user  # type: ignore[import-untyped, unused-ignore]
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError

from authz.oidc import OidcProvider, OidcServer
from authz.oidc_keys import TokenError
from govpki.principal import Principal
from web import ui

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


def _error_page(status: int, error: str, description: str | None) -> Response:
    reason = f"{error}: {description}" if description else error
    title = ui.STATUS_TITLES.get(status, "Error")
    return make_response(render_template("error.html", status=status, title=title, reason=reason), status)


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


@bp.route("/oauth/authorize", methods=["GET", "POST"])
@ui.login_required
def authorize() -> ResponseReturnValue:
    user = ui.signed_in_user()
    assert user is not None  # login_required
    server = _server()
    try:
        grant = server.get_consent_grant(end_user=user)
    except OAuth2Error as error:
        if error.redirect_uri:  # the client and its exact redirect URI are known: tell the client
            redirect: Response = server.handle_error_response(None, error)
            return redirect
        return _error_page(400, error.error, error.description)
    auth_time = session.get(ui.SESSION_AUTH_TIME)
    serial = session.get("cert_serial")  # set by certificate sign-in (hex)
    oidc_user = _provider().user_for(
        g.db,
        user.principal,
        amr=ui.session_amr(),
        auth_time=int(auth_time) if isinstance(auth_time, int) else int(_provider().now().timestamp()),
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
