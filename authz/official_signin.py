"""Officials' second way in: a sign-in name, a password and a TOTP code.

Officials sign in with their certificate (:mod:`authz.certlogin`). An official whose key is
lost or not at hand needs another way in, so an official signed in *with their certificate*
(the strong factor vouches for the set-up) may set a sign-in name and a password and enrol
an authenticator app; a confirmed code turns the second way on. Sign-in then works like
staff sign-in (:class:`authz.services.AccountService`): the password, then a code; the
same lock-out, keyed by the name — staff user names and officials' sign-in names are one
namespace (each unique across both), so one name has one failure count and one lock —
and the same audit records. The session is the official's principal as with certificate
sign-in, with authentication methods ``pwd`` and ``otp`` and no certificate.

Key compromise: a sign-in set up in a session of a certificate that was later revoked
with reason ``keyCompromise`` may have been set up by whoever held the stolen key, so it
no longer works (refused, audited) until the official sets it up again with a good
certificate. Other revocations (and revoking all of an official's certificates for other
reasons) keep the fallback: it is what the official signs in with until the new
certificate arrives; an RA officer of the official's prefecture can reset it (a lost phone).
"""

from __future__ import annotations

import datetime as _dt
import hmac
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import column, delete, select, table
from sqlalchemy.orm import Session

from authz import totp
from authz.certlogin import CertificateLoginService, OfficialIdentity, certificate_status
from authz.events import AuthzEvent
from authz.models import Account, SignInFailure
from authz.official_models import OfficialCredential
from authz.services import _USERNAME as USERNAME_RULE
from authz.services import WRONG_CREDENTIALS, WRONG_TOTP, AccountService, check_new_password
from govpki import audit
from govpki.clock import Clock
from govpki.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from govpki.principal import Principal, PrincipalKind, Role

AMR_PASSWORD_TOTP = ("pwd", "otp")
SET_UP_AGAIN = "authz.official.set_up_again"
NOT_SET_UP = "authz.official.not_set_up"
OFFICIAL_NOT_FOUND = "authz.official.not_found"
RESET_FORBIDDEN = "authz.official.reset_forbidden"
NOT_OFFICIAL = "authz.official.not_official"
CERTIFICATE_SESSION_NEEDED = "authz.official.certificate_session_needed"
ALREADY_SET_UP = "authz.official.already_set_up"
NAME_TAKEN = "authz.official.name_taken"
WRONG_ENROL_CODE = "authz.official.wrong_enrol_code"
WRONG_CURRENT_PASSWORD = "authz.official.wrong_current_password"
SAME_PASSWORD = "authz.official.same_password"
RA_STAFF_ONLY = "authz.official.ra_staff_only"
PASSWORD_FIRST = "authz.official.password_first"
KEY_COMPROMISE = "keyCompromise"

_hasher = PasswordHasher()  # argon2id, the library's recommended parameters (as staff passwords)
_certificates = table("certificates", column("serial"), column("revocation_reason"))


def password_sign_in_problem(session: Session, *, official_id: int, signed_in_at: _dt.datetime) -> str | None:
    """Why what an official's password sign-in at ``signed_in_at`` gave (the portal session,
    and the OIDC tokens granted on it) may not go on, or None (one read): ``reset`` — the
    sign-in is off (turned off by the official, reset by the RA) or was set up anew since;
    ``compromised`` — the certificate it was set up with has been revoked for key compromise
    (whoever held that key could have set it up)."""
    row = session.execute(
        select(OfficialCredential.enabled_at, _certificates.c.revocation_reason)
        .outerjoin(_certificates, _certificates.c.serial == OfficialCredential.set_up_with)
        .where(OfficialCredential.official_id == official_id)
    ).first()
    if row is None or row.enabled_at is None or row.enabled_at > signed_in_at:
        return "reset"
    if row.revocation_reason == KEY_COMPROMISE:
        return "compromised"
    return None


@dataclass(frozen=True)
class OfficialSignInStatus:
    """What the official's own page shows: the name, whether it is on, since when."""

    login_name: str
    enabled: bool
    enabled_at: _dt.datetime | None
    updated_at: _dt.datetime


