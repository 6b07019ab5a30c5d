"""The web portal (HTML): sign-in, password change, dashboard, API tokens.

Staff sign-in has two steps once the account has enrolled TOTP: the password
(the session is then only "half signed in": the account id and time are kept in
the session, flask-login knows no user), then the authenticator code, after which
``login_user`` runs. A new account signs in with its one-time password, must
replace it, then enrols TOTP (a QR code served at its own URL, and the secret in
text) before it can see any other page.

Thin views like the API: parse a form, call one service with the acting
principal, render. Views never commit; the app's unit of work does (a response
below 400 commits, anything else rolls back). Chinese (zh_CN) by default,
English on request; every string is an English msgid translated by Babel.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec
from urllib.parse import urlsplit

import segno
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    has_request_context,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import Babel, get_locale
from flask_babel import gettext as _gettext
from flask_babel import lazy_gettext as _l
from flask_login import (  # type: ignore[import-untyped, unused-ignore]
    LoginManager,
    UserMixin,
    current_user,
    login_user,
    logout_user,
)
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse
from wtforms import Field
from wtforms.fields.choices import SelectChoice

from authz.certlogin import OfficialIdentity
from authz.models import Account
from authz.services import LOCKED, RA_ROLES, account_principal, one_time_password
from ca.services import can_read
from govpki.clock import UTC
from govpki.errors import ConflictError, ForbiddenError, GovpkiError, InvalidError, NotFoundError, UnauthenticatedError
from govpki.principal import Principal, Role
from web import api, api_authz, api_events
from web.client_address import client_address
from web.container import Services
from web.forms import AccountForm, ActionForm, LoginForm, PasswordForm, StaffForm, TokenForm, TotpForm
from web.problems import STATUS

bp = Blueprint("ui", __name__)

DEFAULT_LOCALE = "zh_CN"
LOCALES = ("zh_CN", "en")
LANG_COOKIE = "govpki_lang"
# Set while signed in (no secret in it) so that a request arriving after the
# session cookie expired can say "your session expired" rather than "sign in".
SIGNED_IN_COOKIE = "govpki_signed_in"
IDLE_TIMEOUT = _dt.timedelta(minutes=30)
# between the password and the TOTP code: the session holds this much, no longer
PENDING_SIGN_IN = "pending_sign_in"
PENDING_TIMEOUT = _dt.timedelta(minutes=5)
# pages an account may see before it has enrolled TOTP (after its password change)
ENROLMENT_ENDPOINTS = frozenset({"ui.password", "ui.totp_enrol", "ui.totp_qr"})
TRANSLATIONS = Path(__file__).resolve().parent / "translations"

SECURE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

P = ParamSpec("P")

ROLE_NAMES = {
    Role.SYSTEM_ADMIN.value: _l("System administrator"),
    Role.SECURITY_ADMIN.value: _l("Security administrator"),
    Role.SECURITY_AUDITOR.value: _l("Security auditor"),
    Role.CA_OPERATOR.value: _l("CA operator"),
    Role.KEY_RECOVERY_OFFICER.value: _l("Key-recovery officer"),
    Role.RA_CLERK.value: _l("RA clerk"),
    Role.RA_OFFICER.value: _l("RA officer"),
}
CA_KINDS = {"root": _l("Root CA"), "issuing": _l("Issuing CA")}
CERT_STATES = {
    "reserved": _l("Reserved"),
    "approved": _l("Approved"),
    "issued": _l("Issued"),
    "failed": _l("Failed"),
}
STATUS_TITLES = {
    400: _l("Bad request"),
    401: _l("Sign-in required"),
    403: _l("Not allowed"),
    404: _l("Not found"),
    405: _l("Method not allowed"),
    409: _l("Conflict"),
    413: _l("Request too large"),
    422: _l("Invalid input"),
    503: _l("Service unavailable"),
}


def _(text: str, **variables: Any) -> str:
    """gettext, typed: the text in the request's language."""
    return str(_gettext(text, **variables))


# ----- the signed-in user ---------------------------------------------------------


class PortalUser(UserMixin):  # type: ignore[misc]
    """Flask-Login's view of an account. Only the account id is kept in the session."""

    def __init__(self, account: Account) -> None:
        self.account = account

    def get_id(self) -> str:
        return f"{ACCOUNT_USER}{self.account.id}"

    @property
    def principal(self) -> Principal:
        return account_principal(self.account)

    @property
    def is_security_admin(self) -> bool:
        return self.principal.has(Role.SECURITY_ADMIN)

    @property
    def is_system_admin(self) -> bool:
        return self.principal.has(Role.SYSTEM_ADMIN)


