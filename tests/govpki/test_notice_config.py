"""Expiry notice and SMTP configuration: defaults, parsing, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from govpki.config import Config
from govpki.errors import ConfigError


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"GOVPKI_INSTANCE_DIR": str(tmp_path), **{f"GOVPKI_{k}": v for k, v in values.items()}}


def test_defaults_list_only(tmp_path: Path) -> None:
    config = Config.from_env(env(tmp_path))
    assert config.expiry_notice_days == (30,) and config.expiry_window_days == 30
    assert config.smtp is None and config.expiry_notice_ra_mailbox is None


def test_smtp_and_thresholds(tmp_path: Path) -> None:
    password = tmp_path / "smtp.pass"
    password.write_text("s3cret\n")
    config = Config.from_env(
        env(
            tmp_path,
            EXPIRY_NOTICE_DAYS="7, 30,1,7",
            EXPIRY_NOTICE_RA_MAILBOX="ra-{prefecture}@example.gov.cn",
            SMTP_HOST="mail.example.gov.cn",
            SMTP_PORT="587",
            SMTP_FROM="pki@example.gov.cn",
            SMTP_STARTTLS="1",
            SMTP_USERNAME="pki",
            SMTP_PASSWORD_FILE=str(password),
        )
    )
    assert config.expiry_notice_days == (30, 7, 1) and config.expiry_window_days == 30
    smtp = config.smtp
    assert smtp is not None and (smtp.host, smtp.port, smtp.sender, smtp.starttls) == (
        "mail.example.gov.cn",
        587,
        "pki@example.gov.cn",
        True,
    )
    assert smtp.username == "pki" and smtp.password() == "s3cret"
    assert "s3cret" not in repr(config)  # the password stays in its file


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"EXPIRY_NOTICE_DAYS": "30,x"}, "GOVPKI_EXPIRY_NOTICE_DAYS"),
        ({"EXPIRY_NOTICE_DAYS": "0"}, "GOVPKI_EXPIRY_NOTICE_DAYS"),
        ({"EXPIRY_NOTICE_RA_MAILBOX": "ra-{code}@example.gov.cn"}, "only the placeholder {prefecture}"),
        ({"EXPIRY_NOTICE_RA_MAILBOX": "not a mailbox"}, "GOVPKI_EXPIRY_NOTICE_RA_MAILBOX"),
        ({"SMTP_HOST": "mail.example.gov.cn"}, "GOVPKI_SMTP_FROM"),
        ({"SMTP_HOST": "m", "SMTP_FROM": "pki@localhost"}, "fully qualified"),
        ({"SMTP_HOST": "m", "SMTP_FROM": "pki@example.gov.cn", "SMTP_PORT": "70000"}, "GOVPKI_SMTP_PORT"),
        ({"SMTP_HOST": "m", "SMTP_FROM": "pki@example.gov.cn", "SMTP_STARTTLS": "yes"}, "GOVPKI_SMTP_STARTTLS"),
        ({"SMTP_HOST": "m", "SMTP_FROM": "pki@example.gov.cn", "SMTP_USERNAME": "u"}, "go together"),
        (
            {"SMTP_HOST": "m", "SMTP_FROM": "pki@example.gov.cn", "SMTP_USERNAME": "u", "SMTP_PASSWORD_FILE": "/no"},
            "not a readable file",
        ),
    ],
)
def test_bad_notice_settings_stop_start_up(tmp_path: Path, values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Config.from_env(env(tmp_path, **values))
