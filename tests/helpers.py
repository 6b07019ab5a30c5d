"""Small builders for test inputs (keys, CSRs) and real-client checks (openssl, pkilint)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from ca import lint

AnyKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def csr_pem(
    key: AnyKey | None = None,
    *,
    cn: str | None = "svc.example.gov.cn",
    names: Sequence[x509.GeneralName] | None = None,
    attrs: Sequence[x509.NameAttribute] = (),
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = list(attrs)
    if cn is not None:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if names is None:
        names = [x509.DNSName(cn)] if cn else []
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def write_pem(path: Path, der: bytes) -> Path:
    path.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    return path


def openssl_verify(
    tmp: Path, root_der: bytes, issuing_der: bytes, leaf_der: bytes, *extra: str
) -> subprocess.CompletedProcess[str]:
    root = write_pem(tmp / "root.pem", root_der)
    issuing = write_pem(tmp / "issuing.pem", issuing_der)
    leaf = write_pem(tmp / "leaf.pem", leaf_der)
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(root), "-untrusted", str(issuing), *extra, str(leaf)],
        capture_output=True,
        text=True,
        check=False,
    )


def assert_lints_clean(der: bytes) -> None:
    bad = [f for f in lint.lint_certificate(der) if f.refuses]
    assert not bad, bad
