"""Officials' password + TOTP sign-in (:mod:`authz.official_signin`): their own set-up
pages under ``/me/password-sign-in`` and the second sign-in step ``/login/official-code``.

The first sign-in step is the portal's ``/login`` (web/ui.py): a name that is an official's
sign-in name comes here (:func:`password_step`); the page, its messages and the lock-out are
the staff sign-in's. The session is the official's (``OfficialUser``, as with certificate
sign-in) with amr ``["pwd", "otp"]`` and no certificate serial, so the OIDC provider issues
codes for it with those methods and no ``cert_serial``. While it lasts, every request checks
(one read) that the official's password sign-in is still on and was not set up anew since:
turned off or reset by an RA officer, the session ends.

Set-up and turning on need a certificate session (the strong factor vouches for the new
one); changing the password and turning it off work in any session of the official.
"""

from __future__ import annotations

import datetime as _dt

from flask import Blueprint, Response, flash, g, redirect, render_template, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from flask_login import login_user, logout_user  # type: ignore[import-untyped, unused-ignore]
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response as BaseResponse
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from authz import certlogin as codes
from authz import official_signin as codes_official
from authz.official_signin import AMR_PASSWORD_TOTP, SET_UP_AGAIN
from authz.services import LOCKED, MIN_PASSWORD
from govpki.errors import ConflictError, ForbiddenError, GovpkiError, InvalidError, NotFoundError, UnauthenticatedError
from web.certlogin import SESSION_CERT_SERIAL
from web.client_address import client_address
from web.forms import MAX_PASSWORD, ActionForm, LoginForm, PasswordForm, TotpForm
from web.problems import STATUS
from web.ui import (
    CODE_MESSAGES,
    OFFICIAL_USER,
    PENDING_TIMEOUT,
    SESSION_AMR,
    SESSION_AUTH_TIME,
    SIGNED_IN_COOKIE,
    OfficialUser,
    _,
    _cookie_options,
    _csrf_error,
    _error_page,
    _unauthorized,
    attach_error,
    coded_message,
    pending_step,
    services,
    signed_in_official,
    totp_qr_response,
)

bp = Blueprint("official_signin", __name__)

# the password sign-in service's refusals, by code, in the request's language
CODE_MESSAGES.update(
    {
        codes_official.NOT_OFFICIAL: lambda p: _("Only an official manages their own password sign-in."),
        codes_official.CERTIFICATE_SESSION_NEEDED: lambda p: _(
            "Set up password sign-in while signed in with your certificate."
        ),
        codes_official.ALREADY_SET_UP: lambda p: _("Password sign-in is already set up; turn it off first."),
        codes_official.NAME_TAKEN: lambda p: _("The sign-in name %(name)s is taken.", name=p["name"]),
        codes_official.WRONG_ENROL_CODE: lambda p: _("This is not the code your authenticator app shows now."),
        codes_official.WRONG_CURRENT_PASSWORD: lambda p: _("This is not your current password."),
        codes_official.SAME_PASSWORD: lambda p: _("The new password must differ from the current one."),
        codes_official.RA_STAFF_ONLY: lambda p: _("Only RA staff see officials' sign-in."),
        codes_official.PASSWORD_FIRST: lambda p: _("Sign in with your sign-in name and password first."),
        codes_official.NOT_SET_UP: lambda p: _(
            "Password sign-in is not set up: choose a sign-in name and a password first."
        ),
    }
)

# session keys: the official half signed in (password given, code not yet), and when the
# password session began (service clock, ISO) — a sign-in set up anew after it ends it
PENDING_OFFICIAL = "pending_official_sign_in"
SESSION_PASSWORD_SIGNED_IN = "official_password_signed_in_at"


class OfficialSetUpForm(FlaskForm):  # type: ignore[misc]
    """An official's sign-in name and password (their own page, in a certificate session)."""

    username = StringField(
        _l("Sign-in name"),
        validators=[DataRequired(_l("Enter a sign-in name.")), Length(max=64, message=_l("At most 64 characters."))],
        description=_l("3 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter."),
        render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"},
    )
    new_password = PasswordField(
        _l("Password"),
        validators=[
            DataRequired(_l("Enter a new password.")),
            Length(max=MAX_PASSWORD, message=_l("At most 256 characters.")),
        ],
        render_kw={"autocomplete": "new-password", "minlength": MIN_PASSWORD},
    )
    repeat_password = PasswordField(
        _l("Repeat the password"),
        validators=[
            DataRequired(_l("Repeat the new password.")),
            EqualTo("new_password", message=_l("The two new passwords differ.")),
        ],
        render_kw={"autocomplete": "new-password"},
    )


SET_UP_AGAIN_MESSAGE = _l(
    "Your password sign-in was set up with a certificate that has since been revoked for key compromise, so it "
    "no longer works. Sign in with your new certificate and set it up again."
)
SESSION_ENDED_RESET = _l(
    "Your session has ended: your password sign-in has been turned off or reset, or the certificate it "
    "was set up with has been revoked for key compromise. "
    "Sign in with your certificate, or set it up again."
)


