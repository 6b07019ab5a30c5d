"""Certificate sign-in through a trusted TLS front (mutual TLS), for officials and for
registered applications.

In production a TLS front (nginx, ``deploy/nginx/govpki.conf``) asks the client for a
certificate and passes it on to the application in the header ``X-Client-Cert`` (the
PEM, URL-escaped: nginx's ``$ssl_client_escaped_cert``) with its own verdict in
``X-Client-Verify`` (``SUCCESS``, ``FAILED:<reason>`` or ``NONE``). Those headers are
believed only when the request comes from an address in ``GOVPKI_TRUSTED_PROXIES``;
from anywhere else they are ignored and never sign anyone in.

An official's certificate is checked by the validation service (path to our root,
revocation from our records, EKU clientAuth, key usage digitalSignature and the
official-signing certificate policy, each whether or not the extension is marked
critical) and mapped by issuer and serial to our certificate record (the very
certificate: same SHA-256) and, through the RA request that issued it, to the official.
The TLS handshake proved possession of the private key, so the session's authentication
method is ``swk`` (RFC 8176: proof of possession of a key; the front cannot tell a
software key from a smart card, so ``hwk`` is not claimed).

The official and RA tables belong to the ``ra`` and ``ca`` layers; this module reads them
through table clauses (as :mod:`authz.console` does) and gets the validation service
injected (``web/container.py``), so ``authz`` imports neither.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from authz.applications import application_principal
from authz.events import AuthzEvent
from authz.models import Application
from govpki import audit
from govpki.clock import Clock
from govpki.db import UTCDateTime
from govpki.errors import ForbiddenError, GovpkiError, InvalidError, UnauthenticatedError
from govpki.principal import Principal, PrincipalKind

CERT_HEADER = "X-Client-Cert"
VERIFY_HEADER = "X-Client-Verify"
MAX_CERT_HEADER = 16 * 1024
AMR_CERTIFICATE = ("swk",)
OFFICIAL_SIGNING_PROFILE = "official-signing"
SIGN_IN_KEY_USAGES = frozenset({"digital_signature"})

# who validates the certificate of a visitor who is not signed in yet (the validation service only reads)
CERTIFICATE_LOGIN = Principal(PrincipalKind.SYSTEM, "certificate-login", "certificate-login")

# stable codes of the refusals (the web page says each in words)
NO_CERTIFICATE = "authz.certlogin.no_certificate"
UNTRUSTED_PROXY = "authz.certlogin.untrusted_proxy"
MALFORMED = "authz.certlogin.malformed"
REVOKED = "authz.certlogin.revoked"
UNKNOWN_CA = "authz.certlogin.unknown_ca"
EXPIRED = "authz.certlogin.expired"
WRONG_PURPOSE = "authz.certlogin.wrong_purpose"
WRONG_POLICY = "authz.certlogin.wrong_policy"
INVALID = "authz.certlogin.invalid"
FRONT_REFUSED = "authz.certlogin.front_refused"
NOT_LINKED = "authz.certlogin.not_linked"

_VALIDATION_CODES = {
    "validation.revoked": REVOKED,
    "validation.untrusted": UNKNOWN_CA,
    "validation.bad_signature": UNKNOWN_CA,
    "validation.expired": EXPIRED,
    "validation.not_yet_valid": EXPIRED,
    "validation.wrong_purpose": WRONG_PURPOSE,
    "validation.wrong_policy": WRONG_POLICY,
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# tables of the ca and ra layers, read by name only
_certificates = table(
    "certificates",
    column("serial"),
    column("ca_id"),
    column("profile"),
    column("state"),
    column("fingerprint_sha256"),
    column("not_after", UTCDateTime()),
    column("revocation_reason"),
)
_cas = table("certificate_authorities", column("id"), column("cert_der"))
_requests = table(
    "ra_requests", column("official_id"), column("certificate_serial"), column("encryption_serial"), column("state")
)
_officials = table(
    "officials", column("id"), column("name"), column("prefecture_code"), column("department"), column("title")
)


def _status(state: str, revocation_reason: str | None, not_after: _dt.datetime | None, now: _dt.datetime) -> str:
    """A certificate record's status for sign-in: valid, revoked, on_hold, expired or not_issued."""
    if state not in ("issued", "approved"):
        return "not_issued"
    if revocation_reason == "certificateHold":
        return "on_hold"
    if revocation_reason is not None:
        return "revoked"
    if not_after is not None and not_after <= now:
        return "expired"
    return "valid"


