"""The Flask application factory. The request is the unit of work: one session
per request, committed once after a successful view, rolled back otherwise."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, Map

from govpki.config import Config
from govpki.errors import GovpkiError, InvalidError
from web import (
    api,
    api_authz,
    api_events,
    apps_ui,
    audit_console,
    authz_ui,
    certlogin,
    crl,
    official_signin,
    oidc,
    pki,
    ra_portal,
    ui,
)
from web.container import Services, build_services
from web.ocsp import OcspDispatcher
from web.problems import from_error, problem
from web.ui import COMMIT_REFUSAL

log = logging.getLogger("govpki.web")

MAX_REQUEST_BYTES = 1024 * 1024
MAX_ID = 2**31 - 1  # integer primary keys are 32-bit on PostgreSQL
MAX_BIGINT = 2**63 - 1  # BigInteger columns (the audit log's sequence numbers)


class IdConverter(IntegerConverter):
    """``<int:...>`` in every route: a non-negative id that fits the database's integer
    column. A larger number does not match the route, so it is the app's ordinary 404 (the
    page in the reader's language, or problem JSON), never a database overflow (a 500)."""

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None, max: int | None = MAX_ID) -> None:
        super().__init__(map, fixed_digits, min, max)


class BigIdConverter(IdConverter):
    """``<bigint:...>``: a number kept in a BigInteger column (64-bit)."""

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None, max: int | None = MAX_BIGINT) -> None:
        super().__init__(map, fixed_digits, min, max)


def create_app(config: Config | None = None, *, services: Services | None = None) -> Flask:
    config = config or (services.config if services else Config.from_env())
    services = services or build_services(config)
    app = Flask(__name__)
    # before any route is added: the converters are looked up when a rule is registered
    app.url_map.converters["int"] = IdConverter
    app.url_map.converters["bigint"] = BigIdConverter
    app.config.update(
        SECRET_KEY=config.secret_key_file.read_text(encoding="ascii").strip(),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.secure_cookies,  # GOVPKI_COOKIE_SECURE (auto: on for an https base URL)
        SESSION_COOKIE_NAME="govpki_session",
        JSON_AS_ASCII=False,
        TESTING=config.testing,
    )
    app.extensions["govpki"] = services

    @app.before_request
    def _open_session() -> None:
        g.db = services.sessions()

    @app.before_request
    def _refuse_nul_characters() -> None:
        """A NUL character in a query or form value is refused up front, naming the field:
        PostgreSQL text cannot hold it (it would fail as a database error), and no field of
        this service has a use for it."""
        sources = [request.args]
        # forms only: reading request.form would take in any body (under the app's limit,
        # before a JSON API sets its own)
        if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            sources.append(request.form)
        for where in sources:
            for name, value in where.items(multi=True):
                if "\x00" in name or "\x00" in value:
                    field = name.replace("\x00", "")[:64] or "?"
                    raise InvalidError(
                        f"the field {field} contains a NUL character",
                        field=field,
                        code="govpki.nul_character",
                        params={"field": field},
                    )

    @app.after_request
    def _finish_unit_of_work(response: Response) -> Response:
        db = g.pop("db", None)
        if db is None:
            return response
        try:
            # a view may keep what its refusal wrote (g.commit_refusal): the audit entry of a
            # refused sign-in, the revocation a replayed OIDC code caused
            if response.status_code < 400 or g.pop(COMMIT_REFUSAL, False):
                db.commit()
            else:
                db.rollback()
        except Exception:
            log.exception("commit failed")
            db.rollback()
            return problem(503, "the change could not be stored; nothing was changed", code="govpki.storage")
        finally:
            db.close()
        return response

    @app.teardown_request
    def _close_session(_exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.rollback()
            db.close()

    def wants_problem() -> bool:
        return request.path.startswith(("/api/", "/ca/", "/crl/", "/oauth/token", "/oauth/introspect", "/oauth/revoke"))

    @app.errorhandler(GovpkiError)
    def _domain_error(error: GovpkiError) -> Response | tuple[str, int]:
        if wants_problem():
            return from_error(error, request.path)
        return ui.render_error(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response | tuple[str, int]:
        status = error.code or 500
        if wants_problem():
            detail = error.description or "error"
            if status == 413:
                detail = f"the request body is larger than {request.max_content_length or MAX_REQUEST_BYTES} bytes"
            return problem(status, detail, code=f"http.{status}", instance=request.path)
        return ui.render_http_error(error)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem(500, "an internal error occurred; it was logged", code="govpki.internal", instance=request.path)

    app.register_blueprint(api.bp)
    app.register_blueprint(api_events.bp)
    app.register_blueprint(api_authz.bp)
    app.register_blueprint(pki.bp)
    app.register_blueprint(crl.bp)
    ui.init_app(app)
    app.register_blueprint(audit_console.bp)
    app.register_blueprint(authz_ui.bp)
    app.register_blueprint(apps_ui.bp)
    oidc.init_app(app, services.oidc)
    app.register_blueprint(certlogin.bp)
    app.register_blueprint(official_signin.bp)
    ra_portal.init_app(app, services)
    # /ocsp is answered in front of Flask (see web.ocsp): one look-up, the stored bytes
    app.wsgi_app = OcspDispatcher(app.wsgi_app, services.ocsp, MAX_REQUEST_BYTES)  # type: ignore[method-assign]
    return app