@bp.errorhandler(CSRFError)
def _stale_form(error: CSRFError) -> ResponseReturnValue:
    """A stale or foreign form: the portal's message (or "your session expired")."""
    if signed_in_official() is not None:
        return _error_page(400, _("The form was out of date. Please try again."))
    return _csrf_error(error)


def _certificate_serial() -> str | None:
    """The certificate of this session, if it is a certificate session."""
    serial = session.get(SESSION_CERT_SERIAL)
    if session.get(SESSION_AMR) != list(codes.AMR_CERTIFICATE) or not isinstance(serial, str):
        return None
    return serial


def _official() -> OfficialUser:
    user = signed_in_official()
    if user is None:
        raise UnauthenticatedError("sign in first")
    return user


# ----- the session ------------------------------------------------------------------------


@bp.before_app_request
def _password_session_still_good() -> ResponseReturnValue | None:
    """An official's password session goes on only while their password sign-in is on and
    was not set up anew since this session began."""
    if session.get(SESSION_AMR) != list(AMR_PASSWORD_TOTP) or "db" not in g:
        return None
    user_id = session.get("_user_id")
    if not isinstance(user_id, str) or not user_id.startswith(OFFICIAL_USER):
        return None  # a staff session
    number = user_id.removeprefix(OFFICIAL_USER)
    started = session.get(SESSION_PASSWORD_SIGNED_IN)
    problem = "reset"
    if number.isdigit() and isinstance(started, str):
        try:
            at = _dt.datetime.fromisoformat(started)
        except ValueError:
            at = None
        if at is not None and at.tzinfo is not None:
            problem = services().official_signin.session_problem(g.db, official_id=int(number), signed_in_at=at) or ""
    if not problem:
        return None
    logout_user()
    session.clear()
    flash(str(SESSION_ENDED_RESET), "warning")
    response = redirect(url_for("ui.login"))
    response.delete_cookie(SIGNED_IN_COOKIE, **_cookie_options())
    return response


def password_step(form: LoginForm, target: str | None) -> ResponseReturnValue:
    """``/login`` for an official's sign-in name (web/ui.py calls this): the password, then
    to the code page. Refusals read and count as the staff sign-in's."""
    try:
        credential_id = services().official_signin.sign_in_password(
            g.db, username=form.username.data, password=form.password.data, source=client_address()
        )
    except UnauthenticatedError as error:
        # 200 on purpose: the unit of work commits the failure's audit entry (and the lock)
        form.form_errors.append(
            str(SET_UP_AGAIN_MESSAGE)
            if error.code == SET_UP_AGAIN
            else coded_message(error.code, error.params, error.reason)
        )
        return render_template("login.html", form=form)
    logout_user()
    session.clear()  # half signed in: nothing but the sign-in and the time until the code is given
    session[PENDING_OFFICIAL] = {"credential": credential_id, "at": services().clock.now().isoformat(), "next": target}
    return redirect(url_for("official_signin.login_code"))


def _pending() -> tuple[int, str | None] | None:
    return pending_step(PENDING_OFFICIAL, "credential")