def certificate_status(session: Session, serial: str, now: _dt.datetime) -> str:
    """The status of our record of the certificate ``serial`` (one read by the unique
    serial): valid, revoked, on_hold, expired or not_issued (also: no such record)."""
    row = session.execute(
        select(_certificates.c.state, _certificates.c.revocation_reason, _certificates.c.not_after).where(
            _certificates.c.serial == serial
        )
    ).first()
    if row is None:
        return "not_issued"
    return _status(row.state, row.revocation_reason, row.not_after, now)


# ----- the trusted front --------------------------------------------------------------


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """``GOVPKI_TRUSTED_PROXIES``: comma-separated addresses or networks (CIDR); empty: none.
    InvalidError naming the entry otherwise."""
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            detail = "host bits are set" if "host bits" in str(exc) else "not an IP address or network"
            raise InvalidError(
                f"{entry!r} is {detail}: give addresses or networks (CIDR), e.g. 127.0.0.1,10.1.2.0/24",
                field="trusted_proxies",
            ) from None
    return tuple(networks)


def is_trusted(remote: str | None, proxies: Sequence[Network]) -> bool:
    """True if the request's peer address lies in one of ``proxies``."""
    if not remote or not proxies:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in proxies)


@dataclass(frozen=True)
class PresentedCertificate:
    der: bytes
    serial: str  # lower-case hex, as in our records
    issuer: str  # RFC 4514
    issuer_der: bytes
    fingerprint_sha256: str


def read_certificate_header(value: str) -> PresentedCertificate:
    """The certificate of ``X-Client-Cert`` (URL-escaped PEM, or plain PEM)."""
    if len(value) > MAX_CERT_HEADER:
        raise InvalidError(f"is longer than {MAX_CERT_HEADER} characters", field="certificate", code=MALFORMED)
    text = unquote(value).strip().encode("ascii", "replace")
    try:
        cert = x509.load_pem_x509_certificate(text)
        der = cert.public_bytes(serialization.Encoding.DER)
        issuer = cert.issuer.rfc4514_string()
    except ValueError:
        raise InvalidError("is not a PEM certificate", field="certificate", code=MALFORMED) from None
    serial = format(cert.serial_number, "x") if cert.serial_number >= 0 else f"-{-cert.serial_number:x}"
    return PresentedCertificate(
        der=der,
        serial=serial,
        issuer=issuer,
        issuer_der=cert.issuer.public_bytes(),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
    )


# ----- what this module needs of the validation service --------------------------------


class ValidationAnswer(Protocol):
    @property
    def valid(self) -> bool: ...
    @property
    def code(self) -> str: ...
    @property
    def reason(self) -> str: ...


class ClientValidator(Protocol):
    """``ca.validation_service.ValidationService``: a TLS client certificate checked now."""

    def validate_client(
        self,
        session: Session,
        principal: Principal,
        *,
        certificate: bytes,
        key_usages: frozenset[str],
        policy_oids: frozenset[str],
    ) -> ValidationAnswer: ...


# ----- officials ----------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialIdentity:
    id: int
    name: str
    prefecture: str
    department: str
    title: str | None

    @property
    def principal(self) -> Principal:
        return official_principal(self)


def official_principal(official: OfficialIdentity) -> Principal:
    """An official as a principal: no staff role; prefecture, department and title as registered."""
    return Principal(
        PrincipalKind.OFFICIAL,
        str(official.id),
        str(official.id),
        frozenset(),
        prefecture=official.prefecture,
        department=official.department,
        title=official.title,
    )


@dataclass(frozen=True)
class CertificateSignIn:
    """A successful certificate sign-in: who, with which certificate, how."""

    official: OfficialIdentity
    serial: str
    issuer: str
    fingerprint_sha256: str
    amr: tuple[str, ...]
    at: _dt.datetime

    @property
    def principal(self) -> Principal:
        return self.official.principal


@dataclass(frozen=True)
class OfficialCertificate:
    serial: str
    profile: str
    not_after: _dt.datetime | None
    status: str  # valid, revoked, on_hold, expired, not_issued


