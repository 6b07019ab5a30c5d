"""The key policy has the secret keys' purposes; a policy file written before they existed
still loads (the built-in policy applies to them), one that names them is used as written."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from govpki.errors import ConfigError
from keymgmt.policy import DEFAULT_POLICY_FILE, KeyPurpose, load_key_policy


def _write_without(tmp_path: Path, *purposes: str, extra: str = "") -> Path:
    text = DEFAULT_POLICY_FILE.read_text(encoding="utf-8")
    for purpose in purposes:
        start = text.index(f"[purposes.{purpose}]")
        end = text.find("\n[", start + 1)
        text = text[:start] + (text[end + 1 :] if end != -1 else "")
    path = tmp_path / "policy.toml"
    path.write_text(text + extra, encoding="utf-8")
    assert all(p not in tomllib.loads(text)["purposes"] for p in purposes)
    return path


def test_the_built_in_policy_has_the_secret_keys() -> None:
    policy = load_key_policy()
    for purpose in (KeyPurpose.SUBSCRIBER_DATA, KeyPurpose.TOTP_SEALING):
        assert policy.get(purpose).algorithms == ("aes-256",)
        assert policy.get(purpose).overlap_days == 0


def test_an_older_policy_file_still_loads(tmp_path: Path) -> None:
    path = _write_without(tmp_path, "subscriber_data", "totp_sealing")
    policy = load_key_policy(path)
    assert policy.get(KeyPurpose.TOTP_SEALING).lifetime_days == 3650
    named = _write_without(
        tmp_path,
        "subscriber_data",
        "totp_sealing",
        extra='\n[purposes.totp_sealing]\nalgorithms = ["aes-256"]\nlifetime_days = 400\noverlap_days = 0\n',
    )
    assert load_key_policy(named).get(KeyPurpose.TOTP_SEALING).lifetime_days == 400


def test_other_missing_purposes_are_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit_signing"):
        load_key_policy(_write_without(tmp_path, "audit_signing"))
