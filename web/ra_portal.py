"""The RA clerk portal (/ra): officials and services, certificate requests and their
approval, certificate pages, the key hand-over (PIN slip), bulk enrollment and the
prefecture's dashboard.

Thin views: parse a form, call one service with the acting principal, render. The
services scope everything to the principal's prefecture (another prefecture's official,
request or certificate is "not found", by URL too) and check the roles. Errors are shown
next to the form field they name, or as a page, in the request's language; never a 500.
Nothing is committed here: the app's unit of work commits a response below 400.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from flask import Blueprint, Flask, Response, current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge
from wtforms import Field
from wtforms.fields.choices import SelectChoice

from govpki.errors import FieldProblem, GovpkiError, InvalidError
from govpki.principal import Principal, Role
from ra.import_models import ImportJob, ImportState
from ra.imports import RowStatus
from ra.portal import EXPIRING_DAYS
from ra.requests import RequestInput
from ra.subscriber_models import RequestState
from ra.subscribers import OfficialInput, ServiceInput
from web.container import Services
from web.forms import ActionForm
from web.problems import STATUS
from web.ra_forms import ChangeForm, CsrForm, DecisionForm, ImportForm, OfficialForm, ServiceForm
from web.ui import _, _error_page, _user, field_message, login_required, services
from web.ui import _csrf_error as csrf_error

bp = Blueprint("ra_portal", __name__, url_prefix="/ra")

MAX_UPLOAD_TEXT = 65536
RUNNER = "govpki_ra_imports"

KINDS = {
    "new": _l("New certificate"),
    "renew": _l("Renewal"),
    "suspend": _l("Suspension"),
    "resume": _l("Resumption"),
    "revoke": _l("Revocation"),
}
STATES = {
    "submitted": _l("Awaiting approval"),
    "approved": _l("Approved, being carried out"),
    "rejected": _l("Rejected"),
    "completed": _l("Completed"),
    "failed": _l("Failed"),
}
ACTIONS = {
    "submit": _l("submitted"),
    "approve": _l("approved"),
    "reject": _l("rejected"),
    "complete": _l("completed"),
    "fail": _l("failed"),
}
GENDERS = {"male": _l("Male"), "female": _l("Female")}
REASONS = {
    "unspecified": _l("Unspecified"),
    "keyCompromise": _l("Key compromise"),
    "affiliationChanged": _l("Affiliation changed"),
    "superseded": _l("Superseded"),
    "cessationOfOperation": _l("Cessation of operation"),
    "privilegeWithdrawn": _l("Privilege withdrawn"),
    "certificateHold": _l("On hold"),
}
ROW_STATUS = {
    RowStatus.REGISTERED: _l("registered"),
    RowStatus.DUPLICATE: _l("already registered"),
    RowStatus.INVALID: _l("invalid"),
}
FIELDS = {
    "name": _l("Full name"),
    "id_number": _l("Resident ID number"),
    "department": _l("Department"),
    "title": _l("Title"),
    "phone": _l("Phone"),
    "email": _l("E-mail"),
    "file": _l("File"),
}


# ----- the services' reasons in the request's language ----------------------------------

_WHAT = {  # for "There is no %(what)s ..."
    "official": _l("official"),
    "request": _l("request"),
    "certificate": _l("certificate"),
    "service": _l("service"),
    "import": _l("import"),
}

Params = Mapping[str, str | int]


def _not_found(what: str) -> Callable[[Params], str]:
    return lambda p: _("There is no %(what)s %(id)s in your prefecture.", what=str(_WHAT[what]), id=p["id"])


def _birth_date(p: Params) -> str:
    if p.get("problem") == "future":
        return _("The birth date in the ID number (%(date)s) is in the future.", date=p["date"])
    if p.get("problem") == "too_early":
        return _("The birth date in the ID number (%(date)s) is before %(year)s.", date=p["date"], year=p["year"])
    return _("The birth date %(date)s in the ID number (characters 7-14) does not exist.", date=p["date"])


def _official_not_found(p: Params) -> str:
    if "id" in p:
        return _not_found("official")(p)
    return _("No official with this ID number.")


def _key_in_use(p: Params) -> str:
    return _(
        "The key of this CSR is already in use by certificate %(serial)s. The subscriber must make a new key pair.",
        serial=p["serial"],
    )


def _suspended_or_revoked(p: Params) -> str:
    return _("Certificate %(serial)s is already suspended or revoked.", serial=p["serial"])


def _not_suspended(p: Params) -> str:
    return _("Certificate %(serial)s is not suspended.", serial=p["serial"])


def _not_renewable(p: Params) -> str:
    return _("Certificate %(serial)s is suspended or revoked; it cannot be renewed.", serial=p["serial"])


def _profile_not_allowed(p: Params) -> str:
    return _("The RA of your prefecture may not request profile %(profile)s.", profile=p["profile"])


def _inactive(p: Params) -> str:
    return _("Your prefecture has no active registration authority.")


# The refusals the portal can show, by their stable code (govpki.errors), with the values the
# service put in ``params``. A code without an entry is shown with its English reason.
_MESSAGES: dict[str, Callable[[Params], str]] = {
    # resident ID numbers (ra.idnumber)
    "ra.id_number_empty": lambda p: _("Enter the 18-character resident ID number."),
    "ra.id_number_length": lambda p: _(
        "A resident ID number has 18 characters; this one has %(count)s.", count=p["count"]
    ),
    "ra.id_number_characters": lambda p: _("A resident ID number is 17 digits followed by a digit or X."),
    "ra.id_number_birth_date": _birth_date,
    "ra.id_number_checksum": lambda p: _("The check character (the 18th) is wrong: the ID number was mistyped."),
    # officials and services (ra.subscribers)
    "ra.duplicate_id_number": lambda p: _(
        "This ID number is already registered, in %(prefecture)s. An official is registered only once.",
        prefecture=p["prefecture"],
    ),
    "ra.duplicate_service": lambda p: _(
        "A service named %(name)s is already registered in this prefecture.", name=p["name"]
    ),
    "ra.required": lambda p: _("This field is required."),
    "ra.too_long": lambda p: _("Too long: %(count)s characters, at most %(max)s.", count=p["count"], max=p["max"]),
    "ra.control_character": lambda p: _("Contains the control character %(char)s.", char=p["char"]),
    "ra.phone": lambda p: _("Enter a telephone number: 5 to 20 digits, with optional +, - and spaces."),
    "ra.no_host_names": lambda p: _("Give at least one host name or IP address."),
    "ra.too_many_names": lambda p: _("At most %(max)s names.", max=p["max"]),
    "ra.given_twice": lambda p: _("%(value)s is given twice.", value=p["value"]),
    "ra.bad_ip_address": lambda p: _("%(value)s is not an IPv4 or IPv6 address.", value=p["value"]),
    "ra.no_data_key": lambda p: _(
        "Officials cannot be registered yet: a security administrator must set up the data key."
    ),
    "ra.official_not_found": _official_not_found,
    "ra.service_not_found": _not_found("service"),
    "ra.request_not_found": _not_found("request"),
    "ra.certificate_not_found": _not_found("certificate"),
    "ra.import_not_found": _not_found("import"),
    "ra.limit": lambda p: _("Between 1 and 1000."),
    # who may do what
    "ra.not_a_clerk": lambda p: _("Only an RA clerk registers subscribers and submits requests."),
    "ra.not_an_officer": lambda p: _("Only an RA officer of the request's prefecture approves or rejects it."),
    "ra.self_approval": lambda p: _(
        "You submitted this request yourself: another officer of the prefecture must decide it."
    ),
    "ra.may_not_reveal": lambda p: _("Only an RA officer of the official's prefecture may see the full ID number."),
    # officials' password sign-in (authz/official_signin.py), reset by an RA officer
    "authz.official.not_found": _official_not_found,
    "authz.official.not_set_up": lambda p: _("This official has no password sign-in to reset."),
    "authz.official.reset_forbidden": lambda p: _(
        "Only an RA officer of the official's prefecture may reset their password sign-in."
    ),
    "ra.may_not_read": lambda p: _("Your role may not see the registered subscribers."),
    "ra.may_not_request": lambda p: _("Your role may not request certificates."),
    "ra.no_prefecture": lambda p: _("Your account belongs to no prefecture; RA staff act for one prefecture."),
    "ra.not_ra_staff": lambda p: _("Only RA staff of the official's prefecture hand over the encryption key."),
    "ra.inactive": _inactive,
    "ra.profile_not_allowed": _profile_not_allowed,
    "ra.sweep_forbidden": lambda p: _("Only the system settles interrupted requests."),
    "ra.resume_forbidden": lambda p: _("Only the system resumes interrupted imports."),
    # requests (ra.requests)
    "ra.unknown_kind": lambda p: _("Choose the kind of request."),
    "ra.unknown_state": lambda p: _("There is no such request state."),
    "ra.one_subscriber": lambda p: _("Name either an official or a service."),
    "ra.dual_pair_profile": lambda p: _(
        "An official gets the signing and encryption pair; no other profile can be chosen."
    ),
    "ra.unknown_profile": lambda p: _("Choose the certificate profile of the service."),
    "ra.csr_required": lambda p: _("Choose the CSR file or paste the CSR."),
    "ra.serial_required": lambda p: _("Name the certificate (its serial number)."),
    "ca.bad_serial": lambda p: _("A serial number is written in hexadecimal (0-9, a-f; colons allowed)."),
    "ra.key_in_use": _key_in_use,
    "ra.key_in_request": lambda p: _(
        "The key of this CSR is already in request %(id)s, which is still open.", id=p["id"]
    ),
    "ra.request_open": lambda p: _(
        "Request %(id)s for this certificate is still open; it must be decided first.", id=p["id"]
    ),
    "ra.certificate_expired": lambda p: _(
        "Certificate %(serial)s expired on %(date)s.", serial=p["serial"], date=p["date"]
    ),
    "ra.encryption_not_renewable": lambda p: _(
        "An encryption certificate is not renewed: its key is made by the key-management centre. "
        "Submit a new certificate for the official."
    ),
    "ra.not_renewable": _not_renewable,
    "ra.not_suspendable": _suspended_or_revoked,
    "ra.not_on_hold": _not_suspended,
    "ra.already_revoked": _suspended_or_revoked,
    "ra.reason_required": lambda p: _("A revocation needs its reason."),
    "ra.already_decided": lambda p: _("Request %(id)s has already been decided.", id=p["id"]),
    # the key hand-over (ra.portal, ra.encryption)
    "ra.pin_already_shown": lambda p: _(
        "The one-time password was already shown (or its time ran out). The key is kept in escrow: "
        "ask for key recovery."
    ),
    "ra.pkcs12_taken": lambda p: _(
        "The encryption key was already handed over (or its time ran out). The key is kept in escrow: "
        "ask for key recovery."
    ),
    "ra.pin_first": lambda p: _(
        "Show the PIN slip first: the PKCS#12 file can only be opened with the one-time password printed on it."
    ),
    "ra.no_pkcs12": lambda p: _("Request %(id)s has no encryption key to hand over.", id=p["id"]),
    "ra.email_not_allowed": lambda p: _("This certificate takes no e-mail address."),
    "ra.bad_email": lambda p: _("This is not a valid e-mail address."),
    "govpki.invalid_email": lambda p: _("This is not a valid e-mail address."),
    "govpki.nul_character": lambda p: _(
        "The field %(field)s contains a NUL character, which is not allowed.", field=p["field"]
    ),
    "ra.unknown_algorithm": lambda p: _("Choose one of the key algorithms offered."),
    "ra.escrow_certificate_missing": lambda p: _(
        "The certificate %(serial)s of the escrowed key is not on record.", serial=p["serial"]
    ),
    "kmc.escrow_failed": lambda p: _(
        "Certificate %(serial)s was issued but its key could not be escrowed: revoke it (superseded) "
        "and submit the request again.",
        serial=p["serial"],
    ),
    "kmc.no_storage_key": lambda p: _(
        "The key-management centre has no storage key yet: a security administrator must set it up."
    ),
    # bulk enrollment (ra.imports)
    "ra.import_empty": lambda p: _("Choose a CSV file of officials."),
    "ra.import_encoding": lambda p: _(
        'The file is neither UTF-8 nor GB18030 text (byte %(byte)s cannot be read). Save it as "CSV UTF-8".',
        byte=p["byte"],
    ),
    "ra.import_not_text": lambda p: _("This is not a text (CSV) file."),
    "ra.import_no_header": lambda p: _("The file has no header row."),
    "ra.import_missing_column": lambda p: _(
        "The file lacks the required column(s) %(columns)s. The header row must name "
        "姓名/name, 身份证号/id_number and 部门/department.",
        columns=p["columns"],
    ),
    "ra.import_too_many_rows": lambda p: _(
        "The file has more than %(count)s rows; split it into smaller files.", count=p["count"]
    ),
    "ra.import_csv": lambda p: _("The file cannot be read as CSV at line %(line)s.", line=p["line"]),
    "ra.import_no_rows": lambda p: _("The file has a header row but no officials."),
    # the CSR and the names that go into certificates (ca.csr)
    "ca.csr_empty": lambda p: _("The certificate request (CSR) is empty."),
    "ca.csr_too_large": lambda p: _("The certificate request is too large: at most %(max)s bytes.", max=p["max"]),
    "ca.csr_malformed": lambda p: _("This is not a certificate request (PKCS#10 CSR, PEM or DER)."),
    "ca.csr_key_not_allowed": lambda p: _("The key type of this CSR is not allowed for this certificate."),
    "ca.csr_key_too_weak": lambda p: _(
        "The key of this CSR is too weak (RSA-%(bits)s); at least RSA-%(min)s is needed.", bits=p["bits"], min=p["min"]
    ),
    "ca.csr_key_invalid": lambda p: _("The RSA key of this CSR is not accepted (its size or public exponent)."),
    "ca.csr_signature": lambda p: _(
        "The signature of the CSR does not verify: the request was altered or signed by another key."
    ),
    "ca.csr_subject": lambda p: _("The subject of this certificate request is not accepted."),
    "ca.country_code": lambda p: _("Enter a two-letter country code such as CN."),
    "ca.san_invalid": lambda p: _("A name in this request cannot be put into a certificate."),
    "ca.empty": lambda p: _("This field is required."),
    "ca.white_space": lambda p: _("Remove the spaces at the beginning or the end."),
    "ca.control_character": lambda p: _("Contains the control character %(char)s.", char=p["char"]),
    "ca.too_long": lambda p: _("Too long: %(count)s characters, at most %(max)s.", count=p["count"], max=p["max"]),
    "ca.name_too_long": lambda p: _(
        "Too long for a certificate: %(bytes)s bytes in UTF-8, at most %(max)s (21 Chinese characters).",
        bytes=p["bytes"],
        max=p["max"],
    ),
    "ca.dns_name": lambda p: _(
        "Not a host name a certificate is issued for: lower-case, fully qualified, no wildcards."
    ),
    "ca.san_required": lambda p: _("This certificate needs at least one host name or IP address."),
    "ca.san_not_allowed": lambda p: _(
        "Names of this kind (%(kind)s) are not allowed in this certificate.", kind=p["kind"]
    ),
    "ca.san_duplicate": lambda p: _("A name is given twice."),
    # carrying out an approved request (ca.services, ca.revocation)
    "ca.key_in_use": _key_in_use,
    "ca.key_compromised": lambda p: _(
        "This key was revoked for key compromise (certificate %(serial)s); the subscriber must make a new key pair.",
        serial=p["serial"],
    ),
    "ca.ra_inactive": _inactive,
    "ca.profile_not_allowed": _profile_not_allowed,
    "ca.already_revoked": _suspended_or_revoked,
    "ca.already_on_hold": _suspended_or_revoked,
    "ca.not_on_hold": _not_suspended,
    "ca.on_hold": _not_renewable,
    "ca.revoked": _not_renewable,
    "ca.expired": lambda p: _("Certificate %(serial)s has expired; its status cannot change.", serial=p["serial"]),
    "ca.not_issued": lambda p: _("Certificate %(serial)s was never issued.", serial=p["serial"]),
    "ca.already_renewed": lambda p: _("Certificate %(serial)s was already renewed.", serial=p["serial"]),
    # requests settled after an interruption (ra.requests.sweep_approved) and stopped imports
    "ra.interrupted_status": lambda p: _(
        "Interrupted before the CA changed the certificate's status; nothing was changed. Submit the request again."
    ),
    "ra.interrupted_before_issue": lambda p: _("Interrupted before the CA issued anything. Submit the request again."),
    "ra.interrupted_signing": lambda p: _(
        "Interrupted while the CA was signing certificate %(serial)s: it may have been signed but was never "
        "delivered. Revoke it (superseded) and submit the request again with a new key pair.",
        serial=p["serial"],
    ),
    "ra.interrupted_before_escrow": lambda p: _(
        "Interrupted after the CA issued the signing certificate %(serial)s, before the encryption key was "
        "escrowed; that key is lost. Revoke %(serial)s (superseded) and submit the request again with a new "
        "key pair.",
        serial=p["serial"],
    ),
    "ra.recovered_completed": lambda p: _(
        "Completed after an interruption: the CA had issued certificate %(serial)s.", serial=p["serial"]
    ),
    "ra.import_internal": lambda p: _("An internal error occurred; it was logged. Upload the file again."),
}


def ra_message(code: str | None, params: Params, reason: str) -> str:
    """A refusal in the request's language, by its code and values; the English reason for a
    code without a translation (or whose values are missing)."""
    message = _MESSAGES.get(code or "")
    if message is not None:
        try:
            return message(params)
        except KeyError:
            pass
    return field_message(reason)


def error_message(error: GovpkiError) -> str:
    return ra_message(error.code, error.params, error.reason)


def problem_message(problem: FieldProblem) -> str:
    return ra_message(problem.code, problem.params, problem.reason)


# Import rows written before migration 0018 keep only the English reason, so such a stored
# reason is read back into its code and values here, then translated like the rest.
_STORED: list[tuple[re.Pattern[str], str, dict[str, str]]] = [
    (re.compile(r"is empty; enter the 18-character resident ID number"), "ra.id_number_empty", {}),
    (re.compile(r"has (?P<count>\d+) characters; a resident ID number has 18"), "ra.id_number_length", {}),
    (re.compile(r"must be 17 digits followed by a digit or X"), "ra.id_number_characters", {}),
    (
        re.compile(r"has the impossible birth date (?P<date>\S+) \(characters 7-14\)"),
        "ra.id_number_birth_date",
        {"problem": "impossible"},
    ),
    (
        re.compile(r"has a birth date in the future \((?P<date>\S+)\)"),
        "ra.id_number_birth_date",
        {"problem": "future"},
    ),
    (
        re.compile(r"has a birth date before (?P<year>\d+) \((?P<date>\S+)\)"),
        "ra.id_number_birth_date",
        {"problem": "too_early"},
    ),
    (re.compile(r"has a wrong check character \(the 18th\).*"), "ra.id_number_checksum", {}),
    (re.compile(r"this ID number is already registered, in (?P<prefecture>.+?); .*"), "ra.duplicate_id_number", {}),
    (re.compile(r"is required"), "ra.required", {}),
    (re.compile(r"is (?P<count>\d+) characters; at most (?P<max>\d+) are allowed"), "ra.too_long", {}),
    (re.compile(r"contains the control or unassigned character (?P<char>U\+[0-9A-F]+)"), "ra.control_character", {}),
    (re.compile(r"must be a telephone number: .*"), "ra.phone", {}),
    (
        re.compile(r"is (?P<bytes>\d+) bytes in UTF-8; a common name may be at most (?P<max>\d+) bytes"),
        "ca.name_too_long",
        {},
    ),
    (re.compile(r"officials cannot be registered yet: the subscriber data key .*"), "ra.no_data_key", {}),
]


def stored_message(reason: str) -> str:
    """An import row's (or failed import's) stored English reason in the request's language."""
    for pattern, code, fixed in _STORED:
        match = pattern.fullmatch(reason)
        if match:
            return ra_message(code, {**match.groupdict(), **fixed}, reason)
    return field_message(reason)


