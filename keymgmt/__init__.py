"""Key management: key stores that make keys and hand out signer handles.

``open_keystore(settings)`` gives the store a :class:`~govpki.config.KeyStoreSettings`
describes, reading its passphrase or PIN from the named file.
"""

from __future__ import annotations

import secrets
from base64 import urlsafe_b64encode
from pathlib import Path

from govpki.config import KeyStoreSettings
from keymgmt._util import read_secret_file, write_new_file
from keymgmt.filestore import FileKeyStore
from keymgmt.interfaces import (
    KeyExportRefusedError,
    KeyNotFoundError,
    KeyStore,
    KeyStoreError,
    PublicKey,
    SecretDecryptError,
    SecretKeyStore,
    SignerHandle,
    signature_hash,
)
from keymgmt.pkcs11store import KeyProtection, Pkcs11KeyStore, reinitialize_module
from keymgmt.signers import EcSigner, RsaSigner

__all__ = [
    "EcSigner",
    "FileKeyStore",
    "KeyExportRefusedError",
    "KeyNotFoundError",
    "KeyProtection",
    "KeyStore",
    "KeyStoreError",
    "Pkcs11KeyStore",
    "PublicKey",
    "RsaSigner",
    "SecretDecryptError",
    "SecretKeyStore",
    "SignerHandle",
    "ensure_passphrase_file",
    "open_keystore",
    "reinitialize_module",
    "signature_hash",
]


def _required(value: Path | str | None, name: str, kind: str) -> Path:
    if value is None or value == "":
        raise KeyStoreError(f"a {kind} key store needs {name}", field=name)
    return Path(value)


def open_keystore(settings: KeyStoreSettings) -> KeyStore:
    """The key store ``settings`` describe. Raises :class:`KeyStoreError` if the passphrase
    or PIN file is missing or empty, the PIN is wrong or the token is not there."""
    if settings.kind == "file":
        directory = _required(settings.path, "path", "file")
        pass_file = _required(settings.passphrase_file, "passphrase_file", "file")
        passphrase = read_secret_file(pass_file, "passphrase", "passphrase_file")
        return FileKeyStore(directory, passphrase)
    if settings.kind == "pkcs11":
        module = _required(settings.pkcs11_module, "pkcs11_module", "pkcs11")
        label = str(_required(settings.pkcs11_token_label, "pkcs11_token_label", "pkcs11"))
        pin_file = _required(settings.pkcs11_pin_file, "pkcs11_pin_file", "pkcs11")
        try:
            pin = read_secret_file(pin_file, "PIN", "pkcs11_pin_file").decode("utf-8")
        except UnicodeDecodeError:
            raise KeyStoreError(f"PIN file {pin_file} is not UTF-8 text", field="pkcs11_pin_file") from None
        return Pkcs11KeyStore(module, label, pin)
    raise KeyStoreError(f"unknown key store kind {settings.kind!r}", field="kind")


def ensure_passphrase_file(path: Path) -> None:
    """Create ``path`` (mode 0600) holding a random passphrase (32 random bytes,
    URL-safe base64) unless it exists already. An existing file is never replaced."""
    path = Path(path)
    if path.exists():
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_new_file(path, urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
    except FileExistsError:
        pass  # made by someone else meanwhile: keep theirs
    except OSError as exc:
        raise KeyStoreError(f"cannot create passphrase file {path}: {exc.strerror}") from None