class CertificateLoginService:
    """Certificate sign-in of officials and mutual TLS of applications (see the module)."""

    def __init__(
        self,
        clock: Clock,
        validator: ClientValidator,
        *,
        trusted_proxies: Sequence[Network] = (),
        official_policy_oids: frozenset[str] = frozenset(),
    ) -> None:
        self._clock = clock
        self._validator = validator
        self.trusted_proxies = tuple(trusted_proxies)
        self._official_policies = official_policy_oids

    def trusted(self, remote: str | None) -> bool:
        return is_trusted(remote, self.trusted_proxies)

    # ----- officials --------------------------------------------------------------------

    def sign_in(
        self,
        session: Session,
        *,
        source: str,
        cert_header: str | None,
        verify_header: str | None,
        peer: str | None = None,
    ) -> CertificateSignIn:
        """The official whose certificate the trusted front passed on, checked and mapped;
        audited ``authz:session:sign_in``. ``peer`` is the address the request came from
        (whether the headers are believed); ``source`` the client's address for the audit
        record (what the trusted front reports; ``peer`` when not given). Every refusal is audited
        ``authz:session:sign_in_fail`` (method certificate, the code) and raised:
        UnauthenticatedError (no or unusable certificate, untrusted sender) or
        ForbiddenError (a good certificate of no official)."""
        presented: PresentedCertificate | None = None
        try:
            sender = source if peer is None else peer
            if cert_header and not self.trusted(sender):
                raise UnauthenticatedError(
                    f"a client certificate header came from {sender}, which is not a trusted TLS front "
                    "(GOVPKI_TRUSTED_PROXIES); it was ignored",
                    field="certificate",
                    code=UNTRUSTED_PROXY,
                )
            if not cert_header or (verify_header or "").strip().upper() == "NONE":
                raise UnauthenticatedError(
                    "no client certificate was presented: sign in through the TLS front with your certificate",
                    field="certificate",
                    code=NO_CERTIFICATE,
                )
            try:
                presented = read_certificate_header(cert_header)
            except InvalidError as exc:
                raise UnauthenticatedError(
                    f"the client certificate {exc.reason}", field="certificate", code=MALFORMED
                ) from None
            self._check(session, presented, verify_header, self._official_policies)
            official = self._official_of(session, presented)
        except GovpkiError as exc:
            self._refused(session, source, presented, exc)
            raise
        result = CertificateSignIn(
            official=official,
            serial=presented.serial,
            issuer=presented.issuer,
            fingerprint_sha256=presented.fingerprint_sha256,
            amr=AMR_CERTIFICATE,
            at=self._clock.now(),
        )
        audit.record(
            session,
            result.principal,
            AuthzEvent.SIGN_IN.value,
            object_type="official",
            object_id=str(official.id),
            details={
                "method": "certificate",
                "source": source,
                "amr": list(result.amr),
                "serial": presented.serial,
                "issuer": presented.issuer,
                "prefecture": official.prefecture,
            },
            clock=self._clock,
        )
        return result

    def _check(
        self,
        session: Session,
        presented: PresentedCertificate,
        verify_header: str | None,
        policy_oids: frozenset[str],
    ) -> None:
        answer = self._validator.validate_client(
            session,
            CERTIFICATE_LOGIN,
            certificate=presented.der,
            key_usages=SIGN_IN_KEY_USAGES,
            policy_oids=policy_oids,
        )
        if not answer.valid:
            code = _VALIDATION_CODES.get(answer.code, INVALID)
            raise UnauthenticatedError(answer.reason, field="certificate", code=code)
        verdict = (verify_header or "").strip()
        if verdict.upper() != "SUCCESS":
            why = verdict.removeprefix("FAILED:") or "no verdict"
            raise UnauthenticatedError(
                f"the TLS front did not accept the certificate ({why[:200]})", field="certificate", code=FRONT_REFUSED
            )

    def _official_of(self, session: Session, presented: PresentedCertificate) -> OfficialIdentity:
        """Issuer and serial → our record of this very certificate → the official it was issued to."""
        row = session.execute(
            select(_certificates.c.fingerprint_sha256, _cas.c.cert_der)
            .select_from(_certificates.join(_cas, _cas.c.id == _certificates.c.ca_id))
            .where(_certificates.c.serial == presented.serial)
        ).first()
        same = (
            row is not None
            and row.fingerprint_sha256 == presented.fingerprint_sha256
            and x509.load_der_x509_certificate(row.cert_der).subject.public_bytes() == presented.issuer_der
        )
        official_id = None
        if same:
            official_id = session.scalar(
                select(_requests.c.official_id)
                .where(
                    _requests.c.certificate_serial == presented.serial,
                    _requests.c.official_id.is_not(None),
                    _requests.c.state == "completed",
                )
                .limit(1)
            )
        official = self.official(session, int(official_id)) if official_id is not None else None
        if official is None:
            raise ForbiddenError(
                f"the certificate (serial {presented.serial}, issuer {presented.issuer}) is valid but was not "
                "issued to a registered official",
                field="certificate",
                code=NOT_LINKED,
            )
        return official

    def _refused(
        self, session: Session, source: str, presented: PresentedCertificate | None, error: GovpkiError
    ) -> None:
        details: dict[str, object] = {"method": "certificate", "source": source, "code": error.code}
        details["reason"] = error.reason[:500]
        if presented is not None:
            details["issuer"] = presented.issuer
        audit.record(
            session,
            f"anonymous:{source}",
            AuthzEvent.SIGN_IN_FAIL.value,
            object_type="certificate",
            object_id=presented.serial if presented is not None else "-",
            outcome="failure",
            details=details,
            clock=self._clock,
        )

    def official(self, session: Session, official_id: int) -> OfficialIdentity | None:
        row = session.execute(select(_officials).where(_officials.c.id == official_id)).first()
        if row is None:
            return None
        return OfficialIdentity(
            id=int(row.id),
            name=str(row.name),
            prefecture=str(row.prefecture_code),
            department=str(row.department),
            title=row.title,
        )

    def certificates_of(self, session: Session, principal: Principal) -> list[OfficialCertificate]:
        """The signed-in official's own certificates (signing and encryption), newest first."""
        if principal.kind is not PrincipalKind.OFFICIAL or not principal.id.isdigit():
            raise ForbiddenError("only an official sees their own certificates")
        serials: set[str] = set()
        for signing, encryption in session.execute(
            select(_requests.c.certificate_serial, _requests.c.encryption_serial).where(
                _requests.c.official_id == int(principal.id)
            )
        ):
            serials.update(s for s in (signing, encryption) if s)
        if not serials:
            return []
        now = self._clock.now()
        rows = session.execute(
            select(
                _certificates.c.serial,
                _certificates.c.profile,
                _certificates.c.state,
                _certificates.c.not_after,
                _certificates.c.revocation_reason,
            ).where(_certificates.c.serial.in_(sorted(serials)))
        ).all()
        out = []
        for row in rows:
            status = _status(row.state, row.revocation_reason, row.not_after, now)
            out.append(OfficialCertificate(str(row.serial), str(row.profile), row.not_after, status))
        out.sort(key=lambda c: c.not_after or now, reverse=True)
        return out

    # ----- a certificate session, on every request -------------------------------------

    def session_problem(self, session: Session, *, official_id: int, serial: str) -> str | None:
        """Why a certificate session may not go on, or None: one read of the certificate
        record by its serial (unique) with the official's row — ``revoked``, ``on_hold``,
        ``expired``, ``not_issued`` (or no such record), or ``no_official`` (the official's
        record is gone: officials have no other enabled state)."""
        official = select(_officials.c.id).where(_officials.c.id == official_id).scalar_subquery()
        row = session.execute(
            select(
                _certificates.c.state,
                _certificates.c.revocation_reason,
                _certificates.c.not_after,
                official.label("official"),
            ).where(_certificates.c.serial == serial)
        ).first()
        if row is None:
            return "not_issued"
        status = _status(row.state, row.revocation_reason, row.not_after, self._clock.now())
        if status != "valid":
            return status
        return None if row.official is not None else "no_official"

    def end_session(
        self, session: Session, official: OfficialIdentity | None, *, official_id: int, serial: str, reason: str
    ) -> None:
        """Audit ``authz:session:end``: a certificate session ended because ``reason``
        (:meth:`session_problem`); the caller clears the session."""
        actor: Principal | str = official.principal if official is not None else f"official:{official_id}"
        audit.record(
            session,
            actor,
            AuthzEvent.SESSION_END.value,
            object_type="official",
            object_id=str(official_id),
            outcome="denied",
            details={"method": "certificate", "serial": serial, "reason": reason},
            clock=self._clock,
        )

    # ----- applications -----------------------------------------------------------------

    def authenticate_application(
        self, session: Session, *, source: str, cert_header: str | None, verify_header: str | None
    ) -> Principal:
        """Mutual TLS for an application: the certificate the trusted front passed on must be
        the one bound to an enabled application (SHA-256) and be valid for client
        authentication now (path, revocation, EKU clientAuth, digitalSignature)."""
        if not cert_header or not self.trusted(source):
            raise UnauthenticatedError(
                "client credentials are required: HTTP Basic, or a client certificate through the TLS front",
                field="authorization",
            )
        return self.application_of_certificate(session, cert_header, verify_header)

    def application_of_certificate(self, session: Session, cert_header: str, verify_header: str | None) -> Principal:
        """:meth:`authenticate_application` once the sender is known to be a trusted front
        (the decision server checks its peer itself, and re-checks what it cached)."""
        try:
            presented = read_certificate_header(cert_header)
        except InvalidError as exc:
            raise UnauthenticatedError(f"the client certificate {exc.reason}", field="authorization") from None
        app = session.scalar(select(Application).where(Application.cert_sha256 == presented.fingerprint_sha256))
        if app is None or app.disabled:
            raise UnauthenticatedError(
                "the client certificate is not bound to an enabled application", field="authorization"
            )
        try:
            self._check(session, presented, verify_header, frozenset())
        except UnauthenticatedError as exc:
            reason = f"the client certificate is not valid: {exc.reason}"
            raise UnauthenticatedError(reason, field="authorization") from None
        return application_principal(app)