def recorded_message(text: str | None, code: str | None, params: Params | None) -> str:
    """A refusal kept in the database (a failed request, its history, a stopped import, a
    rejected import row) in the request's language: by its code and values when it has them
    (written since migration 0018), else read back from its English text."""
    if code is None:
        return stored_message(text or "")
    values = dict(params or {})
    message = ra_message(code, values, text or "")
    issued = values.get("issued_serial")
    if issued:
        message += " " + _(
            "The signing certificate %(serial)s had already been issued: revoke it (superseded) "
            "and submit the request again.",
            serial=issued,
        )
    return message


def show_errors(form: FlaskForm, error: GovpkiError, fields: dict[str, Field]) -> None:
    """Each problem next to the field it names (``csr.key`` → ``csr``), else above the form."""
    for problem in error.problems:
        name = (problem.field or "").split(".")[0].split("[")[0]
        target = fields.get(name)
        message = problem_message(problem)
        if target is not None:
            target.errors = [*target.errors, message]
        else:
            form.form_errors.append(message)


def _principal() -> Principal:
    return _user().principal


def _svc() -> Services:
    return services()


# ----- errors of this blueprint ------------------------------------------------------------


@bp.errorhandler(GovpkiError)
def _domain_error(error: GovpkiError) -> Response:
    return _error_page(STATUS[error.kind], error_message(error))