class OfficialUser(UserMixin):  # type: ignore[misc]
    """Flask-Login's view of an official signed in with their certificate (web/certlogin.py).
    Officials see only their own page; every staff page refuses them (``login_required``)."""

    def __init__(self, official: OfficialIdentity) -> None:
        self.official = official

    def get_id(self) -> str:
        return f"{OFFICIAL_USER}{self.official.id}"

    @property
    def principal(self) -> Principal:
        return self.official.principal


# flask-login user ids: "a:<account id>" (staff) and "o:<official id>" (certificate sign-in)
ACCOUNT_USER = "a:"
OFFICIAL_USER = "o:"


# set on g by a view whose refusal (a response >= 400) must still commit what it wrote: the
# audit entry of a refused sign-in, the revocation a replayed OIDC code caused (web.app)
COMMIT_REFUSAL = "commit_refusal"


def keep_refusal() -> None:
    """This request's refusal commits what it wrote (only audit entries and revocations)."""
    setattr(g, COMMIT_REFUSAL, True)


def services() -> Services:
    found: Services = current_app.extensions["govpki"]
    return found


def signed_in_user() -> PortalUser | None:
    user = current_user._get_current_object()
    return user if isinstance(user, PortalUser) else None


def _user() -> PortalUser:
    user = signed_in_user()
    if user is None:  # pragma: no cover - views are wrapped in login_required
        raise UnauthenticatedError("sign in first")
    return user


def signed_in_official() -> OfficialUser | None:
    user = current_user._get_current_object()
    return user if isinstance(user, OfficialUser) else None


def _load_user(user_id: str) -> PortalUser | OfficialUser | None:
    kind, number = user_id[:2], user_id[2:]
    if not number.isdigit() or "db" not in g:
        return None
    if kind == ACCOUNT_USER:
        account = services().accounts.get(g.db, int(number))
        return PortalUser(account) if account is not None else None
    if kind == OFFICIAL_USER:
        official = services().certlogin.official(g.db, int(number))
        return OfficialUser(official) if official is not None else None
    return None


