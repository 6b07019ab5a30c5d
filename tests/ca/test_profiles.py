"""Profiles are validated at start-up; a bad one stops start-up with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.profiles import load_profiles
from govpki.config import Config
from govpki.errors import ConfigError
from web.container import build_services

DEFAULT = Path(__file__).resolve().parents[2] / "ca" / "data" / "profiles.toml"


def test_shipped_profiles_load():
    profiles = load_profiles(DEFAULT)
    assert set(profiles.profiles) == {
        "official-signing",
        "official-encryption",
        "service-tls-server",
        "service-tls-client",
        "ocsp-signing",
        "subordinate-ca",
    }
    assert profiles.get("service-tls-server").san_required
    assert profiles.get("subordinate-ca").path_length == 0
    assert profiles.get("ocsp-signing").ocsp_no_check


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("validity_days = 397", "validity_days = -1"), "profiles.service-tls-server.validity_days"),
        (
            (
                'key_types = ["rsa", "ec-p256", "ec-p384"]\nrsa_min_bits = 2048\nvalidity_days = 397',
                'key_types = ["dsa"]\nvalidity_days = 397',
            ),
            "key_types",
        ),
        (('policy_oid = "1.3.6.1.4.1.32473.6500.2.1"', 'policy_oid = "not-an-oid"'), "not a dotted OID"),
        (("san_required = true", "san_required = true\nsan_typo = 1"), "san_typo"),
        (('extended_key_usage = ["ocsp_signing"]', "extended_key_usage = []"), "ocsp_no_check needs"),
        (("format = 1", "format = 2"), "format"),
        (("[profiles.official-signing]", "[profiles.official-signing\n"), "not valid TOML"),
    ],
)
def test_bad_profile_stops_start_up(tmp_path: Path, edit: tuple[str, str], message: str):
    text = DEFAULT.read_text(encoding="utf-8")
    assert edit[0] in text
    bad = tmp_path / "profiles.toml"
    bad.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_profiles(bad)
    config = Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path / "i"), "GOVPKI_PROFILES_FILE": str(bad)})
    with pytest.raises(ConfigError, match=message):
        build_services(config)