# a stale or foreign form: the portal's message (or "your session expired")
bp.register_error_handler(CSRFError, csrf_error)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_error: RequestEntityTooLarge) -> ResponseReturnValue:
    limit = (current_app.config.get("MAX_CONTENT_LENGTH") or 0) // 1024
    flash(_("The file is too large: uploads may be at most %(kb)s KB. Nothing was changed.", kb=limit), "warning")
    return redirect(request.path, code=303)


# ----- the dashboard -----------------------------------------------------------------------


@bp.get("")
@login_required
def dashboard() -> ResponseReturnValue:
    principal = _principal()
    svc = _svc()
    return render_template(
        "ra/dashboard.html",
        pending=svc.requests.list_requests(g.db, principal, state=RequestState.SUBMITTED.value, limit=20),
        expiring=svc.ra_portal.expiring(g.db, principal),
        activity=svc.ra_portal.recent_activity(g.db, principal),
        days=EXPIRING_DAYS,
        prefecture=_prefecture_name(principal),
        **_names(),
    )


def _prefecture_name(principal: Principal) -> str | None:
    if principal.prefecture is None:
        return None
    for p in _svc().region.prefectures:
        if p.code == principal.prefecture:
            return p.name
    return principal.prefecture


def _names() -> dict[str, Any]:
    return {
        "kinds": KINDS,
        "states": STATES,
        "actions": ACTIONS,
        "genders": GENDERS,
        "reasons": REASONS,
        "is_clerk": _principal().has(Role.RA_CLERK),
        "is_officer": _principal().has(Role.RA_OFFICER),
        "now": _svc().clock.now(),
        "recorded": recorded_message,
    }