def _local_path(target: str | None) -> str | None:
    """``target`` if it is a path on this site (no open redirects), else None."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _current_path() -> str:
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


def _cookie_options() -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "Lax",
        "secure": bool(current_app.config.get("SESSION_COOKIE_SECURE")),
    }


def _unauthorized() -> BaseResponse:
    """No signed-in user: back to the sign-in page, saying why."""
    expired = request.cookies.get(SIGNED_IN_COOKIE) == "1"
    if expired:
        minutes = int(current_app.permanent_session_lifetime.total_seconds() // 60)
        message = _(
            "Your session has ended after %(minutes)d minutes without activity. Please sign in again.", minutes=minutes
        )
        flash(message, "warning")
    else:
        flash(_("Please sign in to see this page."), "info")
    target = _current_path() if request.method == "GET" else None
    response = redirect(url_for("ui.login", next=target) if target else url_for("ui.login"))
    if expired:
        response.delete_cookie(SIGNED_IN_COOKIE, **_cookie_options())
    return response


def login_required(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Signed in, and the one-time password already replaced (else: to /password)."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        user = signed_in_user()
        if user is None:
            if signed_in_official() is not None:  # staff pages are not for officials
                return _error_page(403, _("This page is for staff accounts. Officials see their own page."))
            return _unauthorized()
        if user.account.must_change_password and request.endpoint != "ui.password":
            flash(_("Choose a new password before you continue."), "warning")
            return redirect(url_for("ui.password"))
        if not user.account.totp_enrolled and request.endpoint not in ENROLMENT_ENDPOINTS:
            flash(_("Set up your authenticator app before you continue."), "warning")
            return redirect(url_for("ui.totp_enrol"))
        return view(*args, **kwargs)

    return wrapper


def _require_security_admin(user: PortalUser, what: str = "manage API tokens") -> None:
    if not user.is_security_admin:
        raise ForbiddenError(f"only a security administrator may {what}", field="role")


def _require_system_admin(user: PortalUser) -> None:
    if not user.is_system_admin:
        raise ForbiddenError(
            "only a system administrator may manage accounts", field="role", code="authz.not_account_admin"
        )


# 三员分立 refusals of the account service (authz.services): the action, then the role's name
_ACCOUNT_ACTIONS_SYSADMIN: dict[str, Callable[[str], str]] = {
    "create": lambda role: _("Only a system administrator may create %(role)s accounts.", role=role),
    "unlock": lambda role: _("Only a system administrator may unlock %(role)s accounts.", role=role),
    "reset the authenticator of": lambda role: _(
        "Only a system administrator may reset the authenticator of %(role)s accounts.", role=role
    ),
    "change the role of": lambda role: _(
        "Only a system administrator may change the role of %(role)s accounts.", role=role
    ),
}
_ACCOUNT_ACTIONS_SECADMIN: dict[str, Callable[[], str]] = {
    "create": lambda: _("Only a security administrator may create RA staff accounts."),
    "unlock": lambda: _("Only a security administrator may unlock RA staff accounts."),
    "reset the authenticator of": lambda: _(
        "Only a security administrator may reset the authenticator of RA staff accounts."
    ),
    "change the role of": lambda: _("Only a security administrator may change the role of RA staff accounts."),
}
_ACCOUNT_VERBS = "create|unlock|reset the authenticator of|change the role of"


def _role_name(value: str) -> str:
    return str(ROLE_NAMES.get(value, value))


# ----- messages of the services, in the request's language ----------------------------

_REASONS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"wrong user name or password"), lambda m: _("Wrong user name or password.")),
    (
        re.compile(r"the field (.+) contains a NUL character"),
        lambda m: _("The field %(field)s contains a NUL character, which is not allowed.", field=m[1]),
    ),
    (
        re.compile(r"sign-in is locked for (\d+) minutes after too many failed attempts"),
        lambda m: _(
            "Too many failed sign-ins: signing in with this user name is locked for %(minutes)s minutes. "
            "Try again later or ask your administrator to unlock it.",
            minutes=m[1],
        ),
    ),
    (re.compile(r"wrong or already used code"), lambda m: _("Wrong code, or a code that was already used.")),
    (
        re.compile(r"must be the (\d+) digits your authenticator app shows"),
        lambda m: _("Enter the %(count)s digits your authenticator app shows.", count=m[1]),
    ),
    (
        re.compile(r"is not the code your authenticator app shows now"),
        lambda m: _("This is not the code your authenticator app shows now. Check the time on your phone."),
    ),
    (re.compile(r"TOTP is already set up for this account"), lambda m: _("Your authenticator app is already set up.")),
    (
        re.compile(r"is required for RA staff \(ra_clerk, ra_officer\)"),
        lambda m: _("RA staff must belong to a prefecture."),
    ),
    (
        re.compile(r"there is no prefecture with area code '(.*)'"),
        lambda m: _("There is no prefecture with area code %(code)s.", code=m[1]),
    ),
    (re.compile(r"user name '(.+)' is taken"), lambda m: _("The user name %(name)s is taken.", name=m[1])),
    (
        re.compile(r"must be 3-64 characters: lower-case letters, digits, '\.', '_' or '-', starting with a letter"),
        lambda m: _("Use 3 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter."),
    ),
    (re.compile(r"must be 1-128 characters"), lambda m: _("Use 1 to 128 characters.")),
    (
        re.compile(r"only a security administrator may create accounts"),
        lambda m: _("Only a security administrator may create accounts."),
    ),
    (
        re.compile(r"only a system administrator may manage accounts"),
        lambda m: _("Only a system administrator may manage these accounts."),
    ),
    (
        re.compile(rf"only a system administrator may ({_ACCOUNT_VERBS}) (\w+) accounts"),
        lambda m: _ACCOUNT_ACTIONS_SYSADMIN[m[1]](_role_name(m[2])),
    ),
    (
        re.compile(rf"only a security administrator may ({_ACCOUNT_VERBS}) RA staff accounts"),
        lambda m: _ACCOUNT_ACTIONS_SECADMIN[m[1]](),
    ),
    (
        re.compile(r"only a security or system administrator may (?:unlock a user name|reset an authenticator)"),
        lambda m: _("Only a security or system administrator may do this."),
    ),
    (
        re.compile(rf"you may not (?:{_ACCOUNT_VERBS}) your own account"),
        lambda m: _("You may not do this to your own account: another administrator must."),
    ),
    (
        re.compile(r"(\S+) is (\w+); 三员分立 .* so its role never changes \(create another account\)"),
        lambda m: _(
            "%(name)s is %(role)s: the separation of duties (三员分立) never changes the role of a system "
            "administrator, security administrator or security auditor. Create another account.",
            name=m[1],
            role=_role_name(m[2]),
        ),
    ),
    (
        re.compile(r"(\S+) was (\w+); 三员分立 .* so it may not become (\w+) \(create another account\)"),
        lambda m: _(
            "%(name)s was %(role)s once: the separation of duties (三员分立) does not let it become %(new)s. "
            "Create another account.",
            name=m[1],
            role=_role_name(m[2]),
            new=_role_name(m[3]),
        ),
    ),
    (re.compile(r"'(.+)' is not locked"), lambda m: _("%(name)s is not locked.", name=m[1])),
    (re.compile(r"is not your current password"), lambda m: _("This is not your current password.")),
    (
        re.compile(r"must be at least (\d+) characters"),
        lambda m: _("Must be at least %(count)s characters long.", count=m[1]),
    ),
    (
        re.compile(r"must be at most (\d+) characters"),
        lambda m: _("Must be at most %(count)s characters long.", count=m[1]),
    ),
    (re.compile(r"must not contain the user name"), lambda m: _("Must not contain your user name.")),
    (
        re.compile(r"is too repetitive; use at least (\d+) different characters"),
        lambda m: _("Too repetitive: use at least %(count)s different characters.", count=m[1]),
    ),
    (re.compile(r"must differ from the current password"), lambda m: _("Must differ from your current password.")),
    (
        re.compile(r"must be 1-64 characters: letters, digits, '\.', '_' or '-'"),
        lambda m: _("Use 1 to 64 characters: letters, digits, '.', '_' or '-'."),
    ),
    (re.compile(r"must be between 1 and 366 days"), lambda m: _("Between 1 and 366 days.")),
    (re.compile(r"a token named '(.+)' exists"), lambda m: _("A token named %(name)s already exists.", name=m[1])),
    (re.compile(r"token '(.+)' is already revoked"), lambda m: _("Token %(name)s is already revoked.", name=m[1])),
    (re.compile(r"no token with id (\d+)"), lambda m: _("There is no token with number %(id)s.", id=m[1])),
    (
        re.compile(r"only a security administrator may (?:create|revoke|manage) API tokens"),
        lambda m: _("Only a security administrator may manage API tokens."),
    ),
    (
        re.compile(r"your role may not read certificate records"),
        lambda m: _("Your role may not read certificate records."),
    ),
]


def translate_reason(reason: str) -> str | None:
    """A service's reason in the request's language, or None when it is not known here."""
    for pattern, message in _REASONS:
        match = pattern.fullmatch(reason)
        if match:
            return message(match)
    return None


def field_message(reason: str) -> str:
    known = translate_reason(reason)
    return known if known is not None else _("Not accepted: %(reason)s", reason=reason)


# refusals by their stable code and values (sturdier than matching the English text); the
# modules of the pages add theirs (e.g. web.official_signin)
CODE_MESSAGES: dict[str, Callable[[Mapping[str, str | int]], str]] = {}


def coded_message(code: str | None, params: Mapping[str, str | int], reason: str) -> str:
    """A refusal in the request's language: by its code when known here, else by its text."""
    render = CODE_MESSAGES.get(code or "")
    if render is not None:
        try:
            return render(params)
        except KeyError:
            pass
    return field_message(reason)


