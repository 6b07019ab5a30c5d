"""Registered applications (OAuth-style confidential clients) and the events they
append to the audit chain.

An application is registered by a security administrator and gets a ``client_id``
and a 256-bit client secret, shown once; only the secret's SHA-256 is stored.
It authenticates with both (HTTP Basic, ``client_secret_basic``) and acts as a
:class:`Principal` of kind ``application`` carrying its scopes. With the scope
``audit:write`` it may append its own events (:meth:`ApplicationService.append_events`).

How an application's event is stored (see README, "Audit events from applications"):

* ``action``: the application sends ``object:verb`` or ``app:object:verb``; it is
  stored as ``app:object:verb``. Any other domain (``ca:``, ``authz:``…) is refused,
  so an application can never write a tag of govpki's own domains.
* ``actor``: ``application:<name>/<actor>`` (the application's name, then the
  actor it names, 1..128 characters, no control characters).
* ``details``: ``{"source": {"application": name, "client_id": id}, "occurred_at":
  <the application's time, UTC>, "data": <its details object>}``; the entry's own
  ``at`` is the server's time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from authz.events import AuthzEvent
from authz.models import Application
from authz.oidc_models import OidcCode, OidcToken
from govpki import audit
from govpki.audit import AuditRef, NewEntry
from govpki.clock import Clock
from govpki.errors import ConflictError, FieldProblem, ForbiddenError, InvalidError, NotFoundError, UnauthenticatedError
from govpki.principal import Principal, PrincipalKind, Role

AUDIT_WRITE = "audit:write"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access"})  # signing users in: authz/oidc.py
KNOWN_SCOPES = frozenset({AUDIT_WRITE, "authz:decide", "authz:decide:any"}) | OIDC_SCOPES  # decide: authz/decisions.py
CLIENT_TYPES = ("confidential", "public")
MAX_REDIRECT_URIS = 20
MAX_URI = 2000
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CLIENT_ID_PREFIX = "app_"
APP_DOMAIN = "app"

MAX_BATCH = 1000
MAX_ACTOR = 128
MAX_OBJECT_TYPE = 50
MAX_OBJECT_ID = 200
MAX_DETAILS_BYTES = 16 * 1024
OUTCOMES = ("success", "failure", "denied")

_NAME = re.compile(r"^[a-z][a-z0-9-]{2,47}$")
_TAG = r"[a-z][a-z0-9_]{0,29}"
_ACTION = re.compile(rf"^(?:({_TAG}):)?({_TAG}):({_TAG})$")
# C0, DEL and C1 controls, and the Unicode line/paragraph separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DUMMY_DIGEST = hashlib.sha256(b"no such application").hexdigest()


def application_principal(app: Application) -> Principal:
    return Principal(
        PrincipalKind.APPLICATION, app.client_id, app.name, frozenset(), scopes=frozenset(app.scopes.split())
    )


@dataclass(frozen=True)
class AppendResult:
    refs: list[AuditRef]

    @property
    def first(self) -> AuditRef:
        return self.refs[0]

    @property
    def last(self) -> AuditRef:
        return self.refs[-1]


def _text(event: Mapping[str, Any], key: str, field: str, max_len: int, *, control_ok: bool = False) -> str:
    value = event.get(key)
    if not isinstance(value, str):
        raise InvalidError("is required and must be a string", field=field)
    if not 1 <= len(value) <= max_len:
        raise InvalidError(f"must be 1-{max_len} characters", field=field)
    if not control_ok and _CONTROL.search(value):
        raise InvalidError("must not contain control characters", field=field)
    return value


def _action(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidError("is required and must be a string", field=field)
    match = _ACTION.match(value)
    if match is None:
        raise InvalidError(
            "must be 'object:verb' or 'app:object:verb': lower-case tags of letters, digits and '_', "
            "each starting with a letter (at most 30 characters)",
            field=field,
        )
    domain, obj, verb = match.groups()
    if domain is not None and domain != APP_DOMAIN:
        raise InvalidError(
            f"applications write only under the domain '{APP_DOMAIN}' (send 'object:verb'); '{domain}:' is not theirs",
            field=field,
        )
    return f"{APP_DOMAIN}:{obj}:{verb}"


def _time(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidError("is required: an RFC 3339 date-time with a zone, e.g. 2026-01-31T12:00:00Z", field=field)
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in value.upper():
        raise InvalidError(
            f"{value!r} is not an RFC 3339 date-time with a zone, e.g. 2026-01-31T12:00:00Z", field=field
        )
    return audit.timestamp(parsed)


def _details(value: Any, field: str) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidError("must be a JSON object", field=field)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidError("must not contain NaN or infinite numbers", field=field) from None
    except RecursionError:
        raise InvalidError("is nested too deeply", field=field) from None
    if len(text.encode("utf-8")) > MAX_DETAILS_BYTES:
        raise InvalidError(f"is larger than {MAX_DETAILS_BYTES} bytes (as compact JSON)", field=field)
    return value


_EVENT_KEYS = frozenset({"actor", "action", "object_type", "object_id", "outcome", "time", "details"})


def check_event(event: Any, where: str) -> tuple[str, str, str, str, str, str, Any]:
    """Schema-check one event; ``where`` prefixes each field name (``events[3].``).
    Returns (actor, stored action, object_type, object_id, outcome, occurred_at, details)."""
    if not isinstance(event, Mapping):
        raise InvalidError("must be a JSON object", field=where.rstrip(".") or "body")
    unknown = sorted(set(event) - _EVENT_KEYS)
    if unknown:
        raise InvalidError("is not a field of an audit event", field=f"{where}{unknown[0]}")
    actor = _text(event, "actor", f"{where}actor", MAX_ACTOR)
    action = _action(event.get("action"), f"{where}action")
    object_type = _text(event, "object_type", f"{where}object_type", MAX_OBJECT_TYPE)
    object_id = _text(event, "object_id", f"{where}object_id", MAX_OBJECT_ID)
    outcome = event.get("outcome", "success")
    if outcome not in OUTCOMES:
        raise InvalidError(f"must be one of {', '.join(OUTCOMES)}", field=f"{where}outcome")
    occurred_at = _time(event.get("time"), f"{where}time")
    details = _details(event.get("details"), f"{where}details")
    return actor, action, object_type, object_id, str(outcome), occurred_at, details


def _uri_list(values: Sequence[str], field: str) -> list[str]:
    """Exact redirect URIs: absolute, https (http only on a loopback host), no fragment."""
    found: list[str] = []
    if len(values) > MAX_REDIRECT_URIS:
        raise InvalidError(
            f"at most {MAX_REDIRECT_URIS} URIs",
            field=field,
            code="authz.too_many_uris",
            params={"max": MAX_REDIRECT_URIS},
        )
    for value in values:
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_URI or _CONTROL.search(value) or " " in value:
            raise InvalidError(
                f"must be a URI of 1-{MAX_URI} characters without spaces",
                field=field,
                code="authz.uri_form",
                params={"max": MAX_URI},
            )
        try:
            parts = urllib.parse.urlsplit(value)
            _port = parts.port  # a port out of range or not a number raises ValueError
        except ValueError:  # e.g. an unclosed IPv6 bracket
            parts = None
        if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
            raise InvalidError(
                f"{value!r} is not an absolute http(s) URI",
                field=field,
                code="authz.uri_not_absolute",
                params={"uri": value},
            )
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise InvalidError(
                f"{value!r}: plain http only on a loopback host; use https",
                field=field,
                code="authz.uri_plain_http",
                params={"uri": value},
            )
        if parts.fragment or value.endswith("#"):
            raise InvalidError(
                f"{value!r} must not have a fragment", field=field, code="authz.uri_fragment", params={"uri": value}
            )
        if value not in found:
            found.append(value)
    return found


def _client_settings(
    client_type: str, scopes: Sequence[str], redirect_uris: Sequence[str], post_logout_redirect_uris: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """The checks of a client's scopes and URIs (registration and update alike): the sorted
    scopes, the redirect URIs and the post-logout redirect URIs (duplicates dropped)."""
    if isinstance(scopes, str):
        raise InvalidError("must be a list of scopes", field="scope", code="authz.scope_list")
    wanted = sorted(set(scopes))
    for scope in wanted:
        if scope not in KNOWN_SCOPES:
            raise InvalidError(
                f"{scope!r} is not a known scope (known: {', '.join(sorted(KNOWN_SCOPES))})",
                field="scope",
                code="authz.unknown_scope",
                params={"scope": scope},
            )
    redirects = _uri_list(redirect_uris, "redirect_uri")
    after_logout = _uri_list(post_logout_redirect_uris, "post_logout_redirect_uri")
    oidc = "openid" in wanted
    if client_type == "public":
        if not oidc:
            raise InvalidError(
                "a public client signs users in: it needs the scope 'openid'", field="scope", code="authz.public_openid"
            )
        others = [s for s in wanted if s not in OIDC_SCOPES]
        if others:
            raise InvalidError(
                f"a public client has no secret and may hold only OIDC scopes, not {others[0]!r}",
                field="scope",
                code="authz.public_scope",
                params={"scope": others[0]},
            )
    if oidc and not redirects:
        raise InvalidError(
            "an OIDC client (scope 'openid') needs at least one redirect URI",
            field="redirect_uri",
            code="authz.redirect_uri_required",
        )
    if not oidc and (redirects or after_logout):
        raise InvalidError(
            "redirect URIs are only for OIDC clients (scope 'openid')",
            field="redirect_uri",
            code="authz.redirect_uri_not_oidc",
        )
    return wanted, redirects, after_logout


@dataclass(frozen=True)
class ApplicationUpdate:
    """What :meth:`ApplicationService.update` did: the application, the settings it changed
    (``scopes``, ``redirect_uris``, ``post_logout_redirect_uris``; empty: nothing changed,
    nothing written), and the OIDC tokens revoked and unused codes expired because a scope or
    redirect URI they were granted with is no longer registered."""

    app: Application
    changed: tuple[str, ...]
    tokens_revoked: int
    codes_expired: int


def _settings(app: Application) -> dict[str, list[str]]:
    return {
        "scopes": app.scopes.split(),
        "redirect_uris": json.loads(app.redirect_uris or "[]"),
        "post_logout_redirect_uris": json.loads(app.post_logout_redirect_uris or "[]"),
    }


def _client_certificate(data: bytes) -> tuple[x509.Certificate, bytes]:
    """A client certificate file (PEM or DER): the certificate and its DER. A CA certificate,
    or one whose extended key usage lacks clientAuth, is refused."""
    try:
        text = data.lstrip()
        if text.startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(text)
        else:
            cert = x509.load_der_x509_certificate(data)
        der = cert.public_bytes(serialization.Encoding.DER)
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise InvalidError(
            "is not an X.509 certificate (PEM or DER)", field="certificate", code="authz.not_a_certificate"
        ) from None
    try:
        is_ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise InvalidError(
            "is a CA certificate; bind the application's own client certificate",
            field="certificate",
            code="authz.ca_certificate",
        )
    try:
        eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise InvalidError(
            "is not a TLS client certificate (its extended key usage lacks clientAuth)",
            field="certificate",
            code="authz.not_client_auth",
        )
    return cert, der


class ApplicationService:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @staticmethod
    def _require_security_admin(principal: Principal, what: str) -> None:
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError(f"only a security administrator may {what}", code="authz.not_security_admin")

    def register(
        self,
        session: Session,
        principal: Principal,
        *,
        name: str,
        scopes: Sequence[str] = (AUDIT_WRITE,),
        client_type: str = "confidential",
        redirect_uris: Sequence[str] = (),
        post_logout_redirect_uris: Sequence[str] = (),
    ) -> tuple[Application, str | None]:
        """Register an application; returns it and its client secret (shown once, stored as a
        hash; None for a public client, which has none). An OIDC client (scope ``openid``)
        needs at least one exact redirect URI; a public client may hold only OIDC scopes."""
        self._require_security_admin(principal, "register applications")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidError(
                "must be 3-48 characters: lower-case letters, digits or '-', starting with a letter",
                field="name",
                code="authz.application_name",
            )
        if client_type not in CLIENT_TYPES:
            raise InvalidError(
                f"must be one of {', '.join(CLIENT_TYPES)}", field="client_type", code="authz.client_type"
            )
        wanted, redirects, after_logout = _client_settings(
            client_type, scopes, redirect_uris, post_logout_redirect_uris
        )
        oidc = "openid" in wanted
        if session.scalar(select(Application.id).where(Application.name == name)) is not None:
            raise ConflictError(
                f"an application named {name!r} is registered",
                field="name",
                code="authz.application_exists",
                params={"name": name},
            )
        client_id = f"{CLIENT_ID_PREFIX}{secrets.token_hex(12)}"
        secret = secrets.token_urlsafe(32) if client_type == "confidential" else None  # 256 bits
        app = Application(
            name=name,
            client_id=client_id,
            secret_sha256=hashlib.sha256(secret.encode("ascii")).hexdigest() if secret is not None else None,
            client_type=client_type,
            redirect_uris=json.dumps(redirects),
            post_logout_redirect_uris=json.dumps(after_logout),
            scopes=" ".join(wanted),
            created_by=principal.audit_name,
            created_at=self._clock.now(),
            disabled=False,
        )
        session.add(app)
        session.flush()
        details: dict[str, Any] = {"name": name, "scopes": wanted, "client_type": client_type}
        if oidc:
            details["redirect_uris"] = redirects
            details["post_logout_redirect_uris"] = after_logout
        audit.record(
            session,
            principal,
            AuthzEvent.APPLICATION_REGISTER.value,
            object_type="application",
            object_id=client_id,
            details=details,
            clock=self._clock,
        )
        return app, secret

    def list(self, session: Session) -> list[Application]:
        return list(session.scalars(select(Application).order_by(Application.id)))

    def get(self, session: Session, client_id: str) -> Application:
        app = session.scalar(select(Application).where(Application.client_id == client_id))
        if app is None:
            raise NotFoundError(
                f"no application with client_id {client_id!r}",
                field="client_id",
                code="authz.application_not_found",
                params={"client_id": client_id},
            )
        return app

    def disable(self, session: Session, principal: Principal, client_id: str) -> Application:
        self._require_security_admin(principal, "disable applications")
        app = session.scalar(select(Application).where(Application.client_id == client_id))
        if app is None:
            raise NotFoundError(
                f"no application with client_id {client_id!r}",
                field="client_id",
                code="authz.application_not_found",
                params={"client_id": client_id},
            )
        if app.disabled:
            raise ConflictError(
                f"application {app.name!r} is already disabled",
                field="client_id",
                code="authz.application_disabled",
                params={"name": app.name},
            )
        app.disabled = True
        app.disabled_at = self._clock.now()
        audit.record(
            session,
            principal,
            AuthzEvent.APPLICATION_DISABLE.value,
            object_type="application",
            object_id=client_id,
            details={"name": app.name},
            clock=self._clock,
        )
        return app

    def enable(self, session: Session, principal: Principal, client_id: str) -> tuple[Application, int]:
        """Re-enable a disabled application: its client secret (or bound certificate) works
        again. OIDC tokens and unused authorization codes granted before it was disabled are
        revoked (and expired), so re-enabling never brings back a grant made before; returns
        the application and the number of tokens revoked. Enabling an active one: 409."""
        self._require_security_admin(principal, "enable applications")
        app = self.get(session, client_id)
        if not app.disabled:
            raise ConflictError(
                f"application {app.name!r} is not disabled",
                field="client_id",
                code="authz.application_active",
                params={"name": app.name},
            )
        disabled_at = app.disabled_at
        app.disabled = False
        app.disabled_at = None
        revoked = self._revoke_tokens(session, app, None, "application disabled")
        expired = self._expire_codes(session, app, None)
        audit.record(
            session,
            principal,
            AuthzEvent.APPLICATION_ENABLE.value,
            object_type="application",
            object_id=client_id,
            details={
                "name": app.name,
                "disabled_at": audit.timestamp(disabled_at) if disabled_at is not None else None,
                "tokens_revoked": revoked,
                "codes_expired": expired,
            },
            clock=self._clock,
        )
        return app, revoked

    def rotate_secret(self, session: Session, principal: Principal, client_id: str) -> tuple[Application, str]:
        """A new 256-bit client secret for a confidential client (a disabled one too: rotate,
        then enable). Returns it once; only its SHA-256 is stored, and the old secret stops
        working at once (no overlap: the application must be given the new one before it
        next authenticates; the dedicated decision server's credential cache drops the old
        one within ``GOVPKI_AUTHZ_POLICY_REFRESH_MS``). Tokens already issued stay; refreshing
        them needs the new secret. A public client has no secret: 409
        ``authz.public_client``. The audit record never holds the secret."""
        self._require_security_admin(principal, "rotate the client secrets of applications")
        app = self.get(session, client_id)
        if app.client_type != "confidential":
            raise ConflictError(
                f"application {app.name!r} is a public client: it has no client secret",
                field="client_id",
                code="authz.public_client",
                params={"name": app.name},
            )
        secret = secrets.token_urlsafe(32)  # 256 bits
        app.secret_sha256 = hashlib.sha256(secret.encode("ascii")).hexdigest()
        audit.record(
            session,
            principal,
            AuthzEvent.APPLICATION_SECRET_ROTATE.value,
            object_type="application",
            object_id=client_id,
            details={"name": app.name, "disabled": app.disabled},
            clock=self._clock,
        )
        return app, secret

    def update(
        self,
        session: Session,
        principal: Principal,
        client_id: str,
        *,
        scopes: Sequence[str] | None = None,
        redirect_uris: Sequence[str] | None = None,
        post_logout_redirect_uris: Sequence[str] | None = None,
    ) -> ApplicationUpdate:
        """Replace the application's scopes and/or (post-logout) redirect URIs; None keeps a
        list. The result is checked as at registration (exact URIs; an OIDC client needs a
        redirect URI; a public client only OIDC scopes); the client type never changes.

        Like an identity provider that narrows a client: OIDC tokens (the whole refresh
        family) granted with a scope that is no longer registered are revoked, and unused
        authorization codes with such a scope or a redirect URI no longer registered are
        expired; tokens within the new scopes stay. Audited with the settings before and
        after (nothing is written when nothing changes)."""
        self._require_security_admin(principal, "update applications")
        app = self.get(session, client_id)
        before = _settings(app)
        wanted, redirects, after_logout = _client_settings(
            app.client_type,
            before["scopes"] if scopes is None else scopes,
            before["redirect_uris"] if redirect_uris is None else redirect_uris,
            before["post_logout_redirect_uris"] if post_logout_redirect_uris is None else post_logout_redirect_uris,
        )
        after = {"scopes": wanted, "redirect_uris": redirects, "post_logout_redirect_uris": after_logout}
        changed = tuple(key for key in after if after[key] != before[key])
        if not changed:
            return ApplicationUpdate(app, (), 0, 0)
        app.scopes = " ".join(wanted)
        app.redirect_uris = json.dumps(redirects)
        app.post_logout_redirect_uris = json.dumps(after_logout)
        allowed = frozenset(wanted)
        revoked = self._revoke_tokens(session, app, allowed, "scope no longer registered")
        expired = self._expire_codes(session, app, (allowed, frozenset(redirects)))
        audit.record(
            session,
            principal,
            AuthzEvent.APPLICATION_UPDATE.value,
            object_type="application",
            object_id=client_id,
            details={
                "name": app.name,
                "changed": list(changed),
                "before": {key: before[key] for key in changed},
                "after": {key: after[key] for key in changed},
                "tokens_revoked": revoked,
                "codes_expired": expired,
            },
            clock=self._clock,
        )
        return ApplicationUpdate(app, changed, revoked, expired)

    def _revoke_tokens(self, session: Session, app: Application, allowed: frozenset[str] | None, reason: str) -> int:
        """Revoke the live OIDC token families of ``app`` (those with a scope outside ``allowed``;
        every one when None). Returns the number of tokens revoked."""
        rows = session.execute(
            select(OidcToken.family_id, OidcToken.scope).where(
                OidcToken.application_id == app.id, OidcToken.revoked_at.is_(None)
            )
        ).all()
        families = {
            family for family, scope in rows if family is not None and (allowed is None or set(scope.split()) - allowed)
        }
        if not families:
            return 0
        done = session.execute(
            update(OidcToken)
            .where(
                OidcToken.application_id == app.id,
                OidcToken.family_id.in_(sorted(families)),
                OidcToken.revoked_at.is_(None),
            )
            .values(revoked_at=self._clock.now(), revoked_reason=reason)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(done, "rowcount", 0) or 0)

    def _expire_codes(
        self, session: Session, app: Application, allowed: tuple[frozenset[str], frozenset[str]] | None
    ) -> int:
        """Expire the unused, unexpired authorization codes of ``app`` (those with a scope or
        redirect URI outside ``allowed`` = (scopes, redirect URIs); every one when None)."""
        now = self._clock.now()
        rows = session.execute(
            select(OidcCode.id, OidcCode.scope, OidcCode.redirect_uri).where(
                OidcCode.application_id == app.id, OidcCode.used_at.is_(None), OidcCode.expires_at > now
            )
        ).all()
        ids = [
            code_id
            for code_id, scope, redirect in rows
            if allowed is None or set(scope.split()) - allowed[0] or redirect not in allowed[1]
        ]
        if ids:
            session.execute(
                update(OidcCode)
                .where(OidcCode.id.in_(ids))
                .values(expires_at=now)
                .execution_options(synchronize_session=False)
            )
        return len(ids)

    def bind_certificate(
        self, session: Session, principal: Principal, client_id: str, certificate: bytes | None
    ) -> Application:
        """Bind a client certificate (PEM or DER) to the application, replacing any bound before,
        or remove the binding (``certificate`` None). The application may then authenticate by
        mutual TLS through the trusted front (:mod:`authz.certlogin`) with exactly this
        certificate (matched by SHA-256), while it is valid for client authentication."""
        self._require_security_admin(principal, "bind certificates to applications")
        app = session.scalar(select(Application).where(Application.client_id == client_id))
        if app is None:
            raise NotFoundError(
                f"no application with client_id {client_id!r}",
                field="client_id",
                code="authz.application_not_found",
                params={"client_id": client_id},
            )
        if certificate is None:
            if app.cert_sha256 is None:
                raise ConflictError(
                    f"application {app.name!r} has no bound certificate",
                    field="client_id",
                    code="authz.no_bound_certificate",
                    params={"name": app.name},
                )
            details = {"name": app.name, "sha256": app.cert_sha256, "serial": app.cert_serial}
            app.cert_sha256 = app.cert_issuer = app.cert_serial = None
            app.cert_bound_at = None
            event = AuthzEvent.APPLICATION_UNBIND_CERT
        else:
            cert, der = _client_certificate(certificate)
            fingerprint = hashlib.sha256(der).hexdigest()
            other = session.scalar(
                select(Application.name).where(Application.cert_sha256 == fingerprint, Application.id != app.id)
            )
            if other is not None:
                raise ConflictError(
                    f"this certificate is bound to application {other!r}",
                    field="certificate",
                    code="authz.certificate_bound",
                    params={"name": other},
                )
            app.cert_sha256 = fingerprint
            app.cert_issuer = cert.issuer.rfc4514_string()
            app.cert_serial = format(cert.serial_number, "x")
            app.cert_bound_at = self._clock.now()
            details = {"name": app.name, "sha256": fingerprint, "serial": app.cert_serial, "issuer": app.cert_issuer}
            event = AuthzEvent.APPLICATION_BIND_CERT
        audit.record(
            session,
            principal,
            event.value,
            object_type="application",
            object_id=client_id,
            details=details,
            clock=self._clock,
        )
        return app

    def authenticate(self, session: Session, client_id: str | None, secret: str | None) -> Principal:
        """Client credentials to a principal. Unknown client, disabled client and wrong
        secret are the same error; the digest is compared in constant time either way."""
        if not client_id or secret is None:
            raise UnauthenticatedError(
                "client credentials are required: HTTP Basic with client_id and client_secret", field="authorization"
            )
        app = None
        if len(client_id) <= 64:
            app = session.scalar(select(Application).where(Application.client_id == client_id))
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
        stored = app.secret_sha256 if app is not None and app.secret_sha256 is not None else _DUMMY_DIGEST
        ok = hmac.compare_digest(stored, digest)
        if app is None or not ok or app.disabled or app.secret_sha256 is None:
            raise UnauthenticatedError("the client credentials are not valid", field="authorization")
        return application_principal(app)

    def append_events(
        self, session: Session, principal: Principal, events: Sequence[Any], *, batch: bool
    ) -> AppendResult:
        """Schema-check every event, then append them all (one batch, one transaction) to
        the audit chain with the application as their source. One bad event: an
        :class:`InvalidError` naming ``events[i].field`` (``field`` alone when ``batch`` is
        false) and nothing appended."""
        if principal.kind is not PrincipalKind.APPLICATION:
            raise ForbiddenError("only a registered application may append application audit events")
        if AUDIT_WRITE not in principal.scopes:
            raise ForbiddenError(f"application {principal.name!r} lacks the scope {AUDIT_WRITE!r}")
        if not 1 <= len(events) <= MAX_BATCH:
            raise InvalidError(f"must hold 1-{MAX_BATCH} events", field="events")
        prefix = f"{PrincipalKind.APPLICATION.value}:{principal.name}/"
        source = {"application": principal.name, "client_id": principal.id}
        entries: list[NewEntry] = []
        problems: list[FieldProblem] = []
        for i, event in enumerate(events):
            try:
                actor, action, object_type, object_id, outcome, occurred_at, details = check_event(
                    event, f"events[{i}]." if batch else ""
                )
            except InvalidError as exc:
                problems.extend(exc.problems)
                if len(problems) >= 20:
                    break
                continue
            if problems:
                continue
            text = audit.canonical_json({"data": details, "occurred_at": occurred_at, "source": source})
            entries.append(NewEntry(prefix + actor, action, object_type, object_id, outcome=outcome, details_text=text))
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more: see errors)" if len(problems) > 1 else ""
            raise InvalidError(first.reason + more, field=first.field, problems=problems, code="audit.invalid_event")
        return AppendResult(audit.record_many(session, entries, clock=self._clock))