# ----- officials ---------------------------------------------------------------------------


@bp.get("/officials")
@login_required
def officials() -> ResponseReturnValue:
    query = request.args.get("q", "")
    error = None
    found = []
    try:
        found = _svc().subscribers.list_officials(g.db, _principal(), search=query, limit=100)
    except InvalidError as exc:
        error = error_message(exc)
    return render_template("ra/officials.html", officials=found, q=query, error=error, **_names()), (
        422 if error else 200
    )


@bp.route("/officials/new", methods=["GET", "POST"])
@login_required
def official_new() -> ResponseReturnValue:
    form = OfficialForm()
    if form.validate_on_submit():
        try:
            official = _svc().subscribers.register_official(
                g.db,
                _principal(),
                OfficialInput(
                    name=form.name.data,
                    id_number=form.id_number.data,
                    department=form.department.data,
                    title=form.title.data,
                    phone=form.phone.data,
                    email=form.email.data,
                ),
            )
        except GovpkiError as error:
            show_errors(form, error, dict(form._fields))
            return render_template("ra/official_new.html", form=form, **_names()), STATUS[error.kind]
        flash(_("Official %(name)s has been registered.", name=official.name), "success")
        return redirect(url_for("ra_portal.official", official_id=official.id))
    return render_template("ra/official_new.html", form=form, **_names()), 422 if form.is_submitted() else 200


