"""Configuration: GOVPKI_* variables, secrets from files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from govpki.config import Config
from govpki.errors import ConfigError


def test_defaults(tmp_path: Path):
    config = Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path)})
    assert config.database_url == f"sqlite:///{tmp_path / 'govpki.sqlite3'}"
    assert config.listen_url == "http://127.0.0.1:8000"
    assert config.root_keystore.kind == "file" and config.root_keystore.path == tmp_path / "keys" / "root"
    assert config.online_keystore.path == tmp_path / "keys" / "online"
    assert config.root_keystore.path != config.online_keystore.path


def test_database_url_from_file(tmp_path: Path):
    secret = tmp_path / "db-url"
    secret.write_text("postgresql+psycopg://u:p@db/govpki\n")
    config = Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path), "GOVPKI_DATABASE_URL_FILE": str(secret)})
    assert config.database_url == "postgresql+psycopg://u:p@db/govpki"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GOVPKI_WORKERS": "two"}, "GOVPKI_WORKERS"),
        ({"GOVPKI_WORKERS": "0"}, "at least 1"),
        ({"GOVPKI_LISTEN": "8000"}, "HOST:PORT"),
        ({"GOVPKI_ROOT_KEY_ALGORITHM": "ed25519"}, "GOVPKI_ROOT_KEY_ALGORITHM"),
        ({"GOVPKI_KEYSTORE": "vault"}, "GOVPKI_KEYSTORE"),
        ({"GOVPKI_KEYSTORE": "pkcs11"}, "PKCS11_TOKEN_LABEL"),
        ({"GOVPKI_DATABASE_URL_FILE": "/nonexistent/secret"}, "cannot read"),
    ],
)
def test_bad_settings_name_the_variable(tmp_path: Path, env: dict[str, str], message: str):
    with pytest.raises(ConfigError, match=message):
        Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path), **env})


def test_audit_checkpoint_settings(tmp_path: Path):
    config = Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path)})
    assert config.audit_checkpoint_minutes == 60 and not config.audit_syslog
    assert config.checkpoint_file == tmp_path / "audit-checkpoints.jsonl"
    other = Config.from_env(
        {
            "GOVPKI_INSTANCE_DIR": str(tmp_path),
            "GOVPKI_AUDIT_CHECKPOINT_MINUTES": "5",
            "GOVPKI_AUDIT_CHECKPOINT_FILE": "/var/log/govpki/cp.jsonl",
            "GOVPKI_AUDIT_SYSLOG": "1",
        }
    )
    assert other.audit_checkpoint_minutes == 5 and other.audit_syslog
    assert other.checkpoint_file == Path("/var/log/govpki/cp.jsonl")
    with pytest.raises(ConfigError, match="GOVPKI_AUDIT_SYSLOG"):
        Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path), "GOVPKI_AUDIT_SYSLOG": "yes"})
    with pytest.raises(ConfigError, match="GOVPKI_AUDIT_CHECKPOINT_MINUTES"):
        Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path), "GOVPKI_AUDIT_CHECKPOINT_MINUTES": "0"})