class OfficialSignInService:
    """Set-up, sign-in, change, turn-off and reset of officials' password + TOTP sign-in."""

    def __init__(
        self,
        clock: Clock,
        accounts: AccountService,
        officials: CertificateLoginService,
        sealer: totp.TotpSealer | None,
    ) -> None:
        self._clock = clock
        self._accounts = accounts  # the shared lock-out (failure counting and locks by name)
        self._officials = officials
        self._sealer = sealer

    def _require_sealer(self) -> totp.TotpSealer:
        if self._sealer is None:
            raise UnavailableError("TOTP is not set up in this service", field="code")
        return self._sealer

    # ----- the official's own -----------------------------------------------------------

    @staticmethod
    def _own_id(principal: Principal) -> int:
        if principal.kind is not PrincipalKind.OFFICIAL or not principal.id.isdigit():
            raise ForbiddenError("only an official manages their own password sign-in", code=NOT_OFFICIAL)
        return int(principal.id)

    def _credential(self, session: Session, official_id: int) -> OfficialCredential | None:
        return session.scalar(select(OfficialCredential).where(OfficialCredential.official_id == official_id))

    def status(self, session: Session, principal: Principal) -> OfficialSignInStatus | None:
        """The signed-in official's password sign-in, if one is set up (or being set up)."""
        found = self._credential(session, self._own_id(principal))
        if found is None:
            return None
        return OfficialSignInStatus(found.login_name, found.enabled_at is not None, found.enabled_at, found.updated_at)

    def _require_certificate_session(self, session: Session, principal: Principal, serial: str | None) -> str:
        if not serial or certificate_status(session, serial, self._clock.now()) != "valid":
            raise ForbiddenError(
                "set up password sign-in while signed in with your certificate",
                field="certificate",
                code=CERTIFICATE_SESSION_NEEDED,
            )
        return serial

    def _audit(
        self,
        session: Session,
        principal: Principal,
        event: AuthzEvent,
        official_id: int,
        details: dict[str, object],
        outcome: str = "success",
    ) -> None:
        audit.record(
            session,
            principal,
            event.value,
            object_type="official",
            object_id=str(official_id),
            outcome=outcome,
            details=details,
            clock=self._clock,
        )

    def set_up(
        self,
        session: Session,
        principal: Principal,
        *,
        certificate_serial: str | None,
        login_name: str,
        password: str,
    ) -> OfficialCredential:
        """Step one, in a certificate session (``certificate_serial``: the certificate the
        session was signed in with, still valid): the sign-in name (staff user name rules;
        unique across staff user names and officials' names), the password (staff password
        rules) and a new TOTP secret (sealed). Not usable until :meth:`confirm`. Starting
        again before confirming replaces the pending set-up; an enabled one must be turned
        off first."""
        official_id = self._own_id(principal)
        serial = self._require_certificate_session(session, principal, certificate_serial)
        existing = self._credential(session, official_id)
        if existing is not None and existing.enabled_at is not None:
            raise ConflictError(
                "password sign-in is already set up; turn it off first", field="username", code=ALREADY_SET_UP
            )
        if not USERNAME_RULE.match(login_name):
            raise InvalidError(
                "must be 3-64 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter",
                field="username",
            )
        taken = session.scalar(select(Account.id).where(Account.username == login_name)) is not None or (
            session.scalar(
                select(OfficialCredential.id).where(
                    OfficialCredential.login_name == login_name, OfficialCredential.official_id != official_id
                )
            )
            is not None
        )
        if taken:
            raise ConflictError(
                f"user name {login_name!r} is taken", field="username", code=NAME_TAKEN, params={"name": login_name}
            )
        check_new_password(password, login_name)
        sealer = self._require_sealer()
        now = self._clock.now()
        key = sealer.current_key(session, principal, now=now)
        sealed = sealer.seal_official(official_id, key, totp.new_secret())
        credential = existing or OfficialCredential(official_id=official_id, created_at=now)
        credential.login_name = login_name
        credential.password_hash = _hasher.hash(password)
        credential.totp_key_id = key.id
        credential.totp_secret = sealed
        credential.totp_last_step = None
        credential.set_up_with = serial
        credential.updated_at = now
        credential.enabled_at = None
        session.add(credential)
        session.flush()
        self._audit(
            session,
            principal,
            AuthzEvent.OFFICIAL_SIGNIN_SET_UP,
            official_id,
            {"login_name": login_name, "certificate": serial},
        )
        return credential

    def _pending(self, session: Session, principal: Principal) -> OfficialCredential:
        credential = self._credential(session, self._own_id(principal))
        if credential is None:
            raise NotFoundError("choose a sign-in name and a password first", field="username", code=NOT_SET_UP)
        if credential.enabled_at is not None:
            raise ConflictError(
                "password sign-in is already set up; turn it off first", field="code", code=ALREADY_SET_UP
            )
        return credential

    def totp_enrolment(self, session: Session, principal: Principal) -> tuple[str, str]:
        """The pending set-up's TOTP secret and its otpauth:// URI (the QR code)."""
        credential = self._pending(session, principal)
        secret = self._require_sealer().open_official(
            session, credential.official_id, credential.totp_key_id, credential.totp_secret
        )
        return secret, totp.provisioning_uri(secret, credential.login_name, self._accounts.settings.totp_issuer)

    def confirm(
        self, session: Session, principal: Principal, *, certificate_serial: str | None, code: str
    ) -> OfficialCredential:
        """Step two: a code of the new secret turns the sign-in on; audited either way."""
        self._require_certificate_session(session, principal, certificate_serial)
        credential = self._pending(session, principal)
        cleaned = totp.normalise_code(code)
        secret = self._require_sealer().open_official(
            session, credential.official_id, credential.totp_key_id, credential.totp_secret
        )
        step = totp.matching_step(secret, cleaned, self._clock.now(), None)
        details: dict[str, object] = {"login_name": credential.login_name}
        if step is None:
            self._audit(
                session,
                principal,
                AuthzEvent.OFFICIAL_SIGNIN_ENABLE,
                credential.official_id,
                {**details, "reason": "wrong code"},
                outcome="failure",
            )
            raise InvalidError("is not the code your authenticator app shows now", field="code", code=WRONG_ENROL_CODE)
        now = self._clock.now()
        credential.enabled_at = now
        credential.updated_at = now
        credential.totp_last_step = step
        self._audit(session, principal, AuthzEvent.OFFICIAL_SIGNIN_ENABLE, credential.official_id, details)
        return credential

    def change_password(self, session: Session, principal: Principal, *, current: str, new: str) -> None:
        """The official's new password (the current one first), in any of their sessions."""
        credential = self._credential(session, self._own_id(principal))
        if credential is None or credential.enabled_at is None:
            raise NotFoundError("password sign-in is not set up", field="current_password", code=NOT_SET_UP)
        try:
            _hasher.verify(credential.password_hash, current)
        except (VerificationError, InvalidHashError):
            raise InvalidError(
                "is not your current password", field="current_password", code=WRONG_CURRENT_PASSWORD
            ) from None
        check_new_password(new, credential.login_name)
        if hmac.compare_digest(current, new):
            raise InvalidError("must differ from the current password", field="new_password", code=SAME_PASSWORD)
        credential.password_hash = _hasher.hash(new)
        credential.updated_at = self._clock.now()
        self._audit(
            session,
            principal,
            AuthzEvent.OFFICIAL_PASSWORD_CHANGE,
            credential.official_id,
            {"login_name": credential.login_name},
        )

    def disable(self, session: Session, principal: Principal) -> None:
        """The official turns their password sign-in off (or drops a pending set-up)."""
        credential = self._credential(session, self._own_id(principal))
        if credential is None:
            raise NotFoundError("password sign-in is not set up", field="username", code=NOT_SET_UP)
        self._remove(session, principal, credential, AuthzEvent.OFFICIAL_SIGNIN_DISABLE, {})

    def _remove(
        self,
        session: Session,
        principal: Principal,
        credential: OfficialCredential,
        event: AuthzEvent,
        details: dict[str, object],
    ) -> None:
        name, official_id = credential.login_name, credential.official_id
        session.delete(credential)
        session.flush()
        self._audit(session, principal, event, official_id, {"login_name": name, **details})

    # ----- the RA --------------------------------------------------------------------------

    def reset(self, session: Session, principal: Principal, official_id: int) -> str:
        """An RA officer of the official's prefecture clears the official's password sign-in
        (a lost phone, a password told to someone): the official sets it up again with their
        certificate. Another prefecture's official is not found. Returns the name it had."""
        if not principal.has(Role.RA_OFFICER) or not principal.prefecture:
            raise ForbiddenError(
                "only an RA officer of the official's prefecture may reset their password sign-in",
                field="role",
                code=RESET_FORBIDDEN,
            )
        official = self._officials.official(session, official_id)
        if official is None or official.prefecture != principal.prefecture:
            raise NotFoundError(
                f"no official with id {official_id} in prefecture {principal.prefecture}",
                field="official_id",
                code=OFFICIAL_NOT_FOUND,
                params={"id": official_id},
            )
        credential = self._credential(session, official_id)
        if credential is None:
            raise ConflictError("this official has no password sign-in to reset", field="official_id", code=NOT_SET_UP)
        name = credential.login_name
        self._remove(
            session, principal, credential, AuthzEvent.OFFICIAL_SIGNIN_RESET, {"prefecture": official.prefecture}
        )
        return name

    def is_set_up(self, session: Session, principal: Principal, official_id: int) -> bool:
        """For the RA officer's page: whether the official has a password sign-in (set up or pending)."""
        if not (principal.has(Role.RA_OFFICER) or principal.has(Role.RA_CLERK)):
            raise ForbiddenError("only RA staff see officials' sign-in", field="role", code=RA_STAFF_ONLY)
        return self._credential(session, official_id) is not None

    # ----- sign-in -------------------------------------------------------------------------

    def has_name(self, session: Session, name: str) -> bool:
        """Whether ``name`` is an official's sign-in name (the portal's sign-in asks this
        service, not the staff accounts, then)."""
        found = session.scalar(select(OfficialCredential.id).where(OfficialCredential.login_name == name[:64]))
        return found is not None

    def sign_in_password(self, session: Session, *, username: str, password: str, source: str) -> int:
        """The first factor (as staff: locked names refused before the password is looked
        at; a failure audited and counted, the same words whatever went wrong). Returns the
        credential's id for :meth:`sign_in_totp`."""
        accounts = self._accounts
        accounts._take_turn(session, username)
        accounts._refuse_if_locked(session, username, source, "password")
        credential = session.scalar(select(OfficialCredential).where(OfficialCredential.login_name == username))
        official: OfficialIdentity | None = None
        if credential is not None and credential.enabled_at is not None:
            official = self._officials.official(session, credential.official_id)
        ok = False
        if credential is not None and official is not None:
            try:
                ok = _hasher.verify(credential.password_hash, password)
            except (VerificationError, InvalidHashError):
                ok = False
        else:
            _hasher.hash(password)  # same cost for names that cannot sign in
        if not ok or credential is None or official is None:
            if accounts._failed(session, username, source, "password"):
                raise accounts._locked_error()
            raise UnauthenticatedError("wrong user name or password", field="password", code=WRONG_CREDENTIALS)
        self._refuse_if_compromised(session, credential, official, source)
        return credential.id

    def _refuse_if_compromised(
        self, session: Session, credential: OfficialCredential, official: OfficialIdentity, source: str
    ) -> None:
        reason = session.scalar(
            select(_certificates.c.revocation_reason).where(_certificates.c.serial == credential.set_up_with)
        )
        if reason != KEY_COMPROMISE:
            return
        audit.record(
            session,
            official.principal,
            AuthzEvent.SIGN_IN_FAIL.value,
            object_type="official",
            object_id=str(official.id),
            outcome="failure",
            details={"method": "password", "source": source, "reason": "set-up certificate key compromise"},
            clock=self._clock,
        )
        raise UnauthenticatedError(
            "this password sign-in was set up with a certificate that has since been revoked for key compromise; "
            "set it up again while signed in with your new certificate",
            field="username",
            code=SET_UP_AGAIN,
        )

    def sign_in_totp(self, session: Session, credential_id: int, *, code: str, source: str) -> OfficialIdentity:
        """The second factor: a code for now ± one step, of a step not used before. Failures
        count towards the name's lock. Audited ``authz:session:sign_in`` (amr pwd, otp)."""
        accounts = self._accounts
        credential = session.get(OfficialCredential, credential_id)
        official = None
        if credential is not None and credential.enabled_at is not None:
            official = self._officials.official(session, credential.official_id)
        if credential is None or official is None:
            raise UnauthenticatedError("sign in with your password first", field="username", code=PASSWORD_FIRST)
        accounts._take_turn(session, credential.login_name)
        accounts._refuse_if_locked(session, credential.login_name, source, "totp")
        cleaned = totp.normalise_code(code)
        secret = self._require_sealer().open_official(
            session, credential.official_id, credential.totp_key_id, credential.totp_secret
        )
        step = totp.matching_step(secret, cleaned, self._clock.now(), credential.totp_last_step)
        if step is None:
            if accounts._failed(session, credential.login_name, source, "totp"):
                raise accounts._locked_error()
            raise UnauthenticatedError("wrong or already used code", field="code", code=WRONG_TOTP)
        credential.totp_last_step = step
        session.execute(delete(SignInFailure).where(SignInFailure.username == credential.login_name))
        audit.record(
            session,
            official.principal,
            AuthzEvent.SIGN_IN.value,
            object_type="official",
            object_id=str(official.id),
            details={
                "method": "password",
                "source": source,
                "amr": list(AMR_PASSWORD_TOTP),
                "login_name": credential.login_name,
                "prefecture": official.prefecture,
            },
            clock=self._clock,
        )
        return official

    def session_problem(self, session: Session, *, official_id: int, signed_in_at: _dt.datetime) -> str | None:
        """Why an official's password session (signed in at ``signed_in_at``) may not go on,
        or None (one read per request); see :func:`password_sign_in_problem`."""
        return password_sign_in_problem(session, official_id=official_id, signed_in_at=signed_in_at)