def _official_page(official_id: int, *, revealed: str | None = None) -> str:
    principal = _principal()
    svc = _svc()
    official = svc.subscribers.get_official(g.db, principal, official_id)
    return render_template(
        "ra/official.html",
        official=official,
        revealed=revealed,
        certificates=svc.ra_portal.certificates_of(g.db, principal, official_id=official.id),
        requests=svc.ra_portal.requests_of(g.db, principal, official_id=official.id),
        action=ActionForm(),
        password_sign_in=svc.official_signin.is_set_up(g.db, principal, official.id),
        **_names(),
    )


@bp.get("/officials/<int:official_id>")
@login_required
def official(official_id: int) -> ResponseReturnValue:
    return _official_page(official_id)


@bp.post("/officials/<int:official_id>/reveal")
@login_required
def reveal(official_id: int) -> ResponseReturnValue:
    """The full ID number, once, on this response (audited by the service)."""
    form = ActionForm()
    if not form.validate_on_submit():
        return _error_page(400, _("The form was out of date. Please try again."))
    number = _svc().subscribers.reveal_id_number(g.db, _principal(), official_id)
    return _official_page(official_id, revealed=number)


@bp.post("/officials/<int:official_id>/password-sign-in/reset")
@login_required
def reset_password_sign_in(official_id: int) -> ResponseReturnValue:
    """An RA officer of the official's prefecture clears the official's password sign-in
    (e.g. a lost phone); audited by the service. The official sets it up again with their
    certificate."""
    form = ActionForm()
    if not form.validate_on_submit():
        return _error_page(400, _("The form was out of date. Please try again."))
    _svc().official_signin.reset(g.db, _principal(), official_id)
    flash(_("The official's password sign-in has been reset."), "success")
    return redirect(url_for("ra_portal.official", official_id=official_id), code=303)


