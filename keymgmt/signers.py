"""Signer handles: objects that ``cryptography``'s X.509 builders accept as private keys
but that can only sign. Every way of getting private key material out raises
:class:`KeyExportRefusedError`.

A signer hashes the data in software and hands the finished digest to a
:data:`DigestSigner` (a loaded software key or an HSM). EC signatures come back DER
encoded; RSA uses PKCS#1 v1.5 only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, Self, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric.padding import (
    AsymmetricPadding,
    PKCS1v15,
)
from cryptography.utils import Buffer

from govpki.errors import InvalidError
from keymgmt.interfaces import KeyExportRefusedError, KeyStoreError, SignerHandle

DigestSigner: TypeAlias = Callable[[bytes, hashes.HashAlgorithm], bytes]
"""``sign_digest(digest, hash_algorithm) -> signature`` for a digest made with that hash."""


def _digest(data: Buffer, algorithm: hashes.HashAlgorithm | utils.Prehashed) -> tuple[bytes, hashes.HashAlgorithm]:
    if isinstance(algorithm, utils.Prehashed):
        hash_algorithm: hashes.HashAlgorithm = algorithm._algorithm
        digest = bytes(data)
        if len(digest) != hash_algorithm.digest_size:
            raise InvalidError(f"prehashed data must be {hash_algorithm.digest_size} bytes for {hash_algorithm.name}")
        return digest, hash_algorithm
    if not isinstance(algorithm, hashes.HashAlgorithm):
        raise InvalidError(f"unsupported digest {type(algorithm).__name__}")
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize(), algorithm


class _Guarded:
    """Shared behaviour: a stable handle, no export, no pickling, copies are the same object."""

    handle: str
    _sign_digest: DigestSigner

    def _refuse(self, what: str) -> NoReturn:
        raise KeyExportRefusedError(f"key {self.handle!r}: {what} is not allowed for a signer handle", field="handle")

    def private_bytes(self, *args: object, **kwargs: object) -> NoReturn:
        self._refuse("exporting the private key")

    def private_numbers(self) -> NoReturn:
        self._refuse("reading the private numbers")

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self

    def __reduce__(self) -> NoReturn:
        self._refuse("pickling")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.handle!r}>"


class EcSigner(_Guarded, ec.EllipticCurvePrivateKey):
    """An EC key that signs with ECDSA (any hash, or ``Prehashed``)."""

    def __init__(self, handle: str, public_key: ec.EllipticCurvePublicKey, sign_digest: DigestSigner) -> None:
        self.handle = handle
        self._public_key = public_key
        self._sign_digest = sign_digest

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise InvalidError(f"key {self.handle!r} signs with ECDSA only")
        digest, hash_algorithm = _digest(data, signature_algorithm.algorithm)
        return self._sign_digest(digest, hash_algorithm)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> NoReturn:
        self._refuse("key agreement")


class RsaSigner(_Guarded, rsa.RSAPrivateKey):
    """An RSA key that signs with PKCS#1 v1.5 (any hash, or ``Prehashed``)."""

    def __init__(self, handle: str, public_key: rsa.RSAPublicKey, sign_digest: DigestSigner) -> None:
        self.handle = handle
        self._public_key = public_key
        self._sign_digest = sign_digest

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding, PKCS1v15):
            raise InvalidError(f"key {self.handle!r} signs with PKCS#1 v1.5 padding only")
        if isinstance(algorithm, utils.NoDigestInfo):
            raise InvalidError(f"key {self.handle!r} needs a digest algorithm to sign")
        digest, hash_algorithm = _digest(data, algorithm)
        return self._sign_digest(digest, hash_algorithm)

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> NoReturn:
        self._refuse("decryption")


def wrap_private_key(handle: str, key: object) -> SignerHandle:
    """A signer handle around a loaded ``cryptography`` private key (the file store)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ec_key = key

        def sign_ec(digest: bytes, hash_algorithm: hashes.HashAlgorithm) -> bytes:
            return ec_key.sign(digest, ec.ECDSA(utils.Prehashed(hash_algorithm)))

        return EcSigner(handle, key.public_key(), sign_ec)
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_key = key

        def sign_rsa(digest: bytes, hash_algorithm: hashes.HashAlgorithm) -> bytes:
            return rsa_key.sign(digest, PKCS1v15(), utils.Prehashed(hash_algorithm))

        return RsaSigner(handle, key.public_key(), sign_rsa)
    raise KeyStoreError(f"key {handle!r} is a {type(key).__name__}, not an EC or RSA key")
