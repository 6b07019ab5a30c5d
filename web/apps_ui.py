"""Registered applications (OAuth 2.0 / OpenID Connect clients) in the portal: a security
administrator lists them, registers one (its client secret is shown once, on the page
that answers the registration), edits its scopes and URIs, gives a confidential one a new
client secret (shown once, likewise), disables and enables one and binds or removes its TLS
client certificate. Thin views over :class:`authz.applications.ApplicationService`, which checks
every value, writes the audit record and refuses other roles; the views refuse them first
(nothing is read for another role).

A service refusal is shown in the request's language: next to the form field it names
(``attach_error``), or as the error page (this blueprint's error handler)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flask import Blueprint, Response, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.datastructures import FileStorage
from wtforms import Field

from authz.models import Application
from govpki.errors import ConflictError, FieldProblem, ForbiddenError, GovpkiError, InvalidError
from web.forms import MAX_CERTIFICATE_TEXT, ActionForm, ApplicationEditForm, ApplicationForm, CertificateForm
from web.problems import STATUS
from web.ui import (
    PortalUser,
    _,
    _csrf_error,
    _error_page,
    _user,
    login_required,
    render_error,
    services,
    translate_reason,
)

bp = Blueprint("apps_ui", __name__)


Params = Mapping[str, str | int]

# the application service's refusals (authz/applications.py) by their stable code and values,
# in the request's language; an error without an entry shows through the portal's general table
_MESSAGES: dict[str, Callable[[Params], str]] = {
    "authz.application_name": lambda p: _("Use 3 to 48 lower-case letters, digits or '-', starting with a letter."),
    "authz.application_exists": lambda p: _("An application named %(name)s is already registered.", name=p["name"]),
    "authz.client_type": lambda p: _("Choose confidential or public."),
    "authz.scope_list": lambda p: _("Choose the scopes."),
    "authz.unknown_scope": lambda p: _("%(scope)s is not a scope of this service.", scope=p["scope"]),
    "authz.public_openid": lambda p: _("A public client signs users in: it needs the scope openid."),
    "authz.public_scope": lambda p: _(
        "A public client has no client secret and may hold only OpenID Connect scopes, not %(scope)s.",
        scope=p["scope"],
    ),
    "authz.redirect_uri_required": lambda p: _(
        "An OpenID Connect client (scope openid) needs at least one redirect URI."
    ),
    "authz.redirect_uri_not_oidc": lambda p: _("Redirect URIs are only for OpenID Connect clients (scope openid)."),
    "authz.too_many_uris": lambda p: _("At most %(count)s URIs.", count=p["max"]),
    "authz.uri_form": lambda p: _("Each URI must be 1 to %(count)s characters, without spaces.", count=p["max"]),
    "authz.uri_not_absolute": lambda p: _("%(uri)s is not an absolute https URI.", uri=p["uri"]),
    "authz.uri_plain_http": lambda p: _(
        "%(uri)s: plain http is allowed only on 127.0.0.1 or localhost; use https.", uri=p["uri"]
    ),
    "authz.uri_fragment": lambda p: _("%(uri)s must not have a fragment (#…).", uri=p["uri"]),
    "authz.application_disabled": lambda p: _("Application %(name)s is already disabled.", name=p["name"]),
    "authz.application_active": lambda p: _("Application %(name)s is not disabled.", name=p["name"]),
    "authz.public_client": lambda p: _(
        "Application %(name)s is a public client: it has no client secret.", name=p["name"]
    ),
    "authz.application_not_found": lambda p: _(
        "There is no application with client ID %(client_id)s.", client_id=p["client_id"]
    ),
    "authz.not_a_certificate": lambda p: _("This is not an X.509 certificate (PEM or DER)."),
    "authz.ca_certificate": lambda p: _("This is a CA certificate; bind the application's own client certificate."),
    "authz.not_client_auth": lambda p: _(
        "This is not a TLS client certificate (its extended key usage lacks clientAuth)."
    ),
    "authz.certificate_bound": lambda p: _(
        "This certificate is already bound to application %(name)s.", name=p["name"]
    ),
    "authz.no_bound_certificate": lambda p: _("Application %(name)s has no bound certificate.", name=p["name"]),
    "authz.not_security_admin": lambda p: _("Only a security administrator may manage applications."),
}


def message(code: str | None, params: Params, reason: str) -> str | None:
    """A refusal of the application service in the request's language; None for a code
    this page does not know (or whose values are missing)."""
    render = _MESSAGES.get(code or "")
    if render is None:
        return None
    try:
        return render(params)
    except KeyError:
        return None


def problem_message(problem: FieldProblem) -> str:
    known = message(problem.code, problem.params, problem.reason)
    if known is not None:
        return known
    general = translate_reason(problem.reason)
    return general if general is not None else _("Not accepted: %(reason)s", reason=problem.reason)


def attach_error(
    form: ApplicationForm | ApplicationEditForm | CertificateForm, error: GovpkiError, fields: dict[str, Field]
) -> None:
    """Each problem next to the form field it names, else above the form."""
    for problem in error.problems:
        target = fields.get(problem.field or "")
        if target is not None:
            target.errors = [*target.errors, problem_message(problem)]
        else:
            form.form_errors.append(problem_message(problem))


@bp.errorhandler(GovpkiError)
def _refused(error: GovpkiError) -> Response:
    known = message(error.code, error.params, error.reason)
    if known is not None:
        return _error_page(STATUS[error.kind], known)
    return render_error(error)


# a stale or foreign form: the portal's message (or "your session expired")
bp.register_error_handler(CSRFError, _csrf_error)


def _security_admin() -> PortalUser:
    user = _user()
    if not user.is_security_admin:
        raise ForbiddenError(
            "only a security administrator may manage applications", field="role", code="authz.not_security_admin"
        )
    return user


@dataclass(frozen=True)
class Row:
    """An application as the list shows it."""

    app: Application
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]

    @classmethod
    def of(cls, app: Application) -> Row:
        return cls(app, json.loads(app.redirect_uris or "[]"), json.loads(app.post_logout_redirect_uris or "[]"))


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


@bp.route("/applications", methods=["GET", "POST"])
@login_required
def applications() -> ResponseReturnValue:
    user = _security_admin()
    svc = services()
    form = ApplicationForm()
    if form.validate_on_submit():
        try:
            app, secret = svc.applications.register(
                g.db,
                user.principal,
                name=form.name.data.strip(),
                scopes=form.scopes.data or [],
                client_type=form.client_type.data or "",
                redirect_uris=_lines(form.redirect_uris.data),
                post_logout_redirect_uris=_lines(form.post_logout_redirect_uris.data),
            )
        except (InvalidError, ConflictError) as error:
            attach_error(
                form,
                error,
                {
                    "name": form.name,
                    "client_type": form.client_type,
                    "scope": form.scopes,
                    "redirect_uri": form.redirect_uris,
                    "post_logout_redirect_uri": form.post_logout_redirect_uris,
                },
            )
        else:
            return render_template("apps/application_created.html", row=Row.of(app), secret=secret)
    status = 422 if form.is_submitted() else 200
    rows = [Row.of(app) for app in svc.applications.list(g.db)]
    return render_template("apps/applications.html", form=form, rows=rows, action=ActionForm()), status


@bp.post("/applications/<client_id>/disable")
@login_required
def disable(client_id: str) -> ResponseReturnValue:
    user = _security_admin()
    app = services().applications.disable(g.db, user.principal, client_id)
    flash(_("Application %(name)s has been disabled; its credentials no longer work.", name=app.name), "success")
    return redirect(url_for("apps_ui.applications"))


@bp.post("/applications/<client_id>/enable")
@login_required
def enable(client_id: str) -> ResponseReturnValue:
    user = _security_admin()
    app, revoked = services().applications.enable(g.db, user.principal, client_id)
    flash(_("Application %(name)s has been enabled; its credentials work again.", name=app.name), "success")
    if revoked:
        flash(
            _("%(count)s OpenID Connect tokens granted before it was disabled have been revoked.", count=revoked),
            "info",
        )
    return redirect(url_for("apps_ui.applications"))


@bp.post("/applications/<client_id>/rotate-secret")
@login_required
def rotate_secret(client_id: str) -> ResponseReturnValue:
    """A new client secret, shown once on the page that answers; the old one stops working."""
    user = _security_admin()
    app, secret = services().applications.rotate_secret(g.db, user.principal, client_id)
    return render_template("apps/secret_rotated.html", row=Row.of(app), secret=secret)


def _edit_page(app: Application, form: ApplicationEditForm, status: int = 200) -> ResponseReturnValue:
    return render_template("apps/edit.html", row=Row.of(app), form=form, action=ActionForm()), status


@bp.route("/applications/<client_id>/edit", methods=["GET", "POST"])
@login_required
def edit(client_id: str) -> ResponseReturnValue:
    """Change the application's scopes and (post-logout) redirect URIs."""
    user = _security_admin()
    svc = services()
    app = svc.applications.get(g.db, client_id)
    if request.method == "GET":  # the form filled with what is registered
        row = Row.of(app)
        form = ApplicationEditForm(
            data={
                "scopes": app.scopes.split(),
                "redirect_uris": "\n".join(row.redirect_uris),
                "post_logout_redirect_uris": "\n".join(row.post_logout_redirect_uris),
            }
        )
        return _edit_page(app, form)
    form = ApplicationEditForm()
    if not form.validate_on_submit():
        return _edit_page(app, form, 422)
    try:
        done = svc.applications.update(
            g.db,
            user.principal,
            client_id,
            scopes=form.scopes.data or [],
            redirect_uris=_lines(form.redirect_uris.data),
            post_logout_redirect_uris=_lines(form.post_logout_redirect_uris.data),
        )
    except (InvalidError, ConflictError) as error:
        attach_error(
            form,
            error,
            {
                "scope": form.scopes,
                "redirect_uri": form.redirect_uris,
                "post_logout_redirect_uri": form.post_logout_redirect_uris,
            },
        )
        return _edit_page(app, form, 422)
    if not done.changed:
        flash(_("Nothing was changed in application %(name)s.", name=app.name), "info")
    else:
        flash(_("Application %(name)s has been updated.", name=app.name), "success")
    if done.tokens_revoked:
        flash(
            _(
                "%(count)s OpenID Connect tokens granted with a scope it no longer holds have been revoked.",
                count=done.tokens_revoked,
            ),
            "info",
        )
    return redirect(url_for("apps_ui.applications"))