def _csr_from(form: CsrForm | ChangeForm) -> str | bytes | None:
    """The CSR of a new-certificate or renewal form: the chosen file, else the pasted text."""
    upload = form.csr_file.data
    if isinstance(upload, FileStorage) and upload.filename:
        data: bytes = upload.read(MAX_UPLOAD_TEXT + 1)
        return data
    text: str | None = form.csr_text.data
    return text or None


@bp.route("/officials/<int:official_id>/request", methods=["GET", "POST"])
@login_required
def official_request(official_id: int) -> ResponseReturnValue:
    """A new certificate (the dual pair) for the official, from the CSR the official brings."""
    principal = _principal()
    official = _svc().subscribers.get_official(g.db, principal, official_id)
    form = CsrForm()
    del form.profile
    if form.validate_on_submit():
        try:
            made = _svc().requests.submit(
                g.db,
                principal,
                RequestInput(kind="new", official_id=official.id, csr=_csr_from(form), note=form.note.data),
            )
        except GovpkiError as error:
            show_errors(form, error, {"csr": form.csr_text, "note": form.note})
            return render_template("ra/request_new.html", form=form, official=official, **_names()), STATUS[error.kind]
        flash(_("Request %(id)s has been submitted; an officer will decide it.", id=made.id), "success")
        return redirect(url_for("ra_portal.request_page", request_id=made.id))
    return render_template("ra/request_new.html", form=form, official=official, **_names()), (
        422 if form.is_submitted() else 200
    )


# ----- services ----------------------------------------------------------------------------


@bp.get("/services")
@login_required
def service_list() -> ResponseReturnValue:
    found = _svc().subscribers.list_services(g.db, _principal(), limit=200)
    return render_template("ra/services.html", services=found, **_names())


@bp.route("/services/new", methods=["GET", "POST"])
@login_required
def service_new() -> ResponseReturnValue:
    principal = _principal()
    form = ServiceForm()
    form.responsible_official_id.choices = [SelectChoice("", "—")] + [
        SelectChoice(str(o.id), f"{o.name} · {o.department} · {o.id_number_masked}")
        for o in _svc().subscribers.list_officials(g.db, principal, limit=1000)
    ]
    if form.validate_on_submit():
        try:
            # one of the choices (SelectField checks it), and not "—" (DataRequired): an official's id
            responsible = int(form.responsible_official_id.data)
            made = _svc().subscribers.register_service(
                g.db,
                principal,
                ServiceInput(
                    name=form.name.data,
                    department=form.department.data,
                    responsible_official_id=responsible,
                    host_names=(form.host_names.data or "").split(),
                    ip_addresses=(form.ip_addresses.data or "").split(),
                ),
            )
        except GovpkiError as error:
            show_errors(form, error, dict(form._fields))
            return render_template("ra/service_new.html", form=form, **_names()), STATUS[error.kind]
        flash(_("Service %(name)s has been registered.", name=made.name), "success")
        return redirect(url_for("ra_portal.service", service_id=made.id))
    return render_template("ra/service_new.html", form=form, **_names()), 422 if form.is_submitted() else 200


@bp.route("/services/<int:service_id>", methods=["GET", "POST"])
@login_required
def service(service_id: int) -> ResponseReturnValue:
    """The service, its certificates, and the form for a new certificate (CSR and profile)."""
    principal = _principal()
    svc = _svc()
    found = svc.subscribers.get_service(g.db, principal, service_id)
    form = CsrForm()
    status = 200
    if form.validate_on_submit():
        try:
            made = svc.requests.submit(
                g.db,
                principal,
                RequestInput(
                    kind="new",
                    service_id=found.id,
                    csr=_csr_from(form),
                    profile=form.profile.data,
                    note=form.note.data,
                ),
            )
        except GovpkiError as error:
            show_errors(form, error, {"csr": form.csr_text, "profile": form.profile, "note": form.note})
            status = STATUS[error.kind]
        else:
            flash(_("Request %(id)s has been submitted; an officer will decide it.", id=made.id), "success")
            return redirect(url_for("ra_portal.request_page", request_id=made.id))
    elif form.is_submitted():
        status = 422
    return render_template(
        "ra/service.html",
        service=found,
        form=form,
        certificates=svc.ra_portal.certificates_of(g.db, principal, service_id=found.id),
        requests=svc.ra_portal.requests_of(g.db, principal, service_id=found.id),
        **_names(),
    ), status


# ----- requests ----------------------------------------------------------------------------


@bp.get("/requests")
@login_required
def requests_list() -> ResponseReturnValue:
    state = request.args.get("state") or None
    found = _svc().requests.list_requests(g.db, _principal(), state=state, limit=200)
    return render_template("ra/requests.html", requests=found, state=state, **_names())


