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

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Response, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.datastructures import FileStorage
from wtforms import Field

from authz.models import Application
from govpki.errors import ConflictError, ForbiddenError, GovpkiError, InvalidError
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


def _quoted(value: str) -> str:
    """A value the service quoted with repr(): the value itself."""
    try:
        found = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return found if isinstance(found, str) else value


# the service's reasons (authz/applications.py), in the request's language
_REASONS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"must be 3-48 characters: lower-case letters, digits or '-', starting with a letter"),
        lambda m: _("Use 3 to 48 lower-case letters, digits or '-', starting with a letter."),
    ),
    (
        re.compile(r"an application named (.+) is registered"),
        lambda m: _("An application named %(name)s is already registered.", name=_quoted(m[1])),
    ),
    (re.compile(r"must be one of confidential, public"), lambda m: _("Choose confidential or public.")),
    (
        re.compile(r"(.+) is not a known scope \(known: .*\)"),
        lambda m: _("%(scope)s is not a scope of this service.", scope=_quoted(m[1])),
    ),
    (
        re.compile(r"a public client signs users in: it needs the scope 'openid'"),
        lambda m: _("A public client signs users in: it needs the scope openid."),
    ),
    (
        re.compile(r"a public client has no secret and may hold only OIDC scopes, not (.+)"),
        lambda m: _(
            "A public client has no client secret and may hold only OpenID Connect scopes, not %(scope)s.",
            scope=_quoted(m[1]),
        ),
    ),
    (
        re.compile(r"an OIDC client \(scope 'openid'\) needs at least one redirect URI"),
        lambda m: _("An OpenID Connect client (scope openid) needs at least one redirect URI."),
    ),
    (
        re.compile(r"redirect URIs are only for OIDC clients \(scope 'openid'\)"),
        lambda m: _("Redirect URIs are only for OpenID Connect clients (scope openid)."),
    ),
    (re.compile(r"at most (\d+) URIs"), lambda m: _("At most %(count)s URIs.", count=m[1])),
    (
        re.compile(r"must be a URI of 1-(\d+) characters without spaces"),
        lambda m: _("Each URI must be 1 to %(count)s characters, without spaces.", count=m[1]),
    ),
    (
        re.compile(r"(.+) is not an absolute http\(s\) URI"),
        lambda m: _("%(uri)s is not an absolute https URI.", uri=_quoted(m[1])),
    ),
    (
        re.compile(r"(.+): plain http only on a loopback host; use https"),
        lambda m: _("%(uri)s: plain http is allowed only on 127.0.0.1 or localhost; use https.", uri=_quoted(m[1])),
    ),
    (
        re.compile(r"(.+) must not have a fragment"),
        lambda m: _("%(uri)s must not have a fragment (#…).", uri=_quoted(m[1])),
    ),
    (
        re.compile(r"application (.+) is already disabled"),
        lambda m: _("Application %(name)s is already disabled.", name=_quoted(m[1])),
    ),
    (
        re.compile(r"application (.+) is not disabled"),
        lambda m: _("Application %(name)s is not disabled.", name=_quoted(m[1])),
    ),
    (
        re.compile(r"application (.+) is a public client: it has no client secret"),
        lambda m: _("Application %(name)s is a public client: it has no client secret.", name=_quoted(m[1])),
    ),
    (
        re.compile(r"no application with client_id (.+)"),
        lambda m: _("There is no application with client ID %(client_id)s.", client_id=_quoted(m[1])),
    ),
    (
        re.compile(r"is not an X\.509 certificate \(PEM or DER\)"),
        lambda m: _("This is not an X.509 certificate (PEM or DER)."),
    ),
    (
        re.compile(r"is a CA certificate; bind the application's own client certificate"),
        lambda m: _("This is a CA certificate; bind the application's own client certificate."),
    ),
    (
        re.compile(r"is not a TLS client certificate \(its extended key usage lacks clientAuth\)"),
        lambda m: _("This is not a TLS client certificate (its extended key usage lacks clientAuth)."),
    ),
    (
        re.compile(r"this certificate is bound to application (.+)"),
        lambda m: _("This certificate is already bound to application %(name)s.", name=_quoted(m[1])),
    ),
    (
        re.compile(r"application (.+) has no bound certificate"),
        lambda m: _("Application %(name)s has no bound certificate.", name=_quoted(m[1])),
    ),
    (
        re.compile(r"only a security administrator may .*applications"),
        lambda m: _("Only a security administrator may manage applications."),
    ),
]


def message(reason: str) -> str:
    """A reason of the application service (or of the portal) in the request's language."""
    for pattern, render in _REASONS:
        match = pattern.fullmatch(reason)
        if match:
            return render(match)
    known = translate_reason(reason)
    return known if known is not None else _("Not accepted: %(reason)s", reason=reason)


def attach_error(
    form: ApplicationForm | ApplicationEditForm | CertificateForm, error: GovpkiError, fields: dict[str, Field]
) -> None:
    """Each problem next to the form field it names, else above the form."""
    for problem in error.problems:
        target = fields.get(problem.field or "")
        if target is not None:
            target.errors = [*target.errors, message(problem.reason)]
        else:
            form.form_errors.append(message(problem.reason))


@bp.errorhandler(GovpkiError)
def _refused(error: GovpkiError) -> Response:
    if any(pattern.fullmatch(error.reason) for pattern, _render in _REASONS):
        return _error_page(STATUS[error.kind], message(error.reason))
    return render_error(error)


# a stale or foreign form: the portal's message (or "your session expired")
bp.register_error_handler(CSRFError, _csrf_error)


def _security_admin() -> PortalUser:
    user = _user()
    if not user.is_security_admin:
        raise ForbiddenError("only a security administrator may manage applications", field="role")
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
