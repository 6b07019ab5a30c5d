"""``govpki app register`` for OIDC clients and ``govpki oidc rotate | keys``."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from authz.models import Application
from govpki.audit import AuditEntry
from web.cli import main
from web.container import Services


def run(services: Services, *args: str):
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_register_public_client_and_rotate_the_signing_key(bare_services: Services) -> None:
    result = run(
        bare_services,
        *("app", "register", "spa-portal", "--type", "public", "--scope", "openid", "--scope", "profile"),
        *(
            "--redirect-uri",
            "https://spa.example.gov.cn/cb",
            "--post-logout-redirect-uri",
            "https://spa.example.gov.cn/",
        ),
    )
    assert result.exit_code == 0, result.output
    assert "client_id=app_" in result.output and "client_secret" not in result.output
    with bare_services.sessions() as s:
        app = s.scalars(select(Application).where(Application.name == "spa-portal")).one()
        assert app.client_type == "public" and app.secret_sha256 is None
        assert json.loads(app.redirect_uris) == ["https://spa.example.gov.cn/cb"]
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "authz:application:register")).one()
        assert json.loads(entry.details)["client_type"] == "public"
    listed = run(bare_services, "app", "list")
    assert "public" in listed.output and "redirect_uri=https://spa.example.gov.cn/cb" in listed.output

    bad = run(bare_services, "app", "register", "bad-one", "--scope", "openid", "--redirect-uri", "http://x.example/cb")
    assert bad.exit_code != 0 and "redirect_uri" in bad.output

    assert run(bare_services, "oidc", "rotate").exit_code == 0
    assert run(bare_services, "oidc", "rotate").exit_code == 0
    keys = run(bare_services, "oidc", "keys").output.splitlines()
    assert len(keys) == 2 and all(" ES256 " in line for line in keys)  # the current and the previous key
    with bare_services.sessions() as s:
        rotations = s.scalars(select(AuditEntry).where(AuditEntry.action == "authz:oidc_key:rotate")).all()
        assert len(rotations) == 2