@bp.route("/login/official-code", methods=["GET", "POST"])
def login_code() -> ResponseReturnValue:
    """The second step of an official's password sign-in: the authenticator code."""
    pending = _pending()
    if pending is None:
        if session.pop(PENDING_OFFICIAL, None) is not None:
            minutes = int(PENDING_TIMEOUT.total_seconds() // 60)
            flash(_("The sign-in was not finished within %(minutes)d minutes. Please start again.", minutes=minutes))
        else:
            flash(_("Please sign in to see this page."), "info")
        return redirect(url_for("ui.login"))
    credential_id, target = pending
    form = TotpForm()
    action = url_for("official_signin.login_code")
    if form.validate_on_submit():
        try:
            official = services().official_signin.sign_in_totp(
                g.db, credential_id, code=form.code.data, source=client_address()
            )
        except InvalidError as error:
            attach_error(form, error, {"code": form.code})
            return render_template("login_totp.html", form=form, action=action), 422
        except UnauthenticatedError as error:
            # 200 on purpose: the unit of work commits the failure's audit entry (and the lock)
            if error.code == LOCKED:
                session.pop(PENDING_OFFICIAL, None)
                flash(coded_message(error.code, error.params, error.reason), "warning")
                return redirect(url_for("ui.login"))
            attach_error(form, error, {"code": form.code})
            return render_template("login_totp.html", form=form, action=action)
        now = services().clock.now()
        session.clear()  # a fresh session (and CSRF token) for the signed-in official
        login_user(OfficialUser(official), fresh=True)
        session.permanent = True
        session[SESSION_AMR] = list(AMR_PASSWORD_TOTP)
        session[SESSION_AUTH_TIME] = int(now.timestamp())
        session[SESSION_PASSWORD_SIGNED_IN] = now.isoformat()
        response = redirect(target or url_for("certlogin.me"))
        response.set_cookie(SIGNED_IN_COOKIE, "1", **_cookie_options())
        return response
    return render_template("login_totp.html", form=form, action=action), 422 if form.is_submitted() else 200


# ----- the official's own set-up ------------------------------------------------------------


def _page(
    setup: OfficialSetUpForm | None = None, password: PasswordForm | None = None, status: int = 200
) -> ResponseReturnValue:
    user = _official()
    svc = services()
    return render_template(
        "certlogin/password_signin.html",
        person=user.official,
        state=svc.official_signin.status(g.db, user.principal),
        certificate_session=_certificate_serial() is not None,
        setup=setup or OfficialSetUpForm(),
        password=password or PasswordForm(),
        action=ActionForm(),
    ), status


def _refused(error: GovpkiError) -> Response:
    return _error_page(STATUS[error.kind], coded_message(error.code, error.params, error.reason))


@bp.route("/me/password-sign-in", methods=["GET", "POST"])
def password_sign_in() -> ResponseReturnValue:
    """Step one of the set-up (a certificate session): sign-in name and password."""
    if signed_in_official() is None:
        return _unauthorized()
    form = OfficialSetUpForm()
    if not form.validate_on_submit():
        return _page(setup=form, status=422 if form.is_submitted() else 200)
    try:
        services().official_signin.set_up(
            g.db,
            _official().principal,
            certificate_serial=_certificate_serial(),
            login_name=form.username.data.strip(),
            password=form.new_password.data,
        )
    except (InvalidError, ConflictError) as error:
        if error.code == codes_official.ALREADY_SET_UP:  # the set-up form is not shown then
            return _refused(error)
        attach_error(form, error, {"username": form.username, "new_password": form.new_password})
        return _page(setup=form, status=STATUS[error.kind])
    except ForbiddenError as error:
        return _refused(error)
    return redirect(url_for("official_signin.enrol"))


@bp.route("/me/password-sign-in/totp", methods=["GET", "POST"])
def enrol() -> ResponseReturnValue:
    """Step two: the authenticator app (QR code at its own URL: the CSP allows no data:
    images), confirmed by a code; that turns the sign-in on."""
    user = signed_in_official()
    if user is None:
        return _unauthorized()
    svc = services().official_signin
    form = TotpForm()
    try:
        if form.validate_on_submit():
            try:
                svc.confirm(g.db, user.principal, certificate_serial=_certificate_serial(), code=form.code.data)
            except InvalidError as error:
                attach_error(form, error, {"code": form.code})
                # 200 on purpose: the failed attempt's audit entry is committed
                secret, _uri = svc.totp_enrolment(g.db, user.principal)
                return _enrol_page(form, secret, 200)
            flash(
                _("Password sign-in is on: you can now sign in with your sign-in name, password and a code."), "success"
            )
            return redirect(url_for("official_signin.password_sign_in"))
        secret, _uri = svc.totp_enrolment(g.db, user.principal)
    except (NotFoundError, ConflictError, ForbiddenError) as error:
        return _refused(error)
    return _enrol_page(form, secret, 422 if form.is_submitted() else 200)


def _enrol_page(form: TotpForm, secret: str, status: int) -> ResponseReturnValue:
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return render_template("certlogin/password_signin_totp.html", form=form, secret=grouped), status


@bp.get("/me/password-sign-in/qr.svg")
def enrol_qr() -> ResponseReturnValue:
    user = signed_in_official()
    if user is None:
        return _unauthorized()
    _secret, uri = services().official_signin.totp_enrolment(g.db, user.principal)
    return totp_qr_response(uri)


@bp.post("/me/password-sign-in/password")
def change_password() -> ResponseReturnValue:
    user = signed_in_official()
    if user is None:
        return _unauthorized()
    form = PasswordForm()
    if not form.validate_on_submit():
        return _page(password=form, status=422)
    try:
        services().official_signin.change_password(
            g.db, user.principal, current=form.current_password.data, new=form.new_password.data
        )
    except NotFoundError as error:  # the password form is not shown then
        return _refused(error)
    except InvalidError as error:
        attach_error(form, error, {"current_password": form.current_password, "new_password": form.new_password})
        return _page(password=form, status=STATUS[error.kind])
    flash(_("Your password has been changed."), "success")
    return redirect(url_for("official_signin.password_sign_in"))


@bp.post("/me/password-sign-in/off")
def turn_off() -> BaseResponse | ResponseReturnValue:
    user = signed_in_official()
    if user is None:
        return _unauthorized()
    if not ActionForm().validate_on_submit():
        return _error_page(400, _("The form was out of date. Please try again."))
    try:
        services().official_signin.disable(g.db, user.principal)
    except NotFoundError as error:
        return _refused(error)
    flash(_("Password sign-in is off."), "success")
    return redirect(url_for("certlogin.me"))
