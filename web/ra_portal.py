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
from collections.abc import Callable
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

from govpki.errors import GovpkiError, InvalidError
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


_RA_REASONS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"is empty; enter the 18-character resident ID number"),
        lambda m: _("Enter the 18-character resident ID number."),
    ),
    (
        re.compile(r"has (\d+) characters; a resident ID number has 18"),
        lambda m: _("A resident ID number has 18 characters; this one has %(count)s.", count=m[1]),
    ),
    (
        re.compile(r"must be 17 digits followed by a digit or X"),
        lambda m: _("A resident ID number is 17 digits followed by a digit or X."),
    ),
    (
        re.compile(r"has the impossible birth date (\S+) \(characters 7-14\)"),
        lambda m: _("The birth date %(date)s in the ID number (characters 7-14) does not exist.", date=m[1]),
    ),
    (
        re.compile(r"has a birth date in the future \((\S+)\)"),
        lambda m: _("The birth date in the ID number (%(date)s) is in the future.", date=m[1]),
    ),
    (
        re.compile(r"has a birth date before (\d+) \((\S+)\)"),
        lambda m: _("The birth date in the ID number (%(date)s) is before %(year)s.", date=m[2], year=m[1]),
    ),
    (
        re.compile(r"has a wrong check character \(the 18th\): the number was mistyped"),
        lambda m: _("The check character (the 18th) is wrong: the ID number was mistyped."),
    ),
    (
        re.compile(r"this ID number is already registered, in (.+); an official is registered once in the network"),
        lambda m: _(
            "This ID number is already registered, in %(prefecture)s. An official is registered only once.",
            prefecture=m[1],
        ),
    ),
    (
        re.compile(r"the CSR's public key is (?:already|now) in use by certificate (\w+).*"),
        lambda m: _(
            "The key of this CSR is already in use by certificate %(serial)s. The subscriber must make a new key pair.",
            serial=m[1],
        ),
    ),
    (
        re.compile(r"the CSR's public key is already in request (\d+), which is still open"),
        lambda m: _("The key of this CSR is already in request %(id)s, which is still open.", id=m[1]),
    ),
    (
        re.compile(r"is not a valid PKCS#10 certificate request: .*|is a PEM '.*', not a 'CERTIFICATE REQUEST'"),
        lambda m: _("This is not a certificate request (PKCS#10 CSR, PEM or DER)."),
    ),
    (
        re.compile(r"is empty; send a PEM or DER PKCS#10 certificate request"),
        lambda m: _("The certificate request (CSR) is empty."),
    ),
    (
        re.compile(r"the subscriber's certificate request \(CSR\) is required"),
        lambda m: _("Choose the CSR file or paste the CSR."),
    ),
    (
        re.compile(r"you submitted this request: another officer of the prefecture must decide it"),
        lambda m: _("You submitted this request yourself: another officer of the prefecture must decide it."),
    ),
    (
        re.compile(r"only an RA officer \(审核\) of the request's prefecture approves or rejects it"),
        lambda m: _("Only an RA officer of the request's prefecture approves or rejects it."),
    ),
    (
        re.compile(r"only an RA clerk \(受理/录入\) registers subscribers and submits requests"),
        lambda m: _("Only an RA clerk registers subscribers and submits requests."),
    ),
    (
        re.compile(r"only an RA officer of the official's prefecture may see the full ID number"),
        lambda m: _("Only an RA officer of the official's prefecture may see the full ID number."),
    ),
    (
        re.compile(r"request (\d+) was (?:already decided|decided by someone else just now).*"),
        lambda m: _("Request %(id)s has already been decided.", id=m[1]),
    ),
    (
        re.compile(r"no (official|request|certificate|service|import) with (?:id|serial) (\S+)(?: in prefecture \d+)?"),
        lambda m: _("There is no %(what)s %(id)s in your prefecture.", what=str(_WHAT[m[1]]), id=m[2]),
    ),
    (re.compile(r"no official with this ID number"), lambda m: _("No official with this ID number.")),
    (
        re.compile(r"is required"),
        lambda m: _("This field is required."),
    ),
    (
        re.compile(r"is (\d+) characters; at most (\d+) are allowed"),
        lambda m: _("Too long: %(count)s characters, at most %(max)s.", count=m[1], max=m[2]),
    ),
    (
        re.compile(r"contains the control or unassigned character (U\+[0-9A-F]+)"),
        lambda m: _("Contains the control character %(char)s.", char=m[1]),
    ),
    (
        re.compile(r"must be a telephone number: .*"),
        lambda m: _("Enter a telephone number: 5 to 20 digits, with optional +, - and spaces."),
    ),
    (
        re.compile(r"is neither UTF-8 nor GB18030 text \(byte (\d+) cannot be read\); save it as CSV UTF-8"),
        lambda m: _(
            'The file is neither UTF-8 nor GB18030 text (byte %(byte)s cannot be read). Save it as "CSV UTF-8".',
            byte=m[1],
        ),
    ),
    (
        re.compile(r"lacks the required column\(s\) (.+); the header row must name .*"),
        lambda m: _(
            "The file lacks the required column(s) %(columns)s. The header row must name "
            "姓名/name, 身份证号/id_number and 部门/department.",
            columns=m[1],
        ),
    ),
    (re.compile(r"is empty; choose a CSV file of officials"), lambda m: _("Choose a CSV file of officials.")),
    (
        re.compile(r"has a header row but no officials"),
        lambda m: _("The file has a header row but no officials."),
    ),
    (re.compile(r"is not a text \(CSV\) file"), lambda m: _("This is not a text (CSV) file.")),
    (
        re.compile(r"has more than (\d+) rows; split it into smaller files"),
        lambda m: _("The file has more than %(count)s rows; split it into smaller files.", count=m[1]),
    ),
    (
        re.compile(r"the one-time password of this key was already shown.*"),
        lambda m: _(
            "The one-time password was already shown (or its time ran out). The key is kept in escrow: "
            "ask for key recovery."
        ),
    ),
    (
        re.compile(r"the encryption key was already handed over.*"),
        lambda m: _(
            "The encryption key was already handed over (or its time ran out). The key is kept in escrow: "
            "ask for key recovery."
        ),
    ),
    (
        re.compile(r"request (\d+) for certificate (\w+) is still open; decide it first"),
        lambda m: _("Request %(id)s for this certificate is still open; it must be decided first.", id=m[1]),
    ),
    (
        re.compile(r"certificate (\w+) is already (on hold|revoked).*"),
        lambda m: _("Certificate %(serial)s is already suspended or revoked.", serial=m[1]),
    ),
    (
        re.compile(r"certificate (\w+) is not on hold"),
        lambda m: _("Certificate %(serial)s is not suspended.", serial=m[1]),
    ),
    (
        re.compile(r"officials cannot be registered yet: the subscriber data key has not been made.*"),
        lambda m: _("Officials cannot be registered yet: a security administrator must set up the data key."),
    ),
]


