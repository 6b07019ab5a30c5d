"""A key store in a folder: one passphrase-encrypted PKCS#8 PEM file per key.

Handles are ``file:<label>``; the key of label ``L`` lives in ``<directory>/L.key.pem``.
A secret (AES-256) key lives in ``<directory>/L.secret.json``: the key sealed with
AES-256-GCM under a key derived from the passphrase with scrypt (salt and parameters in
the file, the label as associated data). The folder is kept 0700 and key files are 0600
from the moment they exist.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from govpki.config import KeyAlgorithm
from govpki.errors import ConflictError, InvalidError
from keymgmt._util import check_label, label_of, write_new_file
from keymgmt.interfaces import (
    GCM_NONCE_BYTES,
    KeyNotFoundError,
    KeyStoreError,
    PublicKey,
    SecretDecryptError,
    SignerHandle,
)
from keymgmt.signers import wrap_private_key

_SUFFIX = ".key.pem"
_SECRET_SUFFIX = ".secret.json"
_SECRET_FORMAT = "govpki-secret-aes256-gcm-scrypt-v1"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


def new_private_key(algorithm: KeyAlgorithm) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    bits = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}.get(algorithm)
    if bits is None:
        raise InvalidError(f"unknown key algorithm {algorithm!r}", field="algorithm")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


class FileKeyStore:
    """Keys encrypted with ``passphrase`` (PBES2/AES-256 via ``BestAvailableEncryption``).
    A key is decrypted once, on first use, and its signer is kept for the life of the store."""

    def __init__(self, directory: Path, passphrase: bytes) -> None:
        if not passphrase:
            raise KeyStoreError("the key store passphrase is empty", field="passphrase")
        self.directory = Path(directory)
        self._passphrase = bytes(passphrase)
        self._lock = threading.Lock()
        self._signers: dict[str, SignerHandle] = {}
        self._secrets: dict[str, AESGCM] = {}
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.directory.stat().st_mode & 0o077:
                self.directory.chmod(0o700)
        except OSError as exc:
            raise KeyStoreError(f"cannot use key directory {self.directory}: {exc.strerror}") from None

    @property
    def kind(self) -> Literal["file"]:
        return "file"

    def __repr__(self) -> str:
        return f"<FileKeyStore {str(self.directory)!r}>"

    def _path(self, label: str) -> Path:
        return self.directory / f"{label}{_SUFFIX}"

    def generate(self, label: str, algorithm: KeyAlgorithm) -> str:
        path = self._path(check_label(label))
        handle = f"file:{label}"
        conflict = ConflictError(f"a key labelled {label!r} already exists", field="label")
        if path.exists() or self._secret_path(label).exists():
            raise conflict
        key = new_private_key(algorithm)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        with self._lock:
            try:
                write_new_file(path, pem)
            except FileExistsError:
                raise conflict from None
            except OSError as exc:
                raise KeyStoreError(f"cannot write key file {path}: {exc.strerror}") from None
            self._signers[label] = wrap_private_key(handle, key)
        return handle

    def signer(self, handle: str) -> SignerHandle:
        label = label_of(handle, self.kind)
        with self._lock:
            signer = self._signers.get(label)
            if signer is None:
                signer = self._signers[label] = wrap_private_key(handle, self._load(label))
            return signer

    def _load(self, label: str) -> object:
        path = self._path(label)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyNotFoundError(f"no key labelled {label!r} in {self.directory}", field="handle") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            return serialization.load_pem_private_key(data, password=self._passphrase)
        except (ValueError, TypeError):
            # The library's message may quote parts of the file; say only what a person needs.
            raise KeyStoreError(f"cannot decrypt key {label!r}: wrong passphrase or damaged file") from None

    def public_key(self, handle: str) -> PublicKey:
        return self.signer(handle).public_key()

    def export_private_key_for_backup(self, handle: str) -> bytes:
        """The private key as unencrypted PKCS#8 DER, for :mod:`keymgmt.backup` only, which
        wraps it at once under a fresh data key. Signers never expose key material; this is
        the one narrow way out, and only for keys in files (an HSM key cannot leave its token)."""
        label = label_of(handle, self.kind)
        key = self._load(label)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyStoreError(f"key {label!r} is not an EC or RSA key")
        return key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def import_private_key_from_backup(self, label: str, pkcs8_der: bytes) -> str:
        """Store a key restored by :mod:`keymgmt.backup` under ``label`` (encrypted with this
        store's passphrase, 0600) and return its handle. An existing label is never replaced."""
        path = self._path(check_label(label))
        conflict = ConflictError(f"a key labelled {label!r} already exists in {self.directory}", field="label")
        if path.exists():
            raise conflict
        try:
            key = serialization.load_der_private_key(pkcs8_der, password=None)
        except (ValueError, TypeError):
            raise InvalidError("the restored key is not a PKCS#8 private key", field="key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise InvalidError("the restored key is not an EC or RSA key", field="key")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        handle = f"file:{label}"
        with self._lock:
            try:
                write_new_file(path, pem)
            except FileExistsError:
                raise conflict from None
            except OSError as exc:
                raise KeyStoreError(f"cannot write key file {path}: {exc.strerror}") from None
            self._signers[label] = wrap_private_key(handle, key)
        return handle

    def has(self, handle: str) -> bool:
        try:
            label = label_of(handle, self.kind)
        except KeyNotFoundError:
            return False
        return self._path(label).is_file()

    def destroy(self, handle: str) -> None:
        """Delete the key file (the passphrase-encrypted key; nothing in clear was ever on disk)."""
        label = label_of(handle, self.kind)
        path = self._path(label)
        with self._lock:
            self._signers.pop(label, None)
            try:
                path.unlink()
            except FileNotFoundError:
                raise KeyNotFoundError(f"no key labelled {label!r} in {self.directory}", field="handle") from None
            except OSError as exc:
                raise KeyStoreError(f"cannot delete key file {path}: {exc.strerror}") from None

    def labels(self) -> list[str]:
        """Labels of the keys in the folder, sorted."""
        return sorted(p.name[: -len(_SUFFIX)] for p in self.directory.glob(f"*{_SUFFIX}") if p.is_file())

    # ----- secret (AES-256) keys: the SecretKeyStore capability ---------------

    def _secret_path(self, label: str) -> Path:
        return self.directory / f"{label}{_SECRET_SUFFIX}"

    def _kek(self, salt: bytes, n: int, r: int, p: int) -> AESGCM:
        return AESGCM(Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(self._passphrase))

    def generate_secret(self, label: str) -> str:
        return self._seal_new(label, AESGCM.generate_key(bit_length=256))

    def export_secret_for_backup(self, handle: str) -> bytes:
        """The secret key's 32 bytes, for :mod:`keymgmt.backup` only, which wraps them at once
        under a fresh data key (the one narrow way out, as for private keys)."""
        return self._unseal(label_of(handle, self.kind))

    def import_secret_from_backup(self, label: str, secret: bytes) -> str:
        """Store a secret key restored by :mod:`keymgmt.backup` (sealed with this store's
        passphrase, 0600) and return its handle. An existing label is never replaced."""
        if len(secret) != 32:
            raise InvalidError("the restored secret key is not 256 bits", field="key")
        return self._seal_new(label, secret)

    def _seal_new(self, label: str, secret: bytes) -> str:
        path = self._secret_path(check_label(label))
        conflict = ConflictError(f"a key labelled {label!r} already exists", field="label")
        if path.exists() or self._path(label).exists():
            raise conflict
        salt, nonce = os.urandom(16), os.urandom(GCM_NONCE_BYTES)
        sealed = self._kek(salt, **_SCRYPT).encrypt(nonce, secret, f"govpki-secret:{label}".encode())
        document = {
            "format": _SECRET_FORMAT,
            "label": label,
            "kdf": {"name": "scrypt", "salt": base64.b64encode(salt).decode(), **_SCRYPT},
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }
        with self._lock:
            try:
                write_new_file(path, json.dumps(document, indent=1).encode() + b"\n")
            except FileExistsError:
                raise conflict from None
            except OSError as exc:
                raise KeyStoreError(f"cannot write key file {path}: {exc.strerror}") from None
            self._secrets[label] = AESGCM(secret)
        return f"file:{label}"

    def _secret(self, handle: str) -> AESGCM:
        label = label_of(handle, self.kind)
        with self._lock:
            cipher = self._secrets.get(label)
            if cipher is None:
                cipher = self._secrets[label] = self._load_secret(label)
            return cipher

    def _load_secret(self, label: str) -> AESGCM:
        return AESGCM(self._unseal(label))

    def _unseal(self, label: str) -> bytes:
        path = self._secret_path(label)
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise KeyNotFoundError(f"no secret key labelled {label!r} in {self.directory}", field="handle") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from None
        except ValueError:
            raise KeyStoreError(f"secret key file {path} is damaged (not JSON)") from None
        try:
            if document["format"] != _SECRET_FORMAT or document["kdf"]["name"] != "scrypt":
                raise KeyStoreError(f"secret key file {path} has an unknown format")
            kdf = document["kdf"]
            kek = self._kek(base64.b64decode(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
            secret = kek.decrypt(
                base64.b64decode(document["nonce"]),
                base64.b64decode(document["sealed"]),
                f"govpki-secret:{label}".encode(),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise KeyStoreError(f"secret key file {path} is damaged") from None
        except InvalidTag:
            raise KeyStoreError(f"cannot decrypt key {label!r}: wrong passphrase or damaged file") from None
        return secret

    def encrypt(self, handle: str, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(GCM_NONCE_BYTES)
        return nonce + self._secret(handle).encrypt(nonce, plaintext, aad)

    def decrypt(self, handle: str, ciphertext: bytes, aad: bytes) -> bytes:
        cipher = self._secret(handle)
        if len(ciphertext) < GCM_NONCE_BYTES + 16:
            raise SecretDecryptError("the ciphertext is too short to be sealed data", field="ciphertext")
        try:
            return cipher.decrypt(ciphertext[:GCM_NONCE_BYTES], ciphertext[GCM_NONCE_BYTES:], aad)
        except InvalidTag:
            raise SecretDecryptError(
                "the ciphertext does not authenticate under this key and associated data", field="ciphertext"
            ) from None

    def has_secret(self, handle: str) -> bool:
        try:
            label = label_of(handle, self.kind)
        except KeyNotFoundError:
            return False
        return self._secret_path(label).is_file()
