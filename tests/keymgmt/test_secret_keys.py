"""Secret (AES-256) keys in both key stores: seal and open with associated data; the
key never leaves the store (SoftHSM2: sensitive, not extractable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from govpki.errors import ConflictError
from keymgmt import (
    FileKeyStore,
    KeyExportRefusedError,
    KeyNotFoundError,
    KeyStoreError,
    Pkcs11KeyStore,
    SecretDecryptError,
    SecretKeyStore,
    open_keystore,
)
from tests.softhsm import softhsm_settings


@pytest.fixture(params=["file", "pkcs11"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecretKeyStore]:
    if request.param == "file":
        yield FileKeyStore(tmp_path / "keys", b"secret passphrase")
    else:
        found = open_keystore(softhsm_settings(tmp_path, "secret-keys"))
        assert isinstance(found, Pkcs11KeyStore)
        yield found


def test_seal_and_open_with_associated_data(store: SecretKeyStore):
    assert isinstance(store, SecretKeyStore)
    handle = store.generate_secret("kmc-storage-1")
    assert store.has_secret(handle) and not store.has_secret(f"{store.kind}:other")
    sealed = store.encrypt(handle, b"private key bytes", b"record 1")
    again = store.encrypt(handle, b"private key bytes", b"record 1")
    assert sealed != again  # a fresh nonce each time
    assert b"private key bytes" not in sealed
    assert len(sealed) == 12 + len(b"private key bytes") + 16
    assert store.decrypt(handle, sealed, b"record 1") == b"private key bytes"
    for bad_aad, bad_data in ((b"record 2", sealed), (b"record 1", sealed[:-1] + bytes([sealed[-1] ^ 1])), (b"", b"x")):
        with pytest.raises(SecretDecryptError) as caught:
            store.decrypt(handle, bad_data, bad_aad)
        assert caught.value.code == "keymgmt.decrypt_failed"
    # the store still works after a failed check
    assert store.decrypt(handle, again, b"record 1") == b"private key bytes"


def test_labels_are_shared_with_key_pairs(store: SecretKeyStore):
    store.generate_secret("shared")
    with pytest.raises(ConflictError):
        store.generate_secret("shared")
    with pytest.raises(ConflictError):
        store.generate("shared", "ec-p256")  # type: ignore[attr-defined]


def test_unknown_secret_key(store: SecretKeyStore):
    with pytest.raises(KeyNotFoundError):
        store.encrypt(f"{store.kind}:nothing-here", b"x", b"")


def test_file_secret_survives_a_reopen_and_needs_the_passphrase(tmp_path: Path):
    first = FileKeyStore(tmp_path / "keys", b"secret passphrase")
    handle = first.generate_secret("kmc")
    sealed = first.encrypt(handle, b"data", b"aad")
    path = tmp_path / "keys" / "kmc.secret.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert FileKeyStore(tmp_path / "keys", b"secret passphrase").decrypt(handle, sealed, b"aad") == b"data"
    with pytest.raises(KeyStoreError) as wrong:
        FileKeyStore(tmp_path / "keys", b"other passphrase").decrypt(handle, sealed, b"aad")
    assert "wrong passphrase" in wrong.value.reason
    path.chmod(0o600)
    path.write_text("{not json")
    with pytest.raises(KeyStoreError) as damaged:
        FileKeyStore(tmp_path / "keys", b"secret passphrase").decrypt(handle, sealed, b"aad")
    assert "damaged" in damaged.value.reason


def test_token_secret_key_is_protected(tmp_path: Path):
    found = open_keystore(softhsm_settings(tmp_path, "secret-protect"))
    assert isinstance(found, Pkcs11KeyStore)
    handle = found.generate_secret("kmc")
    protection = found.secret_protection(handle)
    assert protection.token and protection.private and protection.sensitive
    assert not protection.extractable and protection.always_sensitive and protection.never_extractable
    with pytest.raises(KeyExportRefusedError):
        found.export_secret(handle)
