"""Helpers for the OIDC provider's tests: clients, a staff user signed in with password
and TOTP, PKCE pairs."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence

from flask.testing import FlaskClient

from govpki.principal import SYSTEM, Role
from tests.helpers import totp_code
from tests.web.test_ui import NEW_PASSWORD as PASSWORD
from tests.web.test_ui import SECRETS, Portal, post_form, sign_in, signed_in_as

OIDC = ("openid", "profile", "offline_access")


def register_client(
    portal: Portal,
    name: str,
    *,
    client_type: str = "confidential",
    redirect_uris: Sequence[str] = ("https://rp.example.gov.cn/callback",),
    post_logout: Sequence[str] = ("https://rp.example.gov.cn/bye",),
    scopes: Sequence[str] = OIDC,
) -> tuple[str, str | None]:
    with portal.services.sessions() as s:
        app, secret = portal.services.applications.register(
            s,
            SYSTEM,
            name=name,
            scopes=scopes,
            client_type=client_type,
            redirect_uris=redirect_uris,
            post_logout_redirect_uris=post_logout,
        )
        client_id = app.client_id
        s.commit()
    return client_id, secret


def two_factor_client(portal: Portal, role: Role = Role.CA_OPERATOR) -> tuple[FlaskClient, str]:
    """A new staff account (password changed, TOTP enrolled), signed in afresh in a new
    client with password and TOTP code: the session's amr is ["pwd", "otp"]."""
    _enrolled, username = signed_in_as(portal, role)
    client = portal.app.test_client()
    step = sign_in(client, username, PASSWORD)
    assert step.headers["Location"] == "/login/totp", step.get_data(as_text=True)
    done = post_form(client, "/login/totp", {"code": totp_code(SECRETS[username], 1)})
    assert done.status_code == 302, done.get_data(as_text=True)
    return client, username


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge
