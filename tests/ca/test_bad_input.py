"""Every bad CSR gets a clear InvalidError naming the field, and nothing is stored."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca.models import CaKind, CertificateRecord
from govpki.audit import AuditEntry
from govpki.errors import GovpkiError, InvalidError, NotFoundError
from govpki.principal import SYSTEM
from tests.helpers import csr_pem
from web.container import Services


def _tampered() -> bytes:
    der = x509.load_pem_x509_csr(csr_pem()).public_bytes(serialization.Encoding.DER)
    flipped = bytearray(der)
    flipped[-5] ^= 0x01  # inside the signature
    return bytes(flipped)


def _cn_altered() -> bytes:
    """Same signature, different subject: the CN text is changed after signing."""
    der = x509.load_pem_x509_csr(csr_pem(cn="aaa.example.gov.cn")).public_bytes(serialization.Encoding.DER)
    return der.replace(b"aaa.example", b"bbb.example", 1)


def _p192_csr() -> bytes:
    # cryptography can no longer make P-192 keys; a fixed P-192 CSR made with openssl
    return (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        b"MIHnMIGfAgEAMB0xGzAZBgNVBAMMEnN2Yy5leGFtcGxlLmdvdi5jbjBJMBMGByqG\n"
        b"SM49AgEGCCqGSM49AwEBAzIABHev3U+SXjIyDvyyOAi9pgPvQx8MMpmAWqT87TZe\n"
        b"gSvRKxGcc+b4E+1Fwi8yzKsFJKAwMC4GCSqGSIb3DQEJDjEhMB8wHQYDVR0RBBYw\n"
        b"FIISc3ZjLmV4YW1wbGUuZ292LmNuMAoGCCqGSM49BAMCAzcAMDQCGAVT1DQOGmnV\n"
        b"EAqbjjcfZsSLdzcJGjWjbgIYEVcfUSQQySqSvN1R0kgg8EvucZ+L7ilh\n"
        b"-----END CERTIFICATE REQUEST-----\n"
    )


BAD = {
    "bad-signature": ("service-tls-server", _tampered, "csr.signature"),
    "altered-subject": ("service-tls-server", _cn_altered, "csr.signature"),
    "rsa-1024": ("service-tls-server", lambda: csr_pem(rsa.generate_private_key(65537, 1024)), "csr.key"),
    "p-192": ("service-tls-server", _p192_csr, "csr.key"),
    "secp256k1": ("service-tls-server", lambda: csr_pem(ec.generate_private_key(ec.SECP256K1())), "csr.key"),
    "ed448": ("service-tls-server", lambda: csr_pem(ed448.Ed448PrivateKey.generate()), "csr.key"),
    "ed25519": ("service-tls-server", lambda: csr_pem(ed25519.Ed25519PrivateKey.generate()), "csr.key"),
    "tls-server-without-san": ("service-tls-server", lambda: csr_pem(names=[]), "csr.san"),
    "san-email-on-tls-server": (
        "service-tls-server",
        lambda: csr_pem(names=[x509.DNSName("svc.example.gov.cn"), x509.RFC822Name("a@b.cn")]),
        "csr.san[1]",
    ),
    "san-wildcard": ("service-tls-server", lambda: csr_pem(names=[x509.DNSName("*.example.gov.cn")]), "csr.san[0]"),
    "san-not-fqdn": ("service-tls-server", lambda: csr_pem(names=[x509.DNSName("bad_name")]), "csr.san[0]"),
    "san-dns-on-signing": (
        "official-signing",
        lambda: csr_pem(cn="张三", names=[x509.DNSName("a.gov.cn")]),
        "csr.san[0]",
    ),
    "cn-control-char": (
        "service-tls-server",
        lambda: csr_pem(cn="svc\x07.example.gov.cn", names=[x509.DNSName("a.gov.cn")]),
        "csr.subject.CN",
    ),
    "cn-newline": ("official-signing", lambda: csr_pem(cn="张三\n李四", names=[]), "csr.subject.CN"),
    "cn-too-long": (
        "official-signing",
        lambda: csr_pem(cn=None, names=[], attrs=[x509.NameAttribute(NameOID.COMMON_NAME, "张" * 65, _validate=False)]),
        "csr.subject.CN",
    ),
    "cn-too-many-utf8-bytes": (
        "official-signing",
        lambda: csr_pem(cn=None, names=[], attrs=[x509.NameAttribute(NameOID.COMMON_NAME, "新" * 22, _validate=False)]),
        "csr.subject.CN",
    ),
    "no-cn": ("official-signing", lambda: csr_pem(cn=None, names=[]), "csr.subject.CN"),
    "unknown-attribute": (
        "official-signing",
        lambda: csr_pem(cn="张三", names=[], attrs=[x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")]),
        "csr.subject.2.5.4.5",
    ),
    "pem-certificate-not-csr": (
        "service-tls-server",
        lambda: b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "csr",
    ),
    "garbage-der": ("service-tls-server", lambda: b"\x30\x82\x01\x00garbage", "csr"),
    "empty": ("service-tls-server", lambda: b"", "csr"),
    "huge": ("service-tls-server", lambda: b"A" * 70000, "csr"),
}


@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")  # cryptography, on the over-long CN
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_csr_is_refused_and_nothing_stored(services: Services, case: str):
    profile, make, field = BAD[case]
    data = make()
    with services.sessions() as session:
        records = session.scalar(select(func.count()).select_from(CertificateRecord))
        entries = session.scalar(select(func.count()).select_from(AuditEntry))
        with pytest.raises(InvalidError) as info:
            services.ca.issue(session, SYSTEM, profile=profile, csr=data)
        session.rollback()
    err = info.value
    assert err.field == field, (err.field, err.reason)
    assert err.reason and "Traceback" not in err.reason
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(CertificateRecord)) == records
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == entries


def test_unknown_profile(services: Services):
    with services.sessions() as session, pytest.raises(NotFoundError) as info:
        services.ca.issue(session, SYSTEM, profile="no-such-profile", csr=csr_pem())
    assert info.value.field == "profile"
    assert "service-tls-server" in info.value.reason  # lists the known ones


def test_rsa_small_exponent_refused(services: Services):
    # cryptography refuses to make e=3 keys; the check is exercised through the key check directly
    from ca.csr import _key_type

    key = rsa.generate_private_key(65537, 2048).public_key()
    numbers = rsa.RSAPublicNumbers(3, key.public_numbers().n)
    with pytest.raises(InvalidError, match="exponent 3"):
        _key_type(numbers.public_key(), services.profiles.get("service-tls-server"))


def test_lint_refusal_is_recorded_as_failed(services: Services, monkeypatch: pytest.MonkeyPatch):
    """A lint ERROR stops signing; the reservation is kept as 'failed' with the reason, and audited."""
    from ca import lint

    def refuse(der: bytes) -> list[lint.Finding]:
        raise lint.LintRefusedError([lint.Finding("test.forced", "ERROR", "certificate", "forced by the test")])

    monkeypatch.setattr(lint, "check", refuse)  # a lint ERROR cannot be provoked through a valid profile
    with services.sessions() as session:
        with pytest.raises(GovpkiError) as info:
            services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem())
        session.rollback()
    assert info.value.code == "ca.lint_refused"
    with services.sessions() as session:
        failed = session.scalars(select(CertificateRecord).where(CertificateRecord.state == "failed")).all()
        assert len(failed) == 1 and failed[0].cert_der is None and "test.forced" in (failed[0].failure or "")
        refused = session.scalars(select(AuditEntry).where(AuditEntry.action == "ca:certificate:refuse")).all()
        assert [e.object_id for e in refused] == [failed[0].serial]
        assert services.ca.active_ca(session, CaKind.ISSUING) is not None
