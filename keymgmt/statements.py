"""Signed statements: short canonical byte strings signed with an EC P-256 key of a
key store (audit checkpoints, transparency-log tree heads). Which key signs is the key
service's choice (``KeyService.signing_key``: the purpose's current key, rotated by the
key policy)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from govpki.config import KeyAlgorithm
from govpki.errors import InvalidError
from keymgmt.interfaces import KeyStore, PublicKey, signature_hash

KEY_ALGORITHM: KeyAlgorithm = "ec-p256"
SIGNATURE_ALGORITHM = "ecdsa-with-SHA256"


def public_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_statement(store: KeyStore, handle: str, data: bytes) -> bytes:
    signer = store.signer(handle)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise InvalidError(f"key {handle} must be an EC key to sign statements", field="key_handle")
    return signer.sign(data, ec.ECDSA(signature_hash(signer.public_key())))


def verify_statement(public_key_der: bytes, data: bytes, signature: bytes) -> bool:
    try:
        key = serialization.load_der_public_key(public_key_der)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(signature, data, ec.ECDSA(signature_hash(key)))
    except (InvalidSignature, ValueError):
        return False
    return True
