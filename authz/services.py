"""Accounts (argon2id passwords) and operator API tokens."""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from authz import totp
from authz.events import AuthzEvent
from authz.models import Account, ApiToken, SignInFailure, SignInLock, TotpKey
from authz.official_models import OfficialCredential
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

TOKEN_PREFIX = "gpk_"
_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{2,63}$")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 12
TOKEN_ROLES = frozenset({Role.CA_OPERATOR})

RA_ROLES = frozenset({Role.RA_CLERK, Role.RA_OFFICER})  # each in exactly one prefecture
SEPARATED_ROLES = frozenset({Role.SYSTEM_ADMIN, Role.SECURITY_ADMIN, Role.SECURITY_AUDITOR})  # 三员分立
NOT_ACCOUNT_ADMIN = "authz.not_account_admin"
OWN_ACCOUNT = "authz.own_account"
SEPARATED = "authz.separated_roles"


def account_administrator(role: Role) -> Role:
    """三员分立: who administers accounts of ``role`` (creates them, unlocks them, resets
    their authenticator, changes their role). RA staff: a security administrator (issue 5);
    every other account, the three administrators' own among them: a system administrator.
    SYSTEM (the operator at the machine: ``govpki staff``, start-up) may do all."""
    return Role.SECURITY_ADMIN if role in RA_ROLES else Role.SYSTEM_ADMIN


def _require_account_admin(principal: Principal, role: Role, verb: str) -> None:
    """Refuse unless ``principal`` administers accounts of ``role`` (:func:`account_administrator`)."""
    if principal.kind is PrincipalKind.SYSTEM:
        return
    admin = account_administrator(role)
    if principal.kind is PrincipalKind.ACCOUNT and principal.has(admin):
        return
    if admin is Role.SECURITY_ADMIN:
        reason = f"only a security administrator may {verb} RA staff accounts"
    else:
        reason = f"only a system administrator may {verb} {role.value} accounts"
    raise ForbiddenError(reason, field="username", code=NOT_ACCOUNT_ADMIN, params={"role": role.value})


def _refuse_own_account(principal: Principal, account: Account, verb: str) -> None:
    if principal.kind is PrincipalKind.ACCOUNT and principal.id == str(account.id):
        raise ForbiddenError(f"you may not {verb} your own account", field="username", code=OWN_ACCOUNT)


_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_prefectures = sa.table("prefectures", sa.column("code"))  # the RA layer's table; authz only looks codes up


def _check_prefecture(session: Session, role: Role, prefecture: str | None) -> None:
    """RA staff name the one prefecture (area code) they work in, which must exist; others name none."""
    if role in RA_ROLES:
        if not prefecture:
            raise InvalidError("is required for RA staff (ra_clerk, ra_officer)", field="prefecture")
        if session.scalar(select(_prefectures.c.code).where(_prefectures.c.code == prefecture)) is None:
            raise InvalidError(f"there is no prefecture with area code {prefecture[:12]!r}", field="prefecture")
    elif prefecture:
        raise InvalidError("only RA staff (ra_clerk, ra_officer) belong to a prefecture", field="prefecture")


def _official_name(session: Session, username: str) -> bool:
    """Whether an official's password sign-in (authz/official_signin.py) uses ``username``:
    staff user names and officials' sign-in names are one namespace."""
    return session.scalar(select(OfficialCredential.id).where(OfficialCredential.login_name == username)) is not None


WRONG_CREDENTIALS = "authz.wrong_credentials"
LOCKED = "authz.locked"
WRONG_TOTP = "authz.wrong_totp"
# the seed of hashtextextended() for the advisory lock that takes sign-in attempts of one name in turn (PostgreSQL)
SIGN_IN_LOCK_SEED = 0x676F76706B69


def account_principal(account: Account) -> Principal:
    return Principal(
        PrincipalKind.ACCOUNT,
        str(account.id),
        account.username,
        frozenset({Role(account.role)}),
        prefecture=account.prefecture_code,
    )