def _certificate_page(app: Application, form: CertificateForm, status: int = 200) -> ResponseReturnValue:
    return render_template("apps/certificate.html", app=app, form=form, action=ActionForm()), status


@bp.route("/applications/<client_id>/certificate", methods=["GET", "POST"])
@login_required
def certificate(client_id: str) -> ResponseReturnValue:
    """Bind a TLS client certificate (a file, or pasted PEM) to the application."""
    user = _security_admin()
    svc = services()
    app = svc.applications.get(g.db, client_id)
    form = CertificateForm()
    if not form.validate_on_submit():
        return _certificate_page(app, form, 422 if form.is_submitted() else 200)
    upload = form.certificate_file.data
    target = form.certificate_file
    if isinstance(upload, FileStorage) and upload.filename:
        data: bytes = upload.read(MAX_CERTIFICATE_TEXT + 1)
    elif form.certificate_text.data and form.certificate_text.data.strip():
        data, target = form.certificate_text.data.encode("utf-8", "replace"), form.certificate_text
    else:
        form.certificate_file.errors = [_("Choose a certificate file or paste the certificate.")]
        return _certificate_page(app, form, 422)
    try:
        bound = svc.applications.bind_certificate(g.db, user.principal, client_id, data)
    except (InvalidError, ConflictError) as error:
        attach_error(form, error, {"certificate": target})
        return _certificate_page(app, form, 422)
    flash(
        _(
            "The certificate (serial %(serial)s) is bound to application %(name)s.",
            serial=bound.cert_serial,
            name=app.name,
        ),
        "success",
    )
    return redirect(url_for("apps_ui.applications"))


@bp.post("/applications/<client_id>/certificate/remove")
@login_required
def remove_certificate(client_id: str) -> ResponseReturnValue:
    user = _security_admin()
    app = services().applications.bind_certificate(g.db, user.principal, client_id, None)
    flash(_("The bound certificate of application %(name)s has been removed.", name=app.name), "success")
    return redirect(url_for("apps_ui.applications"))
