"""GOVPKI_KMC_* settings: where the storage key lives, the key algorithm, M of N."""

from __future__ import annotations

from pathlib import Path

import pytest

from govpki.config import Config
from govpki.errors import ConfigError


def test_kmc_defaults_use_the_online_store(tmp_path: Path):
    config = Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path)})
    assert config.kmc_keystore is None
    assert (config.kmc_key_algorithm, config.kmc_recovery_m, config.kmc_recovery_n) == ("rsa-2048", 2, 3)


def test_kmc_store_of_its_own(tmp_path: Path):
    config = Config.from_env(
        {
            "GOVPKI_INSTANCE_DIR": str(tmp_path),
            "GOVPKI_KMC_KEYSTORE": "file",
            "GOVPKI_KMC_KEY_ALGORITHM": "ec-p256",
            "GOVPKI_KMC_RECOVERY_M": "3",
            "GOVPKI_KMC_RECOVERY_N": "5",
        }
    )
    assert config.kmc_keystore is not None and config.kmc_keystore.kind == "file"
    assert config.kmc_keystore.path == tmp_path / "keys" / "kmc"
    assert config.kmc_keystore.passphrase_file == tmp_path / "keys" / "kmc.pass"
    assert (config.kmc_key_algorithm, config.kmc_recovery_m, config.kmc_recovery_n) == ("ec-p256", 3, 5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GOVPKI_KMC_RECOVERY_M": "1"}, "GOVPKI_KMC_RECOVERY_M: must be at least 2"),
        ({"GOVPKI_KMC_RECOVERY_M": "4"}, "cannot exceed GOVPKI_KMC_RECOVERY_N (3)"),
        ({"GOVPKI_KMC_KEY_ALGORITHM": "ec-p384"}, "GOVPKI_KMC_KEY_ALGORITHM: must be one of"),
        ({"GOVPKI_KMC_KEYSTORE": "pkcs11"}, "GOVPKI_KMC_PKCS11_TOKEN_LABEL"),
        ({"GOVPKI_KMC_KEYSTORE": "vault"}, "is not 'online', 'file' or 'pkcs11'"),
    ],
)
def test_bad_kmc_settings_name_the_variable(tmp_path: Path, env: dict[str, str], message: str):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"GOVPKI_INSTANCE_DIR": str(tmp_path), **env})
    assert message in str(caught.value)