def ra_message(reason: str) -> str:
    """A service's reason in the request's language."""
    for pattern, message in _RA_REASONS:
        match = pattern.fullmatch(reason)
        if match:
            return message(match)
    return field_message(reason)


def show_errors(form: FlaskForm, error: GovpkiError, fields: dict[str, Field]) -> None:
    """Each problem next to the field it names (``csr.key`` → ``csr``), else above the form."""
    for problem in error.problems:
        name = (problem.field or "").split(".")[0].split("[")[0]
        target = fields.get(name)
        message = ra_message(problem.reason)
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
    return _error_page(STATUS[error.kind], ra_message(error.reason))


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
        error = ra_message(exc.reason)
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


def _csr_from(form: CsrForm | ChangeForm) -> str | bytes | None:
    upload = form.csr_file.data
    if isinstance(upload, FileStorage) and upload.filename:
        data: bytes = upload.read(MAX_UPLOAD_TEXT + 1)
        return data
    text = getattr(form, "csr_text", None)
    return text.data if text is not None and text.data else None


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
            responsible = int(form.responsible_official_id.data or "0")
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
        return _request_page(request_id, form=form, error=ra_message(error.reason)), STATUS[error.kind]
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
        return _request_page(request_id, form=form, error=ra_message(error.reason)), STATUS[error.kind]
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
        show_errors(form, error, {"csr": form.csr_file, "reason": form.reason, "note": form.note, "kind": form.kind})
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
        message=ra_message,
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
                ra_message(row.reason),
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