def attach_error(form: FlaskForm, error: GovpkiError, fields: dict[str, Field]) -> None:
    """Show a service error next to the form field it is about (else above the form)."""
    for problem in error.problems:
        target = fields.get(problem.field or "")
        message = coded_message(problem.code, problem.params, problem.reason)
        if target is not None:
            target.errors = [*target.errors, message]
        else:
            form.form_errors.append(message)


# ----- pages ------------------------------------------------------------------------


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_template("index.html")


@bp.get("/lang/<code>")
def language(code: str) -> ResponseReturnValue:
    if code not in LOCALES:
        raise NotFoundError(f"unknown language {code!r}; one of {', '.join(LOCALES)}", field="lang")
    response = redirect(_local_path(request.args.get("next")) or url_for("ui.index"))
    response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, **_cookie_options())
    return response


# how the session's user signed in (RFC 8176 values; the OIDC provider's amr claim) and when
SESSION_AMR = "amr"
SESSION_AUTH_TIME = "auth_time"


def session_amr() -> list[str]:
    """The authentication methods of this session's sign-in, e.g. ``["pwd", "otp"]``."""
    value = session.get(SESSION_AMR)
    return [str(v) for v in value] if isinstance(value, list) else []


def _complete_sign_in(account: Account, target: str | None) -> BaseResponse:
    """Both factors done (or the account has not enrolled TOTP yet): a fresh session for the user."""
    session.clear()  # a fresh session (and CSRF token) for the signed-in user
    login_user(PortalUser(account), fresh=True)
    session.permanent = True
    session[SESSION_AMR] = ["pwd", "otp"] if account.totp_enrolled else ["pwd"]
    session[SESSION_AUTH_TIME] = int(_dt.datetime.now(UTC).timestamp())
    if account.must_change_password:
        flash(_("This is your first sign-in: replace the one-time password with your own."), "warning")
        response = redirect(url_for("ui.password"))
    elif not account.totp_enrolled:
        response = redirect(url_for("ui.totp_enrol"))
    else:
        response = redirect(target or url_for("ui.dashboard"))
    response.set_cookie(SIGNED_IN_COOKIE, "1", **_cookie_options())
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "GET" and signed_in_user() is not None:
        return redirect(url_for("ui.dashboard"))
    form = LoginForm()
    if form.validate_on_submit():
        if services().official_signin.has_name(g.db, form.username.data):  # an official's password sign-in
            from web.official_signin import password_step  # it imports this module

            return password_step(form, _local_path(request.args.get("next")))
        try:
            account = services().accounts.sign_in_password(
                g.db,
                username=form.username.data,
                password=form.password.data,
                source=client_address(),
            )
        except UnauthenticatedError as error:
            # 200 on purpose: the unit of work commits the failure's audit entry (and the lock).
            form.form_errors.append(field_message(error.reason))
            return render_template("login.html", form=form)
        target = _local_path(request.args.get("next"))
        if not account.totp_enrolled:
            return _complete_sign_in(account, target)
        logout_user()
        session.clear()  # half signed in: nothing but the account and the time until the code is given
        session[PENDING_SIGN_IN] = {
            "account": account.id,
            "at": services().clock.now().isoformat(),
            "next": target,
        }
        return redirect(url_for("ui.login_totp"))
    return render_template("login.html", form=form), 422 if form.is_submitted() else 200


