"""The OpenID Connect provider: authorization code flow with PKCE, refresh tokens with
rotation, userinfo, introspection (RFC 7662), revocation (RFC 7009) and RP-initiated
logout, on authlib's protocol logic (grants, PKCE, endpoints); no Flask here — the web
layer (``web/oidc.py``) adds the HTTP glue and the signed-in portal user.

Clients are the registered applications (:mod:`authz.applications`): a confidential
client authenticates with its secret (``client_secret_basic`` or ``_post``); a public
client with its ``client_id`` alone and must use PKCE (S256). Redirect URIs and
post-logout redirect URIs match exactly. A client may ask only for the OIDC scopes it
was registered with (``openid``, ``profile``, ``offline_access``).

The subject (``sub``) is the same string the access policy (:mod:`authz.policy`) names
subjects by: a staff account's user name, or an official's id. ``roles`` are the names
of the roles the policy assigns to that subject for the requesting client's
application name. Authorization codes, access tokens and refresh tokens are stored
only as SHA-256 digests (:mod:`authz.oidc_models`). Access tokens and ID tokens are JWTs
signed with the token-signing key in its key store (:mod:`authz.oidc_keys`).

A used authorization code presented again is refused and every token issued from it is
revoked; a rotated refresh token presented again is refused and its whole family
revoked. Those revocations must stay even though the request fails: the provider
reports them through :attr:`OidcServer.on_breach` so the caller commits them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, cast

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant as _AuthorizationCodeGrant
from authlib.oauth2.rfc6749.grants import RefreshTokenGrant as _RefreshTokenGrant
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge as _CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode as _OpenIDCode
from authlib.oidc.core.grants.util import create_half_hash, is_openid_scope
from authlib.oidc.rpinitiated import EndSessionEndpoint as _EndSessionEndpoint
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from authz.applications import application_principal
from authz.certlogin import certificate_status
from authz.events import AuthzEvent
from authz.models import Application
from authz.official_signin import password_sign_in_problem
from authz.oidc_keys import TokenError, TokenSigner
from authz.oidc_models import OidcCode, OidcToken
from authz.policy_models import PolicyAssignment, PolicyRole, PolicySubject
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ForbiddenError
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt.policy import KeyPurpose
from keymgmt.services import KeyService

OIDC_SCOPES = frozenset({"openid", "profile", "offline_access"})
PUBLIC = "public"
CONFIDENTIAL = "confidential"
CLIENT_TYPES = (CONFIDENTIAL, PUBLIC)
GRANT_TYPES = ("authorization_code", "refresh_token")


@dataclass(frozen=True)
class OidcSettings:
    issuer: str  # GOVPKI_BASE_URL
    code_lifetime: _dt.timedelta
    access_token_lifetime: _dt.timedelta
    id_token_lifetime: _dt.timedelta
    refresh_token_lifetime: _dt.timedelta


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def subject_of(principal: Principal) -> str:
    """The ``sub`` claim: an account's user name, an official's id (the policy's subject ids)."""
    return principal.name if principal.kind is PrincipalKind.ACCOUNT else principal.id


@dataclass(frozen=True)
class OidcUser:
    """The signed-in user as the provider sees them (kept with the code and its tokens)."""

    subject: str
    name: str
    prefecture: str | None
    department: str | None
    amr: tuple[str, ...]
    auth_time: int
    cert_serial: str | None = None
    kind: str = PrincipalKind.ACCOUNT.value

    def to_json(self) -> str:
        data = asdict(self)
        data["amr"] = list(self.amr)
        return audit.canonical_json(data)

    @classmethod
    def from_json(cls, text: str) -> OidcUser:
        data = json.loads(text)
        data["amr"] = tuple(data.get("amr") or ())
        return cls(**data)


def _uris(text: str) -> list[str]:
    value = json.loads(text or "[]")
    return [str(v) for v in value] if isinstance(value, list) else []


class OidcClient(ClientMixin):  # type: ignore[misc]
    """authlib's view of a registered application."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.client_id = app.client_id

    @property
    def is_public(self) -> bool:
        return self.app.client_type == PUBLIC

    @property
    def scopes(self) -> set[str]:
        return set(self.app.scopes.split()) & OIDC_SCOPES

    @property
    def redirect_uris(self) -> list[str]:
        return _uris(self.app.redirect_uris)

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": _uris(self.app.post_logout_redirect_uris)}

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # every request names its redirect_uri (OIDC Core §3.1.2.1)

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        return " ".join(s for s in scope.split() if s in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.app.secret_sha256 is None:
            return False
        return hmac.compare_digest(self.app.secret_sha256, digest(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


class _Credential:
    """authlib's view of a stored token (refresh, revocation, introspection)."""

    def __init__(
        self, row: OidcToken, client_id: str, kind: str, clock: Clock, *, certificate_gone: bool = False
    ) -> None:
        self.row = row
        self.client_id = client_id
        self.kind = kind  # "access_token" or "refresh_token"
        self._clock = clock
        self.certificate_gone = certificate_gone  # granted on a certificate session whose certificate is no longer good

    def check_client(self, client: OidcClient) -> bool:
        return bool(client.client_id == self.client_id)

    def get_scope(self) -> str:
        return self.row.scope

    def is_expired(self) -> bool:
        end = self.row.access_expires_at if self.kind == "access_token" else self.row.refresh_expires_at
        return end is None or end <= self._clock.now()

    def is_revoked(self) -> bool:
        if self.row.revoked_at is not None or self.certificate_gone:
            return True
        return self.kind == "refresh_token" and self.row.refreshed_at is not None


class OidcProvider:
    """The provider's domain logic that authlib's hooks call: clients, codes, tokens,
    claims and their audit entries. Every method takes the caller's session."""

    def __init__(self, settings: OidcSettings, signer: TokenSigner, keys: KeyService, clock: Clock) -> None:
        self.settings = settings
        self.signer = signer
        self._keys = keys
        self._clock = clock

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    def now(self) -> _dt.datetime:
        return self._clock.now()

    # ----- clients and users -------------------------------------------------------

    def client(self, session: Session, client_id: str | None) -> OidcClient | None:
        """An enabled application with OIDC scopes and redirect URIs, or None."""
        if not client_id or len(client_id) > 64:
            return None
        app = session.scalar(select(Application).where(Application.client_id == client_id))
        if app is None or app.disabled or "openid" not in app.scopes.split():
            return None
        return OidcClient(app)

    def user_for(
        self, session: Session, principal: Principal, *, amr: list[str], auth_time: int, cert_serial: str | None
    ) -> OidcUser:
        """The signed-in portal user's identity: prefecture and department from the access
        policy's subject when it names them, else the principal's (an official's as the RA
        registered them)."""
        sub = subject_of(principal)
        row = session.scalar(select(PolicySubject).where(PolicySubject.subject_id == sub))
        return OidcUser(
            subject=sub,
            name=principal.name,
            prefecture=(row.prefecture if row is not None and row.prefecture else principal.prefecture),
            department=(row.department if row is not None and row.department else principal.department),
            amr=tuple(amr),
            auth_time=auth_time,
            cert_serial=cert_serial,
            kind=principal.kind.value,
        )

    def roles(self, session: Session, subject: str, application: str) -> list[str]:
        """The roles the access policy assigns ``subject`` in ``application`` (sorted, distinct)."""
        names = session.scalars(
            select(PolicyRole.name)
            .join(PolicyAssignment, PolicyAssignment.role_id == PolicyRole.id)
            .join(PolicySubject, PolicySubject.id == PolicyAssignment.subject_id)
            .where(PolicySubject.subject_id == subject, PolicyRole.application == application)
        )
        return sorted(set(names))

    def user_claims(self, session: Session, user: OidcUser, client: OidcClient, scope: str) -> dict[str, Any]:
        """The identity claims for ``scope`` (``profile``: name, prefecture, department, roles)."""
        claims: dict[str, Any] = {"sub": user.subject}
        if "profile" in scope.split():
            claims["name"] = user.name
            claims["prefecture"] = user.prefecture
            claims["department"] = user.department
            claims["roles"] = self.roles(session, user.subject, client.app.name)
        if user.cert_serial:
            claims["cert_serial"] = user.cert_serial
        return claims

    # ----- codes -------------------------------------------------------------------

    def save_code(
        self, session: Session, code: str, client: OidcClient, user: OidcUser, payload: Mapping[str, Any]
    ) -> OidcCode:
        now = self.now()
        row = OidcCode(
            code_sha256=digest(code),
            application_id=client.app.id,
            subject=user.subject,
            claims=user.to_json(),
            redirect_uri=str(payload["redirect_uri"]),
            scope=str(payload["scope"]),
            nonce=payload.get("nonce") or None,
            code_challenge=payload.get("code_challenge") or None,
            code_challenge_method=(payload.get("code_challenge_method") or "plain")
            if payload.get("code_challenge")
            else None,
            created_at=now,
            expires_at=now + self.settings.code_lifetime,
        )
        session.add(row)
        session.flush()
        return row

    def nonce_used(self, session: Session, client: OidcClient, nonce: str) -> bool:
        found = session.scalar(
            select(OidcCode.id).where(OidcCode.application_id == client.app.id, OidcCode.nonce == nonce).limit(1)
        )
        return found is not None

    def find_code(self, session: Session, code: str, client: OidcClient) -> OidcCode | None:
        """The unused, unexpired code issued to ``client``. A used one is a replay: every
        token issued from it is revoked (audited) and :class:`CodeReplayedError` raised."""
        row = session.scalar(
            select(OidcCode).where(OidcCode.code_sha256 == digest(code), OidcCode.application_id == client.app.id)
        )
        if row is None:
            return None
        if row.used_at is not None:
            revoked = self._revoke(session, OidcToken.code_id == row.id, "authorization code replayed")
            audit.record(
                session,
                application_principal(client.app),
                AuthzEvent.OIDC_CODE_REPLAY.value,
                object_type="oidc_code",
                object_id=str(row.id),
                outcome="denied",
                details={"client_id": client.client_id, "subject": row.subject, "tokens_revoked": revoked},
                clock=self._clock,
            )
            raise CodeReplayedError(revoked)
        if row.expires_at <= self.now():
            return None
        return row

    def use_code(self, session: Session, row: OidcCode) -> None:
        """Mark the code used (once: a concurrent exchange of the same code loses)."""
        done = session.execute(
            update(OidcCode)
            .where(OidcCode.id == row.id, OidcCode.used_at.is_(None))
            .values(used_at=self.now())
            .execution_options(synchronize_session=False)
        )
        if getattr(done, "rowcount", 1) != 1:
            raise InvalidGrantError("The authorization code has been used already.")

    # ----- tokens ------------------------------------------------------------------

    def new_tokens(
        self, session: Session, client: OidcClient, user: OidcUser, scope: str, *, include_refresh_token: bool
    ) -> dict[str, Any]:
        """A signed access token (JWT, ``typ`` at+jwt, RFC 9068) and a random refresh token."""
        now = self.now()
        lifetime = self.settings.access_token_lifetime
        claims = {
            "iss": self.issuer,
            "sub": user.subject,
            "aud": client.client_id,
            "client_id": client.client_id,
            "scope": scope,
            "iat": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
            "jti": secrets.token_urlsafe(16),
        }
        access = self.signer.sign(session, application_principal(client.app), claims, typ="at+jwt")
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": int(lifetime.total_seconds()),
            "scope": scope,
        }
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_tokens(
        self,
        session: Session,
        token: Mapping[str, Any],
        client: OidcClient,
        user: OidcUser,
        *,
        code: OidcCode | None = None,
        previous: OidcToken | None = None,
    ) -> OidcToken:
        now = self.now()
        refresh = token.get("refresh_token")
        row = OidcToken(
            application_id=client.app.id,
            subject=user.subject,
            claims=user.to_json(),
            scope=str(token.get("scope") or ""),
            access_sha256=digest(str(token["access_token"])),
            refresh_sha256=digest(str(refresh)) if refresh else None,
            code_id=code.id if code is not None else (previous.code_id if previous is not None else None),
            family_id=previous.family_id if previous is not None else None,
            issued_at=now,
            access_expires_at=now + self.settings.access_token_lifetime,
            refresh_expires_at=now + self.settings.refresh_token_lifetime if refresh else None,
        )
        session.add(row)
        session.flush()
        if row.family_id is None:
            row.family_id = row.id
        event = AuthzEvent.OIDC_TOKEN_REFRESH if previous is not None else AuthzEvent.OIDC_TOKEN_ISSUE
        audit.record(
            session,
            application_principal(client.app),
            event.value,
            object_type="oidc_token",
            object_id=str(row.id),
            details={
                "client_id": client.client_id,
                "application": client.app.name,
                "subject": user.subject,
                "scope": row.scope,
                "amr": list(user.amr),
                **({"replaces": previous.id} if previous is not None else {}),
            },
            clock=self._clock,
        )
        return row

    def id_token(
        self,
        session: Session,
        client: OidcClient,
        user: OidcUser,
        scope: str,
        *,
        nonce: str | None,
        access_token: str | None,
    ) -> str:
        now = self.now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client.client_id,
            "iat": int(now.timestamp()),
            "exp": int((now + self.settings.id_token_lifetime).timestamp()),
            "auth_time": user.auth_time,
            "amr": list(user.amr),
            **self.user_claims(session, user, client, scope),
        }
        if nonce:
            claims["nonce"] = nonce
        if access_token:
            claims["at_hash"] = create_half_hash(access_token, "ES256").decode("ascii")
        return self.signer.sign(session, application_principal(client.app), claims)

    def find_refresh(self, session: Session, refresh_token: str, client: OidcClient) -> _Credential | None:
        """The live refresh token. A rotated one presented again revokes its whole family
        (audited) and raises :class:`RefreshReusedError`."""
        row = session.scalar(select(OidcToken).where(OidcToken.refresh_sha256 == digest(refresh_token)))
        if row is None or row.application_id != client.app.id:
            return None
        credential = _Credential(
            row, client.client_id, "refresh_token", self._clock, certificate_gone=self.sign_in_gone(session, row)
        )
        if row.refreshed_at is not None and row.revoked_at is None:
            revoked = self._revoke(session, OidcToken.family_id == row.family_id, "refresh token reused")
            audit.record(
                session,
                application_principal(client.app),
                AuthzEvent.OIDC_REFRESH_REUSE.value,
                object_type="oidc_token",
                object_id=str(row.id),
                outcome="denied",
                details={"client_id": client.client_id, "subject": row.subject, "tokens_revoked": revoked},
                clock=self._clock,
            )
            raise RefreshReusedError(revoked)
        if credential.is_revoked() or credential.is_expired():
            return None
        return credential

    def rotate_refresh(self, session: Session, row: OidcToken) -> None:
        done = session.execute(
            update(OidcToken)
            .where(OidcToken.id == row.id, OidcToken.refreshed_at.is_(None))
            .values(refreshed_at=self.now())
            .execution_options(synchronize_session=False)
        )
        if getattr(done, "rowcount", 1) != 1:
            raise InvalidGrantError("The refresh token has been used already.")

    def find_token(self, session: Session, value: str, hint: str | None) -> _Credential | None:
        """A stored access or refresh token by its value (for introspection and revocation)."""
        kinds = ("refresh_token", "access_token") if hint == "refresh_token" else ("access_token", "refresh_token")
        for kind in kinds:
            column = OidcToken.access_sha256 if kind == "access_token" else OidcToken.refresh_sha256
            row = session.scalar(select(OidcToken).where(column == digest(value)))
            if row is not None:
                app = session.get(Application, row.application_id)
                assert app is not None
                return _Credential(
                    row, app.client_id, kind, self._clock, certificate_gone=self.sign_in_gone(session, row)
                )
        return None

    def revoke(self, session: Session, client: OidcClient, credential: _Credential) -> int:
        """RFC 7009: revoking either token of a grant revokes the grant (its family)."""
        row = credential.row
        revoked = self._revoke(session, OidcToken.family_id == row.family_id, "revoked by the client")
        audit.record(
            session,
            application_principal(client.app),
            AuthzEvent.OIDC_TOKEN_REVOKE.value,
            object_type="oidc_token",
            object_id=str(row.id),
            details={"client_id": client.client_id, "subject": row.subject, "tokens_revoked": revoked},
            clock=self._clock,
        )
        return revoked

    def _revoke(self, session: Session, where: Any, reason: str) -> int:
        done = session.execute(
            update(OidcToken)
            .where(where, OidcToken.revoked_at.is_(None))
            .values(revoked_at=self.now(), revoked_reason=reason)
            .execution_options(synchronize_session=False)
        )
        session.expire_all()
        return int(getattr(done, "rowcount", 0) or 0)

    def introspect(self, session: Session, credential: _Credential) -> dict[str, Any]:
        row = credential.row
        user = OidcUser.from_json(row.claims)
        end = row.access_expires_at if credential.kind == "access_token" else row.refresh_expires_at
        assert end is not None
        return {
            "active": True,
            "scope": row.scope,
            "client_id": credential.client_id,
            "username": user.name,
            "token_type": "Bearer" if credential.kind == "access_token" else "refresh_token",
            "exp": int(end.timestamp()),
            "iat": int(row.issued_at.timestamp()),
            "sub": row.subject,
            "aud": credential.client_id,
            "iss": self.issuer,
        }

    def bearer(self, session: Session, token: str) -> tuple[OidcToken, OidcClient]:
        """The stored, live access token behind a bearer JWT (userinfo). Raises
        :class:`TokenError` naming what is wrong: signature, issuer, expiry, audience,
        unknown or revoked."""
        claims = self.signer.verify(session, token, issuer=self.issuer)
        row = session.scalar(select(OidcToken).where(OidcToken.access_sha256 == digest(token)))
        if row is None:
            raise TokenError("the token was not issued by this provider")
        app = session.get(Application, row.application_id)
        if app is None or claims.get("aud") != app.client_id or claims.get("sub") != row.subject:
            raise TokenError("the token was not issued for this audience")
        if row.revoked_at is not None:
            raise TokenError("the token has been revoked")
        if row.access_expires_at <= self.now():
            raise TokenError("the token has expired")
        if app.disabled:
            raise TokenError("the token's client is disabled")
        if self.certificate_gone(session, row):
            raise TokenError("the certificate the user signed in with is no longer valid")
        if self.password_sign_in_gone(session, row):
            raise TokenError("the password sign-in the user signed in with was reset or compromised")
        return row, OidcClient(app)

    def certificate_gone(self, session: Session, row: OidcToken) -> bool:
        """A token granted on a certificate session (its user claims name ``cert_serial``)
        lives only while that certificate is good: issued, neither revoked, on hold nor
        expired (one read by serial; none for a password session's tokens)."""
        serial = OidcUser.from_json(row.claims).cert_serial
        return serial is not None and certificate_status(session, serial, self.now()) != "valid"

    def sign_in_gone(self, session: Session, row: OidcToken) -> bool:
        """Whether the sign-in the token was granted on no longer holds (certificate or password)."""
        return self.certificate_gone(session, row) or self.password_sign_in_gone(session, row)

    def password_sign_in_gone(self, session: Session, row: OidcToken) -> bool:
        """A token granted on an official's password + TOTP session lives only while that
        sign-in does: not reset, turned off or set up anew since, and its set-up certificate
        not revoked for key compromise (one read; none for other tokens)."""
        user = OidcUser.from_json(row.claims)
        if user.kind != PrincipalKind.OFFICIAL.value or "pwd" not in user.amr or not user.subject.isdigit():
            return False
        # auth_time has whole seconds: the sign-in was at most the end of that second
        signed_in_at = _dt.datetime.fromtimestamp(user.auth_time + 1, _dt.UTC) - _dt.timedelta(microseconds=1)
        return password_sign_in_problem(session, official_id=int(user.subject), signed_in_at=signed_in_at) is not None

    def userinfo(self, session: Session, token: str) -> dict[str, Any]:
        row, client = self.bearer(session, token)
        if not is_openid_scope(row.scope):
            raise TokenError("the token was not granted the scope 'openid'")
        return self.user_claims(session, OidcUser.from_json(row.claims), client, row.scope)

    # ----- logout ------------------------------------------------------------------

    def logout(self, session: Session, principal: Principal | None, claims: Mapping[str, Any] | None) -> int:
        """RP-initiated logout: revoke the tokens of the ID token's subject at its client
        (the portal session is ended by the caller). Audited."""
        revoked = 0
        client_id = claims.get("aud") if claims else None
        subject = claims.get("sub") if claims else None
        app = session.scalar(select(Application).where(Application.client_id == client_id)) if client_id else None
        if app is not None and isinstance(subject, str):
            revoked = self._revoke(
                session,
                (OidcToken.application_id == app.id) & (OidcToken.subject == subject),
                "RP-initiated logout",
            )
        actor = principal or (application_principal(app) if app is not None else None)
        if actor is not None:
            audit.record(
                session,
                actor,
                AuthzEvent.OIDC_LOGOUT.value,
                object_type="oidc_session",
                object_id=str(subject or (principal.name if principal else "-")),
                details={"client_id": client_id, "tokens_revoked": revoked},
                clock=self._clock,
            )
        return revoked

    # ----- keys ----------------------------------------------------------------------

    def rotate_key(self, session: Session, principal: Principal) -> list[str]:
        """A new token-signing key now; the previous one stays in the JWKS until its end of use."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may rotate the token-signing key")
        previous = self._keys.current(session, KeyPurpose.TOKEN_SIGNING)
        lines = self._keys.rotate(session, principal, KeyPurpose.TOKEN_SIGNING)
        current = self._keys.current(session, KeyPurpose.TOKEN_SIGNING)
        audit.record(
            session,
            principal,
            AuthzEvent.OIDC_KEY_ROTATE.value,
            object_type="key",
            object_id=str(current.id if current is not None else "-"),
            details={
                "kid": current.spki_sha256 if current is not None else None,
                "previous_kid": previous.spki_sha256 if previous is not None else None,
            },
            clock=self._clock,
        )
        return lines


class CodeReplayedError(InvalidGrantError):  # type: ignore[misc]
    def __init__(self, revoked: int) -> None:
        super().__init__("The authorization code has been used already; the tokens issued from it are revoked.")
        self.revoked = revoked


class RefreshReusedError(InvalidGrantError):  # type: ignore[misc]
    def __init__(self, revoked: int) -> None:
        super().__init__("The refresh token has been used already; every token of this grant is revoked.")
        self.revoked = revoked


# ----- authlib: grants and endpoints ----------------------------------------------------


def _server(obj: Any) -> OidcServer:
    return cast(OidcServer, obj.server)


class PkceS256(_CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only, required for public clients (at the authorization endpoint
    already, not only at the token endpoint)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        client = grant.request.client
        if client is not None and client.is_public and not data.get("code_challenge"):
            raise InvalidRequestError(
                "PKCE is required for public clients: send code_challenge with code_challenge_method=S256"
            )
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        code = grant.request.authorization_code
        if grant.request.client.is_public and not getattr(code, "code_challenge", None):
            raise InvalidGrantError("PKCE is required for public clients")
        super().validate_code_verifier(grant, result)


class AuthorizationCodeGrant(_AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        server = _server(self)
        data = request.payload.data
        payload = {
            "redirect_uri": request.payload.redirect_uri,
            "scope": request.client.get_allowed_scope(request.payload.scope),
            "nonce": data.get("nonce"),
            "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"),
        }
        server.provider.save_code(server.db(), code, request.client, request.user, payload)

    def query_authorization_code(self, code: str, client: OidcClient) -> _Code | None:
        server = _server(self)
        try:
            row = server.provider.find_code(server.db(), code, client)
        except CodeReplayedError:
            server.on_breach()
            raise
        return _Code(row) if row is not None else None

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        server = _server(self)
        server.provider.use_code(server.db(), authorization_code.row)

    def authenticate_user(self, authorization_code: _Code) -> OidcUser:
        return OidcUser.from_json(authorization_code.row.claims)


class _Code:
    """authlib's view of a stored authorization code."""

    def __init__(self, row: OidcCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return OidcUser.from_json(self.row.claims).auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return list(OidcUser.from_json(self.row.claims).amr)


class RefreshTokenGrant(_RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str) -> _Credential | None:
        server = _server(self)
        try:
            return server.provider.find_refresh(server.db(), refresh_token, self.request.client)
        except RefreshReusedError:
            server.on_breach()
            raise

    def authenticate_user(self, refresh_token: _Credential) -> OidcUser:
        return OidcUser.from_json(refresh_token.row.claims)

    def revoke_old_credential(self, refresh_token: _Credential) -> None:
        server = _server(self)
        server.provider.rotate_refresh(server.db(), refresh_token.row)


class OpenIDCode(_OpenIDCode):  # type: ignore[misc]
    """The ID token is made by :meth:`OidcProvider.id_token` and signed in the key store."""

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        raise NotImplementedError  # replaced per server below

    def process_token(self, grant: Any, response: Any) -> Any:
        _status, token, _headers = response
        scope = token.get("scope")
        if not scope or not is_openid_scope(scope):
            return token
        server = _server(grant)
        request = grant.request
        code = request.authorization_code
        token["id_token"] = server.provider.id_token(
            server.db(),
            request.client,
            request.user,
            scope,
            nonce=code.get_nonce() if code is not None else None,
            access_token=token.get("access_token"),
        )
        return token


class _NonceCheck(OpenIDCode):
    def __init__(self, server: OidcServer) -> None:
        super().__init__(require_nonce=False)
        self._server = server

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self._server.provider.nonce_used(self._server.db(), request.client, nonce)


class IntrospectionEndpoint(_IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662, for confidential clients (client_secret_basic), about their own tokens."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token: str, token_type_hint: str | None) -> _Credential | None:
        server = _server(self)
        return server.provider.find_token(server.db(), token, token_type_hint)

    def check_permission(self, token: _Credential, client: OidcClient, request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: _Credential) -> dict[str, Any]:
        server = _server(self)
        return server.provider.introspect(server.db(), token)


class RevocationEndpoint(_RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009; a public client revokes with its client_id alone."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token: str, token_type_hint: str | None) -> _Credential | None:
        server = _server(self)
        return server.provider.find_token(server.db(), token, token_type_hint)

    def revoke_token(self, token: _Credential, request: Any) -> None:
        server = _server(self)
        server.provider.revoke(server.db(), request.client, token)


class EndSessionEndpoint(_EndSessionEndpoint):  # type: ignore[misc]
    """RP-initiated logout: the id_token_hint must be ours (signature, issuer; it may have
    expired), post_logout_redirect_uri must be registered for the client exactly — else
    an error and no redirect. ``end_session`` revokes the client's tokens of that user;
    the caller ends the portal session."""

    def get_server_jwks(self) -> dict[str, Any]:
        server = _server(self)
        return server.provider.signer.jwks(server.db())

    def _validate_id_token_hint(self, id_token_hint: str) -> dict[str, Any]:
        server = _server(self)
        try:
            return server.provider.signer.verify(
                server.db(), id_token_hint, issuer=server.provider.issuer, check_expiry=False
            )
        except TokenError as exc:
            raise InvalidRequestError(f"id_token_hint: {exc.reason}") from None

    def validate_request(self, request: Any) -> Any:
        validated = super().validate_request(request)
        wanted = request.payload.data.get("post_logout_redirect_uri")
        if wanted and validated.redirect_uri is None:
            if validated.id_token_claims is None:
                raise InvalidRequestError("post_logout_redirect_uri needs an id_token_hint")
            raise InvalidRequestError("post_logout_redirect_uri is not registered for this client")
        return validated

    def end_session(self, end_session_request: Any) -> None:
        server = _server(self)
        server.provider.logout(server.db(), server.acting_user(), end_session_request.id_token_claims)


class OidcServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server with govpki's clients, grants and endpoints.

    ``db`` gives the current unit of work's session; ``on_breach`` is called when a
    replayed code or reused refresh token revoked tokens during a failing request (the
    caller commits those revocations); ``acting_user`` the signed-in portal principal."""

    def __init__(
        self,
        provider: OidcProvider,
        db: Callable[[], Session],
        on_breach: Callable[[], None],
        acting_user: Callable[[], Principal | None],
    ) -> None:
        super().__init__()
        self.scopes_supported = sorted(OIDC_SCOPES)
        self.provider = provider
        self.db = db
        self.on_breach = on_breach
        self.acting_user = acting_user
        self.register_token_generator("default", self._generate_token)
        self.register_grant(AuthorizationCodeGrant, [PkceS256(required=True), _NonceCheck(self)])
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(IntrospectionEndpoint)
        self.register_endpoint(RevocationEndpoint)
        self.register_endpoint(EndSessionEndpoint)

    def query_client(self, client_id: str) -> OidcClient | None:
        return self.provider.client(self.db(), client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        code = request.authorization_code
        previous = request.refresh_token
        self.provider.save_tokens(
            self.db(),
            token,
            request.client,
            request.user,
            code=code.row if code is not None else None,
            previous=previous.row if previous is not None else None,
        )

    def _generate_token(
        self,
        grant_type: str,
        client: OidcClient,
        user: OidcUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        assert user is not None
        return self.provider.new_tokens(
            self.db(), client, user, scope or "", include_refresh_token=include_refresh_token
        )

    def metadata(self) -> dict[str, Any]:
        """The discovery document (OpenID Connect Discovery 1.0, RFC 8414)."""
        base = self.provider.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "userinfo_endpoint": f"{base}/oauth/userinfo",
            "jwks_uri": f"{base}/oauth/jwks.json",
            "introspection_endpoint": f"{base}/oauth/introspect",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "end_session_endpoint": f"{base}/oauth/logout",
            "scopes_supported": sorted(OIDC_SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANT_TYPES),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256", "RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "amr",
                "name",
                "prefecture",
                "department",
                "roles",
                "cert_serial",
            ],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
        }