def token_principal(token: ApiToken) -> Principal:
    return Principal(PrincipalKind.API_TOKEN, str(token.id), token.name, frozenset({Role(token.role)}))


def one_time_password() -> str:
    return secrets.token_urlsafe(15)


def check_new_password(password: str, username: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidError(f"must be at least {MIN_PASSWORD} characters", field="new_password")
    if len(password) > 256:
        raise InvalidError("must be at most 256 characters", field="new_password")
    if username.lower() in password.lower():
        raise InvalidError("must not contain the user name", field="new_password")
    if len(set(password)) < 6:
        raise InvalidError("is too repetitive; use at least 6 different characters", field="new_password")


@dataclass(frozen=True)
class SignInSettings:
    """Lock-out: ``max_failures`` failed sign-ins (password or TOTP code) of one user name
    within ``failure_window`` lock it for ``lockout``. ``totp_issuer`` names the service in
    authenticator apps."""

    max_failures: int = 5
    failure_window: _dt.timedelta = _dt.timedelta(minutes=15)
    lockout: _dt.timedelta = _dt.timedelta(minutes=15)
    totp_issuer: str = totp.ISSUER


class AccountService:
    """Staff accounts and their sign-in: argon2id password, then (once enrolled) a TOTP
    code; lock-out by user name after repeated failures, whether the name exists or not."""

    def __init__(
        self, clock: Clock, settings: SignInSettings | None = None, sealer: totp.TotpSealer | None = None
    ) -> None:
        self._clock = clock
        self.settings = settings or SignInSettings()
        self._sealer = sealer

    def count(self, session: Session) -> int:
        return int(session.scalar(select(func.count()).select_from(Account)) or 0)

    def create(
        self,
        session: Session,
        principal: Principal,
        *,
        username: str,
        display_name: str,
        role: Role,
        password: str,
        prefecture: str | None = None,
    ) -> Account:
        """Create a staff account that must change its (one-time) password at first sign-in.
        RA staff (``ra_clerk``, ``ra_officer``) name the one prefecture (area code) they work
        in, which must exist; other roles name none. 三员分立: a security administrator
        creates RA staff, a system administrator every other account (:func:`account_administrator`)."""
        _require_account_admin(principal, role, "create")
        _check_prefecture(session, role, prefecture)
        if not display_name.strip() or len(display_name) > 128:
            raise InvalidError("must be 1-128 characters", field="display_name")
        if not _USERNAME.match(username):
            raise InvalidError(
                "must be 3-64 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter",
                field="username",
            )
        if session.scalar(select(Account.id).where(Account.username == username)) is not None or _official_name(
            session, username
        ):
            raise ConflictError(f"user name {username!r} is taken", field="username")
        now = self._clock.now()
        account = Account(
            username=username,
            display_name=display_name,
            role=role.value,
            password_hash=_hasher.hash(password),
            must_change_password=True,
            created_at=now,
            prefecture_code=prefecture if role in RA_ROLES else None,
        )
        session.add(account)
        session.flush()
        details: dict[str, str] = {"role": role.value, "display_name": display_name}
        if account.prefecture_code is not None:
            details["prefecture"] = account.prefecture_code
        audit.record(
            session,
            principal,
            AuthzEvent.ACCOUNT_CREATE.value,
            object_type="account",
            object_id=username,
            details=details,
            clock=self._clock,
        )
        return account

    def change_role(
        self, session: Session, principal: Principal, *, username: str, role: Role, prefecture: str | None = None
    ) -> Account:
        """Give an account another role (an account holds exactly one). 三员分立: an account
        that is system administrator, security administrator or security auditor never
        changes role at all — not even by way of another role (administrator → operator →
        auditor would let one person audit their own administration): that takes a new
        account. An account may become one of the three only if it never was one (its
        creation and role changes in the audit trail). The administrator of both the
        account's role and the new one acts (RA staff: a security administrator; others: a
        system administrator; both: SYSTEM). Nobody changes their own role. Audited with the
        roles before and after."""
        account = session.scalar(select(Account).where(Account.username == username))
        if account is None:
            _require_account_admin(principal, role, "change the role of")
            raise NotFoundError(f"there is no account {username[:64]!r}", field="username")
        before = Role(account.role)
        _require_account_admin(principal, before, "change the role of")
        _require_account_admin(principal, role, "change the role of")
        _refuse_own_account(principal, account, "change the role of")
        if before in SEPARATED_ROLES:
            raise ConflictError(
                f"{username} is {before.value}; 三员分立 keeps system administrator, security administrator "
                f"and security auditor apart, so its role never changes (create another account)",
                field="role",
                code=SEPARATED,
                params={"username": username, "role": before.value},
            )
        if role in SEPARATED_ROLES:
            held = self._separated_roles_held(session, username)
            if held:
                raise ConflictError(
                    f"{username} was {held[0]}; 三员分立 keeps system administrator, security administrator "
                    f"and security auditor apart, so it may not become {role.value} (create another account)",
                    field="role",
                    code=SEPARATED,
                    params={"username": username, "role": held[0]},
                )
        _check_prefecture(session, role, prefecture)
        changes = {"role": {"before": before.value, "after": role.value}}
        if (account.prefecture_code or None) != (prefecture or None):
            changes["prefecture"] = {"before": account.prefecture_code or "", "after": prefecture or ""}
        account.role = role.value
        account.prefecture_code = prefecture if role in RA_ROLES else None
        audit.record(
            session,
            principal,
            AuthzEvent.ACCOUNT_ROLE_CHANGE.value,
            object_type="account",
            object_id=username,
            details=changes,
            clock=self._clock,
        )
        return account

    def _separated_roles_held(self, session: Session, username: str) -> list[str]:
        """The separated roles the account ever held, by its audit trail (account creation
        and role changes). Since an account holding one never changes role, this only
        matters for role changes made before that rule."""
        rows = session.execute(
            select(audit.AuditEntry.action, audit.AuditEntry.details).where(
                audit.AuditEntry.object_type == "account",
                audit.AuditEntry.object_id == username,
                audit.AuditEntry.action.in_([AuthzEvent.ACCOUNT_CREATE.value, AuthzEvent.ACCOUNT_ROLE_CHANGE.value]),
            )
        )
        held: list[str] = []
        for action, details in rows:
            try:
                data = json.loads(details or "{}")
            except ValueError:
                continue
            roles = [data.get("role")] if action == AuthzEvent.ACCOUNT_CREATE.value else []
            if isinstance(data.get("role"), dict):
                roles = [data["role"].get("before"), data["role"].get("after")]
            held += [r for r in roles if r in SEPARATED_ROLES and r not in held]
        return held

    def list_staff(self, session: Session) -> list[Account]:
        return list(session.scalars(select(Account).order_by(Account.username)))

    def get(self, session: Session, account_id: int) -> Account | None:
        account = session.get(Account, account_id)
        return None if account is None or account.disabled else account

    # ----- lock-out ----------------------------------------------------------------

    def locked_until(self, session: Session, username: str) -> _dt.datetime | None:
        """When the user name's lock ends, if it is locked now."""
        now = self._clock.now()
        return session.scalar(
            select(SignInLock.locked_until)
            .where(SignInLock.username == username[:64], SignInLock.locked_until > now)
            .order_by(SignInLock.locked_until.desc())
            .limit(1)
        )

    def _take_turn(self, session: Session, username: str) -> None:
        """Sign-in attempts of one user name are evaluated one at a time, each seeing the
        failures (and lock) the earlier ones committed: so with N attempts in parallel at
        most ``max_failures`` passwords or codes are looked at before the lock applies.
        The turn lasts until the caller's transaction ends (the request commits once).
        PostgreSQL: a transaction-level advisory lock on the name's hash (names that do not
        exist are locked alike). SQLite: the transaction's first statement is a write (the
        removal of the name's failures older than the window), which takes the database's
        one write lock at once; the others wait for it (``busy_timeout``)."""
        name = username[:64]
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(name, SIGN_IN_LOCK_SEED))))
        since = self._clock.now() - self.settings.failure_window
        session.execute(delete(SignInFailure).where(SignInFailure.username == name, SignInFailure.failed_at <= since))

    def _refuse_if_locked(self, session: Session, username: str, source: str, factor: str) -> None:
        """Locked: audit the attempt and refuse, before any password or code is looked at."""
        if self.locked_until(session, username) is None:
            return
        audit.record(
            session,
            f"anonymous:{source}",
            AuthzEvent.SIGN_IN_FAIL.value,
            object_type="account",
            object_id=username[:64],
            outcome="failure",
            details={"source": source, "factor": factor, "reason": "locked"},
            clock=self._clock,
        )
        raise self._locked_error()

    def _locked_error(self) -> UnauthenticatedError:
        minutes = int(self.settings.lockout.total_seconds() // 60)
        return UnauthenticatedError(
            f"sign-in is locked for {minutes} minutes after too many failed attempts", field="username", code=LOCKED
        )

    def _failed(self, session: Session, username: str, source: str, factor: str) -> bool:
        """Audit and count one failure; lock the user name when it is one too many. True if locked now."""
        name = username[:64]
        now = self._clock.now()
        audit.record(
            session,
            f"anonymous:{source}",
            AuthzEvent.SIGN_IN_FAIL.value,
            object_type="account",
            object_id=name,
            outcome="failure",
            details={"source": source, "factor": factor},
            clock=self._clock,
        )
        since = now - self.settings.failure_window
        session.execute(delete(SignInFailure).where(SignInFailure.username == name, SignInFailure.failed_at <= since))
        session.add(SignInFailure(username=name, failed_at=now, factor=factor, source=source[:100]))
        session.flush()
        failures = int(
            session.scalar(
                select(func.count())
                .select_from(SignInFailure)
                .where(SignInFailure.username == name, SignInFailure.failed_at > since)
            )
            or 0
        )
        if failures < self.settings.max_failures:
            return False
        until = now + self.settings.lockout
        session.add(SignInLock(username=name, locked_at=now, locked_until=until, failures=failures))
        session.execute(delete(SignInFailure).where(SignInFailure.username == name))  # counted by the lock
        audit.record(
            session,
            f"anonymous:{source}",
            AuthzEvent.ACCOUNT_LOCK.value,
            object_type="account",
            object_id=name,
            details={
                "source": source,
                "failures": failures,
                "window_minutes": int(self.settings.failure_window.total_seconds() // 60),
                "locked_until": until.isoformat(),
            },
            clock=self._clock,
        )
        return True

    def locks(self, session: Session) -> dict[str, _dt.datetime]:
        """The user names locked now, and when each lock ends."""
        now = self._clock.now()
        rows = session.execute(
            select(SignInLock.username, func.max(SignInLock.locked_until))
            .where(SignInLock.locked_until > now)
            .group_by(SignInLock.username)
        )
        return {name: until for name, until in rows}

    def unlock(self, session: Session, principal: Principal, username: str) -> int:
        """End the user name's lock now; returns how many locks ended. The account's
        administrator acts (RA staff: a security administrator; others: a system
        administrator); a locked name with no account, either of them. Not one's own."""
        account = session.scalar(select(Account).where(Account.username == username))
        if account is not None:
            _require_account_admin(principal, Role(account.role), "unlock")
            _refuse_own_account(principal, account, "unlock")
        elif principal.kind is not PrincipalKind.SYSTEM and not (
            principal.has(Role.SECURITY_ADMIN) or principal.has(Role.SYSTEM_ADMIN)
        ):
            raise ForbiddenError(
                "only a security or system administrator may unlock a user name",
                field="username",
                code=NOT_ACCOUNT_ADMIN,
            )
        now = self._clock.now()
        locks = list(
            session.scalars(select(SignInLock).where(SignInLock.username == username, SignInLock.locked_until > now))
        )
        if not locks:
            raise ConflictError(f"{username[:64]!r} is not locked", field="username")
        for lock in locks:
            lock.locked_until = now
        session.execute(delete(SignInFailure).where(SignInFailure.username == username))
        audit.record(
            session,
            principal,
            AuthzEvent.ACCOUNT_UNLOCK.value,
            object_type="account",
            object_id=username,
            clock=self._clock,
        )
        return len(locks)

    # ----- sign-in ------------------------------------------------------------------

    def _signed_in(self, session: Session, account: Account, source: str, factors: list[str]) -> None:
        session.execute(delete(SignInFailure).where(SignInFailure.username == account.username))
        details: dict[str, object] = {"source": source, "factors": factors}
        if not account.totp_enrolled:
            details["totp"] = "not enrolled"
        audit.record(
            session,
            account_principal(account),
            AuthzEvent.SIGN_IN.value,
            object_type="account",
            object_id=account.username,
            details=details,
            clock=self._clock,
        )

    def sign_in_password(self, session: Session, *, username: str, password: str, source: str) -> Account:
        """The first factor. A locked user name is refused before the password is looked at
        (the same for names that do not exist). A failure is audited and counted with the
        same message whatever went wrong. For an account that has not enrolled TOTP yet this
        completes the sign-in (audited); otherwise the caller must :meth:`sign_in_totp` next."""
        self._take_turn(session, username)
        self._refuse_if_locked(session, username, source, "password")
        account = session.scalar(select(Account).where(Account.username == username))
        ok = False
        if account is not None and not account.disabled:
            try:
                ok = _hasher.verify(account.password_hash, password)
            except (VerificationError, InvalidHashError):
                ok = False
        else:
            _hasher.hash(password)  # same cost for unknown users
        if not ok or account is None:
            if self._failed(session, username, source, "password"):
                raise self._locked_error()
            raise UnauthenticatedError("wrong user name or password", field="password", code=WRONG_CREDENTIALS)
        if not account.totp_enrolled:
            self._signed_in(session, account, source, ["password"])
        return account

    def sign_in_totp(self, session: Session, account_id: int, *, code: str, source: str) -> Account:
        """The second factor, after :meth:`sign_in_password`: a code of the account's TOTP
        secret for now ± one step, not of a step already used. Failures count towards the lock."""
        account = self.get(session, account_id)
        if account is None or not account.totp_enrolled:
            raise UnauthenticatedError("sign in with your password first", field="username")
        self._take_turn(session, account.username)
        self._refuse_if_locked(session, account.username, source, "totp")
        cleaned = totp.normalise_code(code)
        secret = self._require_sealer().open(session, account)
        step = totp.matching_step(secret, cleaned, self._clock.now(), account.totp_last_step)
        if step is None:
            if self._failed(session, account.username, source, "totp"):
                raise self._locked_error()
            raise UnauthenticatedError("wrong or already used code", field="code", code=WRONG_TOTP)
        account.totp_last_step = step
        self._signed_in(session, account, source, ["password", "totp"])
        return account

    def sign_in(
        self, session: Session, *, username: str, password: str, source: str, totp_code: str | None = None
    ) -> Account:
        """Both factors at once (the CLI): the password, then the TOTP code if the account has enrolled."""
        account = self.sign_in_password(session, username=username, password=password, source=source)
        if account.totp_enrolled:
            if totp_code is None:
                raise UnauthenticatedError("a TOTP code is required", field="code", code=WRONG_TOTP)
            account = self.sign_in_totp(session, account.id, code=totp_code, source=source)
        return account

    # ----- TOTP enrolment -----------------------------------------------------------

    def _require_sealer(self) -> totp.TotpSealer:
        if self._sealer is None:
            raise UnavailableError("TOTP is not set up in this service", field="code")
        return self._sealer

    def record_totp_keys(self, session: Session, principal: Principal) -> int:
        """Record TOTP keys made before they were recorded in the key inventory (start-up;
        idempotent, audited). Returns how many were recorded."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may record the TOTP keys")
        return 0 if self._sealer is None else self._sealer.record_keys(session, principal)

    def totp_key(self, session: Session, principal: Principal) -> TotpKey:
        """The TOTP key new enrolments use (to back it up): a security administrator's."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may back up the TOTP key")
        key = None if self._sealer is None else self._sealer.latest_key(session)
        if key is None:
            raise UnavailableError("there is no TOTP key yet: it is made at the first TOTP enrolment", field="totp_key")
        return key

    def _own_account(self, session: Session, principal: Principal) -> Account:
        account = session.get(Account, int(principal.id)) if principal.kind is PrincipalKind.ACCOUNT else None
        if account is None or account.disabled:
            raise NotFoundError("no such account", field="username")
        return account

    def totp_enrolment(self, session: Session, principal: Principal) -> tuple[str, str]:
        """The signed-in account's new TOTP secret and its otpauth:// URI (for the QR code).
        Made (and stored sealed) on the first call; the same until confirmed."""
        account = self._own_account(session, principal)
        if account.totp_enrolled:
            raise ConflictError("TOTP is already set up for this account", field="code")
        sealer = self._require_sealer()
        if account.totp_secret is None:
            key = sealer.current_key(session, principal, now=self._clock.now())
            secret = totp.new_secret()
            account.totp_key_id = key.id
            account.totp_secret = sealer.seal(account, key, secret)
        else:
            secret = sealer.open(session, account)
        return secret, totp.provisioning_uri(secret, account.username, self.settings.totp_issuer)

    def confirm_totp(self, session: Session, principal: Principal, *, code: str) -> Account:
        """Finish enrolment with a code from the app; audited either way."""
        account = self._own_account(session, principal)
        if account.totp_enrolled:
            raise ConflictError("TOTP is already set up for this account", field="code")
        if account.totp_secret is None:
            raise InvalidError("no TOTP secret has been made for this account", field="code")
        cleaned = totp.normalise_code(code)
        secret = self._require_sealer().open(session, account)
        step = totp.matching_step(secret, cleaned, self._clock.now(), None)
        if step is None:
            audit.record(
                session,
                principal,
                AuthzEvent.TOTP_ENROL.value,
                object_type="account",
                object_id=account.username,
                outcome="failure",
                details={"reason": "wrong code"},
                clock=self._clock,
            )
            raise InvalidError("is not the code your authenticator app shows now", field="code")
        account.totp_enrolled_at = self._clock.now()
        account.totp_last_step = step
        audit.record(
            session,
            principal,
            AuthzEvent.TOTP_ENROL.value,
            object_type="account",
            object_id=account.username,
            clock=self._clock,
        )
        return account

    def reset_totp(self, session: Session, principal: Principal, username: str) -> Account:
        """Forget an account's TOTP secret (a lost phone): it enrols again at its next sign-in.
        The account's administrator acts (RA staff: a security administrator; others: a
        system administrator); nobody resets their own."""
        account = session.scalar(select(Account).where(Account.username == username))
        if account is None:
            if principal.kind is not PrincipalKind.SYSTEM and not (
                principal.has(Role.SECURITY_ADMIN) or principal.has(Role.SYSTEM_ADMIN)
            ):
                raise ForbiddenError(
                    "only a security or system administrator may reset an authenticator",
                    field="username",
                    code=NOT_ACCOUNT_ADMIN,
                )
            raise NotFoundError(f"no account {username[:64]!r}", field="username")
        _require_account_admin(principal, Role(account.role), "reset the authenticator of")
        _refuse_own_account(principal, account, "reset the authenticator of")
        account.totp_enrolled_at = None
        account.totp_secret = None
        account.totp_key_id = None
        account.totp_last_step = None
        audit.record(
            session,
            principal,
            AuthzEvent.TOTP_RESET.value,
            object_type="account",
            object_id=account.username,
            clock=self._clock,
        )
        return account

    def change_password(self, session: Session, principal: Principal, *, current: str, new: str) -> Account:
        account = session.get(Account, int(principal.id)) if principal.kind is PrincipalKind.ACCOUNT else None
        if account is None:
            raise NotFoundError("no such account")
        try:
            _hasher.verify(account.password_hash, current)
        except (VerificationError, InvalidHashError):
            raise InvalidError("is not your current password", field="current_password") from None
        check_new_password(new, account.username)
        if hmac.compare_digest(current, new):
            raise InvalidError("must differ from the current password", field="new_password")
        account.password_hash = _hasher.hash(new)
        account.must_change_password = False
        account.password_changed_at = self._clock.now()
        audit.record(
            session,
            principal,
            AuthzEvent.PASSWORD_CHANGE.value,
            object_type="account",
            object_id=account.username,
            clock=self._clock,
        )
        return account


class TokenService:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def create(
        self, session: Session, principal: Principal, *, name: str, days: int, role: Role = Role.CA_OPERATOR
    ) -> tuple[ApiToken, str]:
        """Make an operator API token; the secret is returned once and stored only as a hash."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may create API tokens")
        if not _TOKEN_NAME.match(name):
            raise InvalidError("must be 1-64 characters: letters, digits, '.', '_' or '-'", field="name")
        if not 1 <= days <= 366:
            raise InvalidError("must be between 1 and 366 days", field="days")
        if role not in TOKEN_ROLES:
            raise InvalidError(
                f"API tokens may only carry the roles {sorted(r.value for r in TOKEN_ROLES)}", field="role"
            )
        if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
            raise ConflictError(f"a token named {name!r} exists", field="name")
        prefix = secrets.token_hex(6)
        secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        now = self._clock.now()
        token = ApiToken(
            name=name,
            prefix=prefix,
            token_sha256=hashlib.sha256(secret.encode()).hexdigest(),
            role=role.value,
            created_by=principal.audit_name,
            owner_id=int(principal.id) if principal.kind is PrincipalKind.ACCOUNT else None,
            created_at=now,
            expires_at=now + _dt.timedelta(days=days),
        )
        session.add(token)
        session.flush()
        audit.record(
            session,
            principal,
            AuthzEvent.TOKEN_CREATE.value,
            object_type="api_token",
            object_id=name,
            details={"role": role.value, "expires_at": token.expires_at.isoformat(), "prefix": prefix},
            clock=self._clock,
        )
        return token, secret

    def list(self, session: Session) -> list[ApiToken]:
        return list(session.scalars(select(ApiToken).order_by(ApiToken.id.desc())))

    def revoke(self, session: Session, principal: Principal, token_id: int) -> ApiToken:
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may revoke API tokens")
        token = session.get(ApiToken, token_id)
        if token is None:
            raise NotFoundError(f"no token with id {token_id}", field="token")
        if token.revoked_at is not None:
            raise ConflictError(f"token {token.name!r} is already revoked", field="token")
        token.revoked_at = self._clock.now()
        audit.record(
            session,
            principal,
            AuthzEvent.TOKEN_REVOKE.value,
            object_type="api_token",
            object_id=token.name,
            clock=self._clock,
        )
        return token

    def authenticate(self, session: Session, presented: str | None) -> Principal:
        """Map a bearer token to its principal; every failure is the same kind with a clear reason."""
        if not presented:
            raise UnauthenticatedError(
                "an API token is required: send 'Authorization: Bearer <token>'", field="authorization"
            )
        parts = presented.split("_")
        if not presented.startswith(TOKEN_PREFIX) or len(parts) < 3:
            raise UnauthenticatedError("the API token is malformed", field="authorization")
        token = session.scalar(select(ApiToken).where(ApiToken.prefix == parts[1]))
        digest = hashlib.sha256(presented.encode()).hexdigest()
        if token is None or not hmac.compare_digest(token.token_sha256, digest):
            raise UnauthenticatedError("the API token is not valid", field="authorization")
        if token.revoked_at is not None:
            raise UnauthenticatedError("the API token has been revoked", field="authorization")
        if token.expires_at <= self._clock.now():
            raise UnauthenticatedError("the API token has expired", field="authorization")
        return token_principal(token)
