"""The issuance pipeline end to end: every certificate lints clean and openssl verifies it."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select

from ca.models import CaKind, CertificateRecord
from govpki.audit import AuditEntry, verify_chain
from govpki.errors import ForbiddenError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import assert_lints_clean, csr_pem, openssl_verify, write_pem
from web.container import Services

OPERATOR = Principal(PrincipalKind.API_TOKEN, "1", "op", frozenset({Role.CA_OPERATOR}))

CASES = [
    ("service-tls-server", ec.generate_private_key(ec.SECP256R1()), [x509.DNSName("svc.example.gov.cn")], "sslserver"),
    ("service-tls-client", rsa.generate_private_key(65537, 2048), [], "sslclient"),
    (
        "official-signing",
        ec.generate_private_key(ec.SECP384R1()),
        [x509.RFC822Name("zhang.san@xj.gov.cn")],
        "smimesign",
    ),
    ("official-encryption", rsa.generate_private_key(65537, 3072), [], "smimeencrypt"),
    # openssl's smimeencrypt purpose insists on keyEncipherment, which EC keys don't have
    ("official-encryption", ec.generate_private_key(ec.SECP256R1()), [], None),
    ("ocsp-signing", ec.generate_private_key(ec.SECP256R1()), [], None),
]


def _cas(services: Services) -> tuple[bytes, bytes]:
    with services.sessions() as s:
        return services.ca.active_ca(s, CaKind.ROOT).cert_der, services.ca.active_ca(s, CaKind.ISSUING).cert_der


@pytest.mark.parametrize(
    ("profile", "key", "names", "purpose"), CASES, ids=[f"{c[0]}-{type(c[1]).__name__}" for c in CASES]
)
def test_issue_each_profile_lints_and_verifies(services: Services, tmp_path: Path, profile, key, names, purpose):
    cn = "svc.example.gov.cn" if profile.startswith("service-tls-server") else "张三"
    with services.sessions() as session:
        record = services.ca.issue(session, OPERATOR, profile=profile, csr=csr_pem(key, cn=cn, names=names))
        session.commit()
    assert record.state == "issued"
    assert record.cert_der is not None
    cert = x509.load_der_x509_certificate(record.cert_der)
    assert_lints_clean(record.cert_der)
    root_der, issuing_der = _cas(services)
    extra = ("-purpose", purpose) if purpose else ()
    result = openssl_verify(tmp_path, root_der, issuing_der, record.cert_der, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    # subject: C, ST, O from the CA identity; CN from the request
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "CN"
    assert cert.subject.get_attributes_for_oid(NameOID.STATE_OR_PROVINCE_NAME)[0].value == services.config.province
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == services.config.organization
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    # serial: positive, at least 64 bits, recorded
    assert cert.serial_number >= 1 << 64
    assert record.serial == format(cert.serial_number, "x")
    # AIA and CRL DP in every end-entity certificate
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {d.access_method.dotted_string for d in aia} == {"1.3.6.1.5.5.7.48.1", "1.3.6.1.5.5.7.48.2"}
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value.startswith(services.config.base_url + "/crl/")
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert policies[0].policy_identifier.dotted_string == services.profiles.get(profile).policy_oid
    # the TBS stored before signing is exactly what was signed
    assert record.tbs_der is not None
    assert x509.load_der_x509_certificate(record.tbs_der).tbs_certificate_bytes == cert.tbs_certificate_bytes


def test_key_usage_follows_key_type_for_encryption(services: Services):
    with services.sessions() as session:
        ec_rec = services.ca.issue(session, OPERATOR, profile="official-encryption", csr=csr_pem(cn="李四", names=[]))
        rsa_rec = services.ca.issue(
            session,
            OPERATOR,
            profile="official-encryption",
            csr=csr_pem(rsa.generate_private_key(65537, 2048), cn="李四", names=[]),
        )
        session.commit()
    assert ec_rec.cert_der is not None and rsa_rec.cert_der is not None
    ec_ku = x509.load_der_x509_certificate(ec_rec.cert_der).extensions.get_extension_for_class(x509.KeyUsage).value
    rsa_ku = x509.load_der_x509_certificate(rsa_rec.cert_der).extensions.get_extension_for_class(x509.KeyUsage).value
    assert ec_ku.key_agreement and not ec_ku.key_encipherment
    assert rsa_ku.key_encipherment and not rsa_ku.key_agreement


def test_ca_hierarchy(services: Services, tmp_path: Path):
    root_der, issuing_der = _cas(services)
    root = x509.load_der_x509_certificate(root_der)
    issuing = x509.load_der_x509_certificate(issuing_der)
    assert root.subject == root.issuer
    assert issuing.issuer == root.subject
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    bc = issuing.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp384r1"
    for der in (root_der, issuing_der):
        assert_lints_clean(der)
    names = [a.oid for a in issuing.subject]
    assert names == [
        NameOID.COUNTRY_NAME,
        NameOID.STATE_OR_PROVINCE_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.COMMON_NAME,
    ]
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(write_pem(tmp_path / "root.pem", root_der)),
            str(write_pem(tmp_path / "issuing.pem", issuing_der)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_issuance_is_audited_and_chain_verifies(services: Services):
    with services.sessions() as session:
        before = session.scalar(select(func.count()).select_from(AuditEntry))
        record = services.ca.issue(session, OPERATOR, profile="service-tls-server", csr=csr_pem())
        session.commit()
    with services.sessions() as session:
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.object_id == record.serial).order_by(AuditEntry.seq)
        ).all()
        assert actions == ["ca:certificate:reserve", "ca:certificate:approve", "ca:certificate:issue"]
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == before + 3
        report = verify_chain(session)
        assert report.ok, report


def test_issuance_is_durable_whatever_the_caller_does(services: Services):
    """The ledger commits the certificate itself: a caller's rollback cannot lose it."""
    with services.sessions() as session:
        serial = services.ca.issue(session, OPERATOR, profile="service-tls-server", csr=csr_pem()).serial
        session.rollback()
    with services.sessions() as session:
        stored = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == serial)).one()
        assert stored.state == "issued" and stored.cert_der is not None
        assert verify_chain(session).ok


