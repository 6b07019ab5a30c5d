"""A small relying party that signs users in with govpki's OpenID Connect provider,
using authlib's Flask client: discovery, authorization code flow with PKCE (S256),
the ID token's claims, refresh, and RP-initiated logout.

Register it first (a security administrator)::

    govpki app register rp-demo --scope openid --scope profile --scope offline_access \\
        --redirect-uri http://127.0.0.1:5000/callback \\
        --post-logout-redirect-uri http://127.0.0.1:5000/logged-out

then run it::

    RP_ISSUER=http://127.0.0.1:8000 RP_CLIENT_ID=app_… RP_CLIENT_SECRET=… \\
        RP_BASE_URL=http://127.0.0.1:5000 python examples/rp_app.py

(``RP_CLIENT_SECRET`` empty for a public client.)
"""

from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.flask_client import OAuth
from flask import Flask, Response, jsonify, redirect, session
from flask.typing import ResponseReturnValue
from markupsafe import escape

SCOPE = "openid profile offline_access"


def create_rp(issuer: str, client_id: str, client_secret: str | None, base_url: str) -> Flask:
    app = Flask(__name__)
    app.secret_key = secrets.token_urlsafe(32)
    oauth = OAuth(app)
    kwargs: dict[str, Any] = {"scope": SCOPE, "code_challenge_method": "S256"}
    if not client_secret:
        kwargs["token_endpoint_auth_method"] = "none"
    provider = oauth.register(
        "govpki",
        client_id=client_id,
        client_secret=client_secret or None,
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs=kwargs,
    )
    redirect_uri = f"{base_url}/callback"
    after_logout = f"{base_url}/logged-out"

    @app.get("/")
    def index() -> str:
        claims = session.get("claims")
        if not claims:
            return '<p>Not signed in. <a href="/login">Sign in with govpki</a></p>'
        rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in sorted(claims.items()))
        return f'<h1>Signed in</h1><table id="claims">{rows}</table><p><a href="/logout">Sign out</a></p>'

    @app.get("/login")
    def login() -> Response:
        response: Response = provider.authorize_redirect(redirect_uri)
        return response

    @app.get("/callback")
    def callback() -> ResponseReturnValue:
        token = provider.authorize_access_token()  # checks state, PKCE, the ID token (signature, iss, aud, nonce)
        session["claims"] = dict(token["userinfo"])
        session["token"] = {k: token[k] for k in ("access_token", "refresh_token", "id_token") if k in token}
        return redirect("/")

    @app.get("/claims.json")
    def claims() -> Response:
        return jsonify(session.get("claims") or {})

    @app.get("/userinfo.json")
    def userinfo() -> Response:
        info = provider.userinfo(token={**session["token"], "token_type": "Bearer"})
        return jsonify(dict(info))

    @app.post("/refresh")
    def refresh() -> Response:
        token = provider.fetch_access_token(  # to the token endpoint from discovery; the refresh token rotates
            grant_type="refresh_token",
            refresh_token=session["token"]["refresh_token"],
        )
        fresh = {k: token[k] for k in ("access_token", "refresh_token", "id_token") if k in token}
        session["token"] = {**session["token"], **fresh}  # the sign-in's ID token stays for logout
        return jsonify({"refreshed": True})

    @app.get("/logout")
    def logout() -> ResponseReturnValue:
        metadata = provider.load_server_metadata()
        state = secrets.token_urlsafe(16)
        session["logout_state"] = state
        query = urlencode(
            {
                "id_token_hint": session.get("token", {}).get("id_token", ""),
                "post_logout_redirect_uri": after_logout,
                "state": state,
            }
        )
        return redirect(f"{metadata['end_session_endpoint']}?{query}")

    @app.get("/logged-out")
    def logged_out() -> str:
        session.pop("claims", None)
        session.pop("token", None)
        return "<p>Signed out.</p>"

    return app


if __name__ == "__main__":  # pragma: no cover
    rp = create_rp(
        os.environ["RP_ISSUER"],
        os.environ["RP_CLIENT_ID"],
        os.environ.get("RP_CLIENT_SECRET"),
        os.environ.get("RP_BASE_URL", "http://127.0.0.1:5000"),
    )
    rp.run(host="127.0.0.1", port=5000)
