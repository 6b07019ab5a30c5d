"""A key store in a folder: one passphrase-encrypted PKCS#8 PEM file per key.

Handles are ``file:<label>``; the key of label ``L`` lives in ``<directory>/L.key.pem``.
The folder is kept 0700 and key files are 0600 from the moment they exist.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from govpki.config import KeyAlgorithm
from govpki.errors import ConflictError, InvalidError
from keymgmt._util import check_label, label_of, write_new_file
from keymgmt.interfaces import KeyNotFoundError, KeyStoreError, PublicKey, SignerHandle
from keymgmt.signers import wrap_private_key

_SUFFIX = ".key.pem"


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
        if path.exists():
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
