"""Certificate sign-in for officials (``/login/certificate``) and their own page (``/me``).

Thin views: the trusted TLS front (nginx, ``deploy/nginx/govpki.conf``) passes the client
certificate in ``X-Client-Cert``; :class:`authz.certlogin.CertificateLoginService` decides
(trusted sender, validation, mapping to the official) and audits. A refusal is a page in
the portal's layout (401, or 403 for a good certificate of no official) saying why and
what to do; its audit entry is kept (``g.commit_refusal``: the unit of work commits it).
"""

from __future__ import annotations

import datetime as _dt

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from flask_login import login_user, logout_user  # type: ignore[import-untyped, unused-ignore]

from authz import certlogin as codes
from authz.certlogin import CERT_HEADER, VERIFY_HEADER
from govpki.clock import UTC
from govpki.errors import ForbiddenError, UnauthenticatedError
from web.client_address import client_address
from web.problems import STATUS
from web.ui import (
    OFFICIAL_USER,
    SESSION_AMR,
    SESSION_AUTH_TIME,
    SIGNED_IN_COOKIE,
    OfficialUser,
    _cookie_options,
    _local_path,
    _unauthorized,
    keep_refusal,
    services,
    signed_in_official,
)

bp = Blueprint("certlogin", __name__)

# session keys beside amr and auth_time: the certificate used (for the OIDC provider's claims)
SESSION_CERT_SERIAL = "cert_serial"
SESSION_CERT_ISSUER = "cert_issuer"

REFUSALS = {
    codes.NO_CERTIFICATE: _l(
        "No client certificate was presented. Insert your certificate (smart card or USB key) and open "
        "this page through the secure address of the portal."
    ),
    codes.UNTRUSTED_PROXY: _l(
        "A client certificate arrived from an address that is not the trusted TLS front, so it was ignored. "
        "Open this page through the secure address of the portal."
    ),
    codes.MALFORMED: _l("The client certificate could not be read."),
    codes.REVOKED: _l(
        "Your certificate has been revoked or suspended. Contact the registration office of your prefecture."
    ),
    codes.UNKNOWN_CA: _l("The certificate was not issued by a certificate authority trusted here."),
    codes.EXPIRED: _l(
        "Your certificate has expired or is not valid yet. Ask the registration office of your prefecture to renew it."
    ),
    codes.WRONG_PURPOSE: _l(
        "This certificate may not be used for sign-in: its key usage or extended key usage does not allow it."
    ),
    codes.WRONG_POLICY: _l("This certificate does not carry the certificate policy of officials' certificates."),
    codes.INVALID: _l("The certificate is not valid."),
    codes.FRONT_REFUSED: _l("The TLS front did not accept the certificate."),
    codes.NOT_LINKED: _l("The certificate is valid, but it was not issued to a registered official."),
}
CERT_STATUS = {
    "valid": _l("valid"),
    "revoked": _l("revoked"),
    "on_hold": _l("suspended"),
    "expired": _l("expired"),
    "not_issued": _l("not issued"),
}


SESSION_ENDED = {
    "revoked": _l(
        "Your session has ended: the certificate you signed in with has been revoked or suspended. "
        "Contact the registration office of your prefecture."
    ),
    "expired": _l(
        "Your session has ended: the certificate you signed in with has expired. "
        "Ask the registration office of your prefecture to renew it."
    ),
    "other": _l("Your session has ended: the certificate you signed in with may no longer be used to sign in."),
}


@bp.before_app_request
def _certificate_still_good() -> ResponseReturnValue | None:
    """A certificate session (amr ``swk``) goes on only while the certificate it was signed
    in with is still issued, neither revoked, on hold nor expired, and the official still
    registered: one read per request (none for password sessions). Otherwise the session
    ends (audited ``authz:session:end`` with the reason) and the user is sent to the
    sign-in page with a message saying why."""
    if session.get(SESSION_AMR) != list(codes.AMR_CERTIFICATE) or "db" not in g:
        return None
    if request.endpoint == "certlogin.login_certificate":
        return None  # a new certificate sign-in replaces this session anyway
    serial = session.get(SESSION_CERT_SERIAL)
    user_id = session.get("_user_id")
    official = user_id.removeprefix(OFFICIAL_USER) if isinstance(user_id, str) else ""
    official_id = int(official) if user_id != official and official.isdigit() else None
    svc = services()
    if isinstance(serial, str) and official_id is not None:
        problem = svc.certlogin.session_problem(g.db, official_id=official_id, serial=serial)
        if problem is None:
            return None
        svc.certlogin.end_session(
            g.db, svc.certlogin.official(g.db, official_id), official_id=official_id, serial=serial, reason=problem
        )
        key = "revoked" if problem in ("revoked", "on_hold") else "expired" if problem == "expired" else "other"
    else:
        key = "other"  # a certificate session without its certificate or official: not ours to keep
    logout_user()
    session.clear()
    flash(str(SESSION_ENDED[key]), "warning")
    response = redirect(url_for("ui.login"))
    response.delete_cookie(SIGNED_IN_COOKIE, **_cookie_options())
    return response


@bp.get("/login/certificate")
def login_certificate() -> ResponseReturnValue:
    svc = services()
    try:
        result = svc.certlogin.sign_in(
            g.db,
            source=client_address(),
            peer=request.remote_addr or "unknown",
            cert_header=request.headers.get(CERT_HEADER),
            verify_header=request.headers.get(VERIFY_HEADER),
        )
    except (UnauthenticatedError, ForbiddenError) as error:
        keep_refusal()  # keep the refusal's audit entry
        status = STATUS[error.kind]
        message = REFUSALS.get(error.code, REFUSALS[codes.INVALID])
        page = render_template("certlogin/refused.html", message=message, reason=error.reason, code=error.code)
        return page, status
    session.clear()  # a fresh session (and CSRF token) for the signed-in official
    login_user(OfficialUser(result.official), fresh=True)
    session.permanent = True
    session[SESSION_AMR] = list(result.amr)
    session[SESSION_AUTH_TIME] = int(result.at.timestamp())
    session[SESSION_CERT_SERIAL] = result.serial
    session[SESSION_CERT_ISSUER] = result.issuer
    response = redirect(_local_path(request.args.get("next")) or url_for("certlogin.me"))
    response.set_cookie(SIGNED_IN_COOKIE, "1", **_cookie_options())
    return response


@bp.get("/me")
def me() -> ResponseReturnValue:
    """The signed-in official: who they are (as registered) and their certificates."""
    user = signed_in_official()
    if user is None:
        return _unauthorized()
    svc = services()
    certificates = svc.certlogin.certificates_of(g.db, user.principal)
    region = {p.code: p for p in svc.region.prefectures}
    auth_time = session.get(SESSION_AUTH_TIME)
    return render_template(
        "certlogin/me.html",
        person=user.official,
        prefecture=region.get(user.official.prefecture),
        certificates=certificates,
        cert_status=CERT_STATUS,
        signed_in_with=session.get(SESSION_CERT_SERIAL),
        auth_time=_dt.datetime.fromtimestamp(auth_time, UTC) if isinstance(auth_time, int) else None,
    )