@bp.get("/approvals")
@login_required
def approvals() -> ResponseReturnValue:
    found = _svc().requests.list_requests(g.db, _principal(), state=RequestState.SUBMITTED.value, limit=200)
    return render_template("ra/requests.html", requests=found, state="submitted", queue=True, **_names())


def _request_page(request_id: int, *, form: DecisionForm | None = None, error: str | None = None) -> str:
    principal = _principal()
    svc = _svc()
    found = svc.requests.get_request(g.db, principal, request_id)
    return render_template(
        "ra/request.html",
        req=found,
        history=svc.requests.history(g.db, principal, request_id),
        form=form or DecisionForm(),
        error=error,
        handover=svc.ra_portal.handover_state(g.db, principal, request_id),
        action=ActionForm(),
        **_names(),
    )


@bp.get("/requests/<int:request_id>")
@login_required
def request_page(request_id: int) -> ResponseReturnValue:
    return _request_page(request_id)


@bp.post("/requests/<int:request_id>/approve")
@login_required
def approve(request_id: int) -> ResponseReturnValue:
    form = DecisionForm()
    if not form.validate_on_submit():
        return _request_page(request_id, form=form), 422
    try:
        done = _svc().ra_portal.approve(g.db, _principal(), request_id, comment=form.comment.data)
    except GovpkiError as error:
        g.db.rollback()
        return _request_page(request_id, form=form, error=error_message(error)), STATUS[error.kind]
    if done.pkcs12 is not None:
        flash(
            _(
                "Request %(id)s is approved and the certificates are issued. "
                "Print the PIN slip and hand over the encryption key to the official.",
                id=request_id,
            ),
            "success",
        )
    else:
        flash(_("Request %(id)s is approved and carried out.", id=request_id), "success")
    return redirect(url_for("ra_portal.request_page", request_id=request_id))


@bp.post("/requests/<int:request_id>/reject")
@login_required
def reject(request_id: int) -> ResponseReturnValue:
    form = DecisionForm()
    if not form.validate_on_submit():
        return _request_page(request_id, form=form), 422
    try:
        _svc().requests.reject(g.db, _principal(), request_id, comment=form.comment.data or "")
    except GovpkiError as error:
        if error.field == "comment":
            form.comment.errors = [_("Say why the request is rejected.")]
            return _request_page(request_id, form=form), 422
        return _request_page(request_id, form=form, error=error_message(error)), STATUS[error.kind]
    flash(_("Request %(id)s is rejected.", id=request_id), "success")
    return redirect(url_for("ra_portal.request_page", request_id=request_id))


@bp.post("/requests/<int:request_id>/pin-slip")
@login_required
def pin_slip(request_id: int) -> ResponseReturnValue:
    """The one-time password of the encryption key, shown once (printable)."""
    form = ActionForm()
    if not form.validate_on_submit():
        return _error_page(400, _("The form was out of date. Please try again."))
    handover = _svc().ra_portal.show_pin(g.db, _principal(), request_id)
    return render_template("ra/pin_slip.html", handover=handover, action=ActionForm(), **_names())


@bp.post("/requests/<int:request_id>/pkcs12")
@login_required
def pkcs12_download(request_id: int) -> ResponseReturnValue:
    """The encryption key (PKCS#12), once."""
    form = ActionForm()
    if not form.validate_on_submit():
        return _error_page(400, _("The form was out of date. Please try again."))
    found, data = _svc().ra_portal.take_pkcs12(g.db, _principal(), request_id)
    response = Response(data, mimetype="application/x-pkcs12")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="encryption-{found.encryption_serial or found.id}.p12"'
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# ----- certificates ------------------------------------------------------------------------


def _certificate_page(serial: str, *, form: ChangeForm | None = None, status: int = 200) -> ResponseReturnValue:
    view = _svc().ra_portal.certificate(g.db, _principal(), serial)
    cert = x509.load_der_x509_certificate(view.chain[0])
    return render_template(
        "ra/certificate.html",
        view=view,
        record=view.record,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        form=form or ChangeForm(),
        **_names(),
    ), status


@bp.get("/certificates/<serial>")
@login_required
def certificate(serial: str) -> ResponseReturnValue:
    return _certificate_page(serial)


@bp.get("/certificates/<serial>.<fmt>")
@login_required
def certificate_file(serial: str, fmt: str) -> ResponseReturnValue:
    """The certificate with its chain: PEM (all), DER (the certificate) or PKCS#7 (.p7b, all)."""
    view = _svc().ra_portal.certificate(g.db, _principal(), serial)
    certs = [x509.load_der_x509_certificate(der) for der in view.chain]
    if fmt == "pem":
        body = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        mimetype, ext = "application/x-pem-file", "pem"
    elif fmt == "der":
        body, mimetype, ext = view.chain[0], "application/pkix-cert", "cer"
    elif fmt == "p7b":
        body = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
        mimetype, ext = "application/pkcs7-mime", "p7b"
    else:
        return _error_page(404, _("Certificates are downloaded as .pem, .der or .p7b."))
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{view.record.serial}.{ext}"'
    return response


