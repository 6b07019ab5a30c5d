"""Checks shared by the key store tests: sign real X.509 objects with a signer handle."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keymgmt import PublicKey, SignerHandle, signature_hash


def _hash(public: PublicKey) -> hashes.SHA256 | hashes.SHA384:
    # signature_hash() is typed HashAlgorithm; the builders' sign() wants a SHA-2/3 type.
    algorithm = signature_hash(public)
    assert isinstance(algorithm, hashes.SHA256 | hashes.SHA384)
    return algorithm


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def sign_certificate(signer: SignerHandle, cn: str = "keymgmt test") -> x509.Certificate:
    """A self-signed CA certificate made by ``CertificateBuilder.sign`` with ``signer``;
    its signature is verified before it is returned."""
    now = dt.datetime.now(dt.UTC)
    public = signer.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, _hash(public))
    )
    cert.verify_directly_issued_by(cert)
    assert cert.public_key() == public
    assert type(cert.signature_hash_algorithm) is type(signature_hash(public))
    if isinstance(public, ec.EllipticCurvePublicKey):
        assert cert.signature[0] == 0x30  # DER ECDSA-Sig-Value
    return cert


def sign_crl(signer: SignerHandle, issuer: x509.Certificate) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.UTC)
    revoked = x509.RevokedCertificateBuilder().serial_number(12345).revocation_date(now).build()
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=1))
        .add_revoked_certificate(revoked)
        .sign(signer, _hash(signer.public_key()))
    )
    assert crl.is_signature_valid(signer.public_key())
    return crl