def pending_step(key: str, id_field: str) -> tuple[int, str | None] | None:
    """A half-finished sign-in kept under ``key`` (password given, code not yet): the id kept
    in ``id_field`` and where to go after, if still fresh (``PENDING_TIMEOUT``)."""
    pending = session.get(key)
    if not isinstance(pending, dict) or not isinstance(pending.get(id_field), int):
        return None
    try:
        started = _dt.datetime.fromisoformat(str(pending.get("at")))
    except ValueError:
        return None
    if started.tzinfo is None or services().clock.now() - started > PENDING_TIMEOUT:
        return None
    target = pending.get("next")
    return pending[id_field], target if isinstance(target, str) else None


def _pending_sign_in() -> tuple[int, str | None] | None:
    """The half-signed-in account (password given, code not yet) and where to go after, if still fresh."""
    return pending_step(PENDING_SIGN_IN, "account")


@bp.route("/login/totp", methods=["GET", "POST"])
def login_totp() -> ResponseReturnValue:
    """The second sign-in step: the code of the authenticator app."""
    pending = _pending_sign_in()
    if pending is None:
        had_pending = session.pop(PENDING_SIGN_IN, None) is not None
        if had_pending:
            minutes = int(PENDING_TIMEOUT.total_seconds() // 60)
            flash(_("The sign-in was not finished within %(minutes)d minutes. Please start again.", minutes=minutes))
        else:
            flash(_("Please sign in to see this page."), "info")
        return redirect(url_for("ui.login"))
    account_id, target = pending
    form = TotpForm()
    if form.validate_on_submit():
        try:
            account = services().accounts.sign_in_totp(g.db, account_id, code=form.code.data, source=client_address())
        except InvalidError as error:
            attach_error(form, error, {"code": form.code})
            return render_template("login_totp.html", form=form), 422
        except UnauthenticatedError as error:
            # 200 on purpose: the unit of work commits the failure's audit entry (and the lock).
            if error.code == LOCKED:
                session.pop(PENDING_SIGN_IN, None)
                flash(field_message(error.reason), "warning")
                return redirect(url_for("ui.login"))
            attach_error(form, error, {"code": form.code})
            return render_template("login_totp.html", form=form)
        return _complete_sign_in(account, target)
    return render_template("login_totp.html", form=form), 422 if form.is_submitted() else 200


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    logout_user()
    session.clear()
    flash(_("You have signed out."), "info")
    response = redirect(url_for("ui.index"))
    response.delete_cookie(SIGNED_IN_COOKIE, **_cookie_options())
    return response


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password() -> ResponseReturnValue:
    user = _user()
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            services().accounts.change_password(
                g.db, user.principal, current=form.current_password.data, new=form.new_password.data
            )
        except InvalidError as error:
            attach_error(form, error, {"current_password": form.current_password, "new_password": form.new_password})
        else:
            flash(_("Your password has been changed."), "success")
            if not user.account.totp_enrolled:
                return redirect(url_for("ui.totp_enrol"))
            return redirect(url_for("ui.dashboard"))
    status = 422 if form.is_submitted() else 200
    return render_template("password.html", form=form, forced=user.account.must_change_password), status


@bp.route("/totp/enrol", methods=["GET", "POST"])
@login_required
def totp_enrol() -> ResponseReturnValue:
    """Set up the authenticator app: a QR code (its own URL: the CSP allows no data: images)
    and the secret in text; the user confirms with a code."""
    user = _user()
    if user.account.totp_enrolled:
        return redirect(url_for("ui.dashboard"))
    form = TotpForm()
    accounts = services().accounts
    if form.validate_on_submit():
        try:
            accounts.confirm_totp(g.db, user.principal, code=form.code.data)
        except InvalidError as error:
            attach_error(form, error, {"code": form.code})
            # 200 on purpose: the failed attempt's audit entry is committed
            secret, _uri = accounts.totp_enrolment(g.db, user.principal)
            return render_template("totp_enrol.html", form=form, secret=_grouped(secret))
        session[SESSION_AMR] = ["pwd", "otp"]  # the code just confirmed is this session's second factor
        flash(_("Your authenticator app is set up. From now on you sign in with your password and a code."), "success")
        return redirect(url_for("ui.dashboard"))
    secret, _uri = accounts.totp_enrolment(g.db, user.principal)
    status = 422 if form.is_submitted() else 200
    return render_template("totp_enrol.html", form=form, secret=_grouped(secret)), status


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@bp.get("/totp/enrol/qr.svg")
@login_required
def totp_qr() -> ResponseReturnValue:
    user = _user()
    if user.account.totp_enrolled:
        raise NotFoundError("your authenticator app is already set up", field="code")
    _secret, uri = services().accounts.totp_enrolment(g.db, user.principal)
    return totp_qr_response(uri)


def totp_qr_response(uri: str) -> Response:
    """An authenticator app's otpauth:// URI as a QR code (SVG at its own URL: the pages'
    CSP allows no data: images), never cached."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=5, border=2, title="TOTP")
    response = make_response(out.getvalue())
    response.mimetype = "image/svg+xml"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


@bp.get("/dashboard")
@login_required
def dashboard() -> ResponseReturnValue:
    user = _user()
    db = g.db
    svc = services()
    principal = user.principal
    certificates = svc.ca.list_certificates(db, principal, limit=20) if can_read(principal) else None
    return render_template(
        "dashboard.html",
        cas=svc.ca.list_cas(db),
        authorities=svc.regions.list(db),
        region=svc.region,
        certificates=certificates,
    )


@bp.route("/tokens", methods=["GET", "POST"])
@login_required
def tokens() -> ResponseReturnValue:
    user = _user()
    _require_security_admin(user)
    svc = services()
    form = TokenForm(days=svc.config.api_token_days)
    status = 200
    if form.validate_on_submit():
        try:
            token, secret = svc.tokens.create(g.db, user.principal, name=form.name.data.strip(), days=form.days.data)
        except (InvalidError, ConflictError) as error:
            attach_error(form, error, {"name": form.name, "days": form.days})
        else:
            return render_template("token_created.html", token=token, secret=secret)
    if form.is_submitted():
        status = 422
    return render_template(
        "tokens.html", form=form, tokens=svc.tokens.list(g.db), action=ActionForm(), now=svc.clock.now()
    ), status


@bp.post("/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id: int) -> ResponseReturnValue:
    user = _user()
    _require_security_admin(user)
    token = services().tokens.revoke(g.db, user.principal, token_id)
    flash(_("Token %(name)s has been revoked; it no longer works.", name=token.name), "success")
    return redirect(url_for("ui.tokens"))


@bp.route("/staff", methods=["GET", "POST"])
@login_required
def staff() -> ResponseReturnValue:
    """RA staff accounts: a security administrator creates a clerk or officer of one prefecture."""
    user = _user()
    _require_security_admin(user, "create accounts")
    svc = services()
    form = StaffForm()
    form.prefecture.choices = [SelectChoice("", "—")] + [
        SelectChoice(p.code, f"{p.code} {p.name} ({p.name_en})") for p in svc.region.prefectures
    ]
    status = 200
    if form.validate_on_submit():
        password = one_time_password()
        try:
            account = svc.accounts.create(
                g.db,
                user.principal,
                username=form.username.data.strip(),
                display_name=form.display_name.data.strip(),
                role=Role(form.role.data),
                password=password,
                prefecture=form.prefecture.data,
            )
        except (InvalidError, ConflictError) as error:
            attach_error(
                form,
                error,
                {
                    "username": form.username,
                    "display_name": form.display_name,
                    "role": form.role,
                    "prefecture": form.prefecture,
                },
            )
        else:
            return render_template("staff_created.html", account=account, password=password)
    if form.is_submitted():
        status = 422
    ra_roles = {r.value for r in RA_ROLES}
    accounts = [a for a in svc.accounts.list_staff(g.db) if a.role in ra_roles]
    return render_template(
        "staff.html", form=form, accounts=accounts, locks=svc.accounts.locks(g.db), action=ActionForm()
    ), status


def _account_action(account_id: int, ra_staff: bool, act: Callable[[Services, Account], str]) -> BaseResponse:
    """An unlock or authenticator reset from /staff (RA staff) or /accounts (the others):
    the service checks who may; a refusal it explains (not locked…) is flashed."""
    back = "ui.staff" if ra_staff else "ui.accounts"
    svc = services()
    account = svc.accounts.get(g.db, account_id)
    if account is None or (Role(account.role) in RA_ROLES) is not ra_staff:
        raise NotFoundError(f"there is no account {account_id} on this page", field="account")
    try:
        message = act(svc, account)
    except ConflictError as error:
        flash(field_message(error.reason), "warning")
    else:
        flash(message, "success")
    return redirect(url_for(back))


def _unlock(svc: Services, account: Account) -> str:
    svc.accounts.unlock(g.db, _user().principal, account.username)
    return _("%(name)s may sign in again.", name=account.username)


def _reset_totp(svc: Services, account: Account) -> str:
    svc.accounts.reset_totp(g.db, _user().principal, account.username)
    return _("The authenticator of %(name)s was reset: a new one is set up at the next sign-in.", name=account.username)


@bp.post("/staff/<int:account_id>/unlock")
@login_required
def staff_unlock(account_id: int) -> ResponseReturnValue:
    _require_security_admin(_user(), "unlock RA staff accounts")
    return _account_action(account_id, True, _unlock)


@bp.post("/staff/<int:account_id>/reset-totp")
@login_required
def staff_reset_totp(account_id: int) -> ResponseReturnValue:
    _require_security_admin(_user(), "reset the authenticator of RA staff accounts")
    return _account_action(account_id, True, _reset_totp)


@bp.route("/accounts", methods=["GET", "POST"])
@login_required
def accounts() -> ResponseReturnValue:
    """Accounts other than RA staff (三员分立): a system administrator creates them, unlocks
    them and resets their authenticator."""
    user = _user()
    _require_system_admin(user)
    svc = services()
    form = AccountForm()
    status = 200
    if form.validate_on_submit():
        password = one_time_password()
        try:
            account = svc.accounts.create(
                g.db,
                user.principal,
                username=form.username.data.strip(),
                display_name=form.display_name.data.strip(),
                role=Role(form.role.data),
                password=password,
            )
        except (InvalidError, ConflictError, ForbiddenError) as error:
            attach_error(form, error, {"username": form.username, "display_name": form.display_name, "role": form.role})
        else:
            return render_template("staff_created.html", account=account, password=password)
    if form.is_submitted():
        status = 422
    ra_roles = {r.value for r in RA_ROLES}
    listed = [a for a in svc.accounts.list_staff(g.db) if a.role not in ra_roles]
    return render_template(
        "accounts.html",
        form=form,
        accounts=listed,
        locks=svc.accounts.locks(g.db),
        action=ActionForm(),
        me=user.account.id,
    ), status


@bp.post("/accounts/<int:account_id>/unlock")
@login_required
def account_unlock(account_id: int) -> ResponseReturnValue:
    _require_system_admin(_user())
    return _account_action(account_id, False, _unlock)


@bp.post("/accounts/<int:account_id>/reset-totp")
@login_required
def account_reset_totp(account_id: int) -> ResponseReturnValue:
    _require_system_admin(_user())
    return _account_action(account_id, False, _reset_totp)


# ----- errors -----------------------------------------------------------------------


def _error_page(status: int, reason: str | None) -> Response:
    title = STATUS_TITLES.get(status, _l("Error"))
    return make_response(render_template("error.html", status=status, title=title, reason=reason), status)


def render_error(error: GovpkiError) -> Response:
    """A domain error as a page in the layout (the app calls this for HTML requests)."""
    if error.code in CODE_MESSAGES:
        return _error_page(STATUS[error.kind], coded_message(error.code, error.params, error.reason))
    known = translate_reason(error.reason)
    return _error_page(STATUS[error.kind], known if known is not None else error.reason)


def render_http_error(error: HTTPException) -> Response:
    """An HTTP error (404, 405, ...) as a page in the layout."""
    return _error_page(error.code or 500, None)


@bp.errorhandler(CSRFError)
def _csrf_error(error: CSRFError) -> ResponseReturnValue:
    if signed_in_user() is None and request.cookies.get(SIGNED_IN_COOKIE) == "1":
        return _unauthorized()  # the session expired while the form was open
    reason = _("The form was out of date or did not come from this site. Reload the page and try again.")
    return _error_page(400, reason)


# ----- wiring -----------------------------------------------------------------------


def _select_locale() -> str:
    """An explicit choice (cookie), else the browser's Accept-Language, else Chinese."""
    if not has_request_context():
        return DEFAULT_LOCALE
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LOCALES:
        return chosen
    best = request.accept_languages.best_match(["zh-CN", "en"])
    return "en" if best == "en" else DEFAULT_LOCALE


def _template_globals() -> dict[str, Any]:
    current = get_locale()
    locale = "en" if current is not None and current.language == "en" else DEFAULT_LOCALE
    svc = services()
    return {
        "user": signed_in_user(),
        "official": signed_in_official(),
        "locale": locale,
        "html_lang": "zh-CN" if locale == "zh_CN" else "en",
        "other_locale": "en" if locale == "zh_CN" else "zh_CN",
        "organization": svc.config.organization,
        "role_names": ROLE_NAMES,
        "ca_kinds": CA_KINDS,
        "cert_states": CERT_STATES,
        "current_path": _current_path() if has_request_context() else "/",
    }


def _utc(value: _dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fingerprint(value: str | None) -> str:
    if not value:
        return "—"
    upper = value.upper()
    return ":".join(upper[i : i + 2] for i in range(0, len(upper), 2))


def _secure_headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        for name, value in SECURE_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Sessions, CSRF, translations and the portal's pages."""
    app.config.update(
        PERMANENT_SESSION_LIFETIME=IDLE_TIMEOUT,
        SESSION_REFRESH_EACH_REQUEST=True,
        BABEL_DEFAULT_LOCALE=DEFAULT_LOCALE,
        BABEL_DEFAULT_TIMEZONE="UTC",
        BABEL_TRANSLATION_DIRECTORIES=str(TRANSLATIONS),
    )

    login_manager = LoginManager()
    login_manager.session_protection = "strong"
    login_manager.login_view = "ui.login"
    login_manager.user_loader(_load_user)
    login_manager.unauthorized_handler(_unauthorized)
    login_manager.init_app(app)

    csrf = CSRFProtect()
    csrf.init_app(app)
    csrf.exempt(api.bp)
    csrf.exempt(api_events.bp)  # client credentials, no cookies
    csrf.exempt(api_authz.bp)  # client credentials, no cookies

    Babel().init_app(app, locale_selector=_select_locale)

    app.context_processor(_template_globals)
    app.add_template_filter(_utc, "utc")
    app.add_template_filter(_fingerprint, "fingerprint")
    app.after_request(_secure_headers)
    app.register_blueprint(bp)