@bp.post("/certificates/<serial>/change")
@login_required
def certificate_change(serial: str) -> ResponseReturnValue:
    """A renewal, suspension, resumption or revocation request."""
    form = ChangeForm()
    if not form.validate_on_submit():
        return _certificate_page(serial, form=form, status=422)
    kind = form.kind.data
    try:
        made = _svc().requests.submit(
            g.db,
            _principal(),
            RequestInput(
                kind=kind,
                serial=serial,
                reason=form.reason.data if kind == "revoke" else None,
                csr=_csr_from(form) if kind == "renew" else None,
                note=form.note.data,
            ),
        )
    except GovpkiError as error:
        show_errors(form, error, {"csr": form.csr_text, "reason": form.reason, "note": form.note, "kind": form.kind})
        return _certificate_page(serial, form=form, status=STATUS[error.kind])
    flash(_("Request %(id)s has been submitted; an officer will decide it.", id=made.id), "success")
    return redirect(url_for("ra_portal.request_page", request_id=made.id))


# ----- bulk enrollment ---------------------------------------------------------------------


class ImportRunner:
    """Runs import jobs in a background thread of the web process, one at a time."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ra-import")
        self._futures: dict[int, Future[None]] = {}

    def start(self, principal: Principal, job_id: int) -> None:
        svc = self._services
        self._futures[job_id] = self._pool.submit(svc.ra_imports.run, svc.sessions, principal, job_id)

    def wait(self, job_id: int, timeout: float | None = None) -> None:
        future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout)


def _runner() -> ImportRunner:
    found: ImportRunner = current_app.extensions[RUNNER]
    return found


@bp.route("/imports", methods=["GET", "POST"])
@login_required
def imports() -> ResponseReturnValue:
    principal = _principal()
    form = ImportForm()
    status = 200
    if form.validate_on_submit():
        upload = form.file.data
        data = upload.read() if isinstance(upload, FileStorage) else b""
        filename = upload.filename if isinstance(upload, FileStorage) and upload.filename else "upload.csv"
        try:
            job = _svc().ra_imports.create(g.db, principal, filename, data)
        except GovpkiError as error:
            show_errors(form, error, {"file": form.file})
            status = STATUS[error.kind]
        else:
            # the thread starts once the unit of work has committed the job (_start_imports)
            g.ra_import_start = (principal, job.id)
            return redirect(url_for("ra_portal.import_page", job_id=job.id))
    elif form.is_submitted():
        status = 422
    return render_template(
        "ra/imports.html", form=form, jobs=_svc().ra_imports.list(g.db, principal), **_names()
    ), status


@bp.teardown_request
def _start_imports(error: BaseException | None) -> None:
    """After the response (and the unit of work's commit): start the upload's job. A job
    whose commit failed does not exist; the runner then finds nothing to claim."""
    pending = g.pop("ra_import_start", None)
    if pending is not None and error is None:
        _runner().start(*pending)


def _progress(job: ImportJob) -> dict[str, Any]:
    percent = 100 if job.total_rows == 0 else int(job.processed_rows * 100 / job.total_rows)
    return {
        "id": job.id,
        "state": job.state,
        "total": job.total_rows,
        "processed": job.processed_rows,
        "registered": job.registered,
        "duplicates": job.duplicates,
        "invalid": job.invalid,
        "percent": percent,
        "finished": job.state in (ImportState.DONE.value, ImportState.FAILED.value),
    }


@bp.get("/imports/<int:job_id>")
@login_required
def import_page(job_id: int) -> ResponseReturnValue:
    job = _svc().ra_imports.get(g.db, _principal(), job_id)
    problems = _svc().ra_imports.rows_not_registered(g.db, _principal(), job_id, limit=50)
    return render_template(
        "ra/import.html",
        job=job,
        progress=_progress(job),
        problems=problems,
        row_status=ROW_STATUS,
        fields=FIELDS,
        **_names(),
    )


@bp.get("/imports/<int:job_id>/progress.json")
@login_required
def import_progress(job_id: int) -> ResponseReturnValue:
    job = _svc().ra_imports.get(g.db, _principal(), job_id)
    response = current_app.json.response(_progress(job))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/imports/<int:job_id>/report.csv")
@login_required
def import_report(job_id: int) -> ResponseReturnValue:
    """Every row that was not registered, with its line number and the reason, in the
    request's language; UTF-8 with a BOM so that spreadsheets read it."""
    rows = _svc().ra_imports.rows_not_registered(g.db, _principal(), job_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([_("Line"), _("Status"), _("Full name"), _("Resident ID number"), _("Field"), _("Reason")])
    for row in rows:
        field = row.field or ""
        writer.writerow(
            [
                row.line,
                str(ROW_STATUS.get(row.status, row.status)),
                _csv_safe(row.name),
                row.id_number,
                str(FIELDS.get(field.split(".")[0], field)),
                recorded_message(row.reason, row.code, row.params),
            ]
        )
    response = Response("\ufeff" + out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="import-{job_id}-report.csv"'
    return response


def _csv_safe(value: str) -> str:
    """No formula injection when the report is opened in a spreadsheet."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def init_app(app: Flask, services: Services) -> None:
    app.extensions[RUNNER] = ImportRunner(services)
    app.register_blueprint(bp)
