"""Accounts (argon2id passwords) and operator API tokens."""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from authz.events import AuthzEvent
from authz.models import Account, ApiToken
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnauthenticatedError
from govpki.principal import Principal, PrincipalKind, Role

TOKEN_PREFIX = "gpk_"
_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{2,63}$")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 12
TOKEN_ROLES = frozenset({Role.CA_OPERATOR})

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


def account_principal(account: Account) -> Principal:
    return Principal(PrincipalKind.ACCOUNT, str(account.id), account.username, frozenset({Role(account.role)}))


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


class AccountService:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def count(self, session: Session) -> int:
        return int(session.scalar(select(func.count()).select_from(Account)) or 0)

    def create(
        self, session: Session, principal: Principal, *, username: str, display_name: str, role: Role, password: str
    ) -> Account:
        """Create a staff account that must change its (one-time) password at first sign-in."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may create accounts")
        if not _USERNAME.match(username):
            raise InvalidError(
                "must be 3-64 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter",
                field="username",
            )
        if session.scalar(select(Account.id).where(Account.username == username)) is not None:
            raise ConflictError(f"user name {username!r} is taken", field="username")
        now = self._clock.now()
        account = Account(
            username=username,
            display_name=display_name,
            role=role.value,
            password_hash=_hasher.hash(password),
            must_change_password=True,
            created_at=now,
        )
        session.add(account)
        session.flush()
        audit.record(
            session,
            principal,
            AuthzEvent.ACCOUNT_CREATE.value,
            object_type="account",
            object_id=username,
            details={"role": role.value, "display_name": display_name},
            clock=self._clock,
        )
        return account

    def get(self, session: Session, account_id: int) -> Account | None:
        account = session.get(Account, account_id)
        return None if account is None or account.disabled else account

    def sign_in(self, session: Session, *, username: str, password: str, source: str) -> Account:
        """Check a password. Failures are audited with the same message whatever went wrong."""
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
            audit.record(
                session,
                f"anonymous:{source}",
                AuthzEvent.SIGN_IN_FAIL.value,
                object_type="account",
                object_id=username[:64],
                outcome="failure",
                details={"source": source},
                clock=self._clock,
            )
            raise UnauthenticatedError("wrong user name or password", field="password")
        audit.record(
            session,
            account_principal(account),
            AuthzEvent.SIGN_IN.value,
            object_type="account",
            object_id=account.username,
            details={"source": source},
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
