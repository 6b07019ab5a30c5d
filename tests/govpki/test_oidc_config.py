"""The OIDC provider's lifetimes (GOVPKI_OIDC_*): defaults and start-up checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from govpki.config import Config
from govpki.errors import ConfigError


def test_oidc_defaults(tmp_path: Path) -> None:
    config = Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path)})
    assert (config.oidc_code_seconds, config.oidc_access_token_minutes) == (60, 10)
    assert (config.oidc_id_token_minutes, config.oidc_refresh_token_hours) == (10, 8)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GOVPKI_OIDC_CODE_SECONDS": "601"}, "GOVPKI_OIDC_CODE_SECONDS: must be at most 600"),
        ({"GOVPKI_OIDC_CODE_SECONDS": "5"}, "GOVPKI_OIDC_CODE_SECONDS: must be at least 10"),
        ({"GOVPKI_OIDC_ACCESS_TOKEN_MINUTES": "ten"}, "GOVPKI_OIDC_ACCESS_TOKEN_MINUTES"),
        ({"GOVPKI_OIDC_ID_TOKEN_MINUTES": "0"}, "GOVPKI_OIDC_ID_TOKEN_MINUTES"),
        (
            {"GOVPKI_OIDC_ACCESS_TOKEN_MINUTES": "120", "GOVPKI_OIDC_REFRESH_TOKEN_HOURS": "1"},
            "GOVPKI_OIDC_REFRESH_TOKEN_HOURS",
        ),
    ],
)
def test_bad_oidc_settings_stop_start_up(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path), **env})