def test_issue_refuses_a_session_holding_writes(services: Services):
    """Rather than dead-lock on the audit head, a caller with uncommitted writes gets a clear error."""
    from govpki import audit

    with services.sessions() as session:
        audit.record(session, SYSTEM, "test:thing:touch", object_type="t", object_id="1")
        with pytest.raises(RuntimeError, match="without uncommitted writes"):
            services.ca.issue(session, OPERATOR, profile="service-tls-server", csr=csr_pem())
        session.rollback()


def test_roles_are_enforced(services: Services):
    auditor = Principal(PrincipalKind.ACCOUNT, "9", "aud", frozenset({Role.SECURITY_AUDITOR}))
    with services.sessions() as session, pytest.raises(ForbiddenError):
        services.ca.issue(session, auditor, profile="service-tls-server", csr=csr_pem())
    with services.sessions() as session, pytest.raises(ForbiddenError):
        services.ca.issue(session, OPERATOR, profile="subordinate-ca", csr=csr_pem())
    with services.sessions() as session:
        assert services.ca.list_certificates(session, auditor) is not None


def test_tls_server_eku_and_san(services: Services):
    with services.sessions() as session:
        record = services.ca.issue(
            session,
            SYSTEM,
            profile="service-tls-server",
            csr=csr_pem(
                cn="portal.xj.gov.cn",
                names=[x509.DNSName("portal.xj.gov.cn"), x509.IPAddress(ipaddress.ip_address("10.1.2.3"))],
            ),
        )
        session.commit()
    assert record.cert_der is not None
    cert = x509.load_der_x509_certificate(record.cert_der)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["portal.xj.gov.cn"]


def test_longest_chinese_common_name_fits(services: Services):
    """21 CJK characters are 63 UTF-8 bytes: within the 64 the X.509 library allows."""
    with services.sessions() as session:
        record = services.ca.issue(session, OPERATOR, profile="official-signing", csr=csr_pem(cn="新" * 21, names=[]))
        session.commit()
    assert record.state == "issued"
