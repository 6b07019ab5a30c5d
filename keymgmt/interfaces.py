"""What the rest of govpki sees of key management: a key store that makes keys and
hands out *signer handles*. A signer handle behaves like a ``cryptography`` private
key for signing (builders accept it), but never gives out private key material."""

from __future__ import annotations

from typing import Protocol, TypeAlias, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from govpki.config import KeyAlgorithm
from govpki.errors import GovpkiError, InvalidError, NotFoundError

SignerHandle: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyStoreError(GovpkiError):
    """The key store failed (device missing, wrong PIN or passphrase, I/O)."""

    code = "keymgmt.store_error"


class KeyNotFoundError(NotFoundError):
    code = "keymgmt.key_not_found"


class KeyExportRefusedError(InvalidError):
    code = "keymgmt.export_refused"


@runtime_checkable
class KeyStore(Protocol):
    """A place that holds private keys. Handles are opaque, stable strings that
    the database may store; the key material itself never leaves the store in clear."""

    @property
    def kind(self) -> str: ...

    def generate(self, label: str, algorithm: KeyAlgorithm) -> str:
        """Make a new key pair and return its handle. Labels are unique per store."""
        ...

    def signer(self, handle: str) -> SignerHandle:
        """A signer for the key: usable as ``private_key`` in cryptography builders."""
        ...

    def public_key(self, handle: str) -> PublicKey: ...

    def has(self, handle: str) -> bool: ...

    def destroy(self, handle: str) -> None:
        """Remove the key pair from the store for good (for a token: its objects).
        Raises :class:`KeyNotFoundError` when the store does not hold it."""
        ...


class SecretDecryptError(KeyStoreError):
    """Ciphertext under a secret key did not authenticate: wrong key, changed bytes or
    associated data that is not the data it was sealed with."""

    code = "keymgmt.decrypt_failed"


GCM_NONCE_BYTES = 12
"""Ciphertexts of :class:`SecretKeyStore` are ``nonce (12 bytes) || AES-GCM ciphertext || tag (16 bytes)``."""


@runtime_checkable
class SecretKeyStore(Protocol):
    """A store that can also hold AES-256 *secret* keys and encrypt with them (AES-GCM with
    associated data). A capability beside :class:`KeyStore`, used to wrap other keys (the
    key-management centre's storage key); the secret key itself never leaves the store.
    Secret and key-pair labels share one namespace per store."""

    @property
    def kind(self) -> str: ...

    def generate_secret(self, label: str) -> str:
        """Make a new AES-256 key and return its handle."""
        ...

    def encrypt(self, handle: str, plaintext: bytes, aad: bytes) -> bytes:
        """Seal ``plaintext`` bound to ``aad`` under a fresh random nonce."""
        ...

    def decrypt(self, handle: str, ciphertext: bytes, aad: bytes) -> bytes:
        """Open what :meth:`encrypt` sealed; raises :class:`SecretDecryptError` if it does not authenticate."""
        ...

    def has_secret(self, handle: str) -> bool: ...


def signature_hash(public_key: PublicKey) -> hashes.SHA256 | hashes.SHA384:
    """The hash a CA uses with this key: SHA-384 for P-384 and RSA ≥ 3072, else SHA-256."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return hashes.SHA384() if public_key.curve.key_size >= 384 else hashes.SHA256()
    return hashes.SHA384() if public_key.key_size >= 3072 else hashes.SHA256()
