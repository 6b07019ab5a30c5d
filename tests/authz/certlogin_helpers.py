"""Officials with issued certificates (through the RA workflow), for certificate sign-in tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from ca.models import CertificateRecord
from govpki.principal import SYSTEM
from ra.requests import RequestInput
from ra.subscribers import OfficialInput
from tests.helpers import csr_pem
from tests.ra.conftest import CLERK, OFFICER
from tests.ra.idnumbers import id_number
from web.container import Services

POLICY = "1.3.6.1.4.1.32473.6500.1.1"  # the official-signing profile's policy


@dataclass(frozen=True)
class IssuedOfficial:
    official_id: int
    key: ec.EllipticCurvePrivateKey
    cert_der: bytes  # the signing certificate (official-signing)
    serial: str
    encryption_der: bytes  # the encryption certificate of the dual pair (no clientAuth)

    @property
    def cert_pem(self) -> bytes:
        return pem(self.cert_der)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def header(der: bytes) -> str:
    """What nginx sends in X-Client-Cert ($ssl_client_escaped_cert): the URL-escaped PEM."""
    return quote(pem(der).decode("ascii"), safe="")


def prepare_ra(services: Services) -> None:
    with services.sessions() as session:
        services.subscribers.ensure_data_key(session, SYSTEM)
        services.kmc.ensure_storage_key(session, SYSTEM)
        session.commit()


def issue_official(services: Services, sequence: str = "123", name: str = "张三") -> IssuedOfficial:
    """Register an official (Urumqi, 财政局, 科长) and issue the dual pair through the RA workflow."""
    with services.sessions() as session:
        official = services.subscribers.register_official(
            session,
            CLERK,
            OfficialInput(name=name, id_number=id_number(sequence=sequence), department="财政局", title="科长"),
        )
        session.commit()
        official_id = official.id
    key = ec.generate_private_key(ec.SECP256R1())
    with services.sessions() as session:
        request = services.requests.submit(
            session, CLERK, RequestInput(kind="new", official_id=official_id, csr=csr_pem(key, cn=name, names=[]))
        )
        session.commit()
        request_id = request.id
    with services.sessions() as session:
        done = services.requests.approve(session, OFFICER, request_id, comment="ok")
        session.commit()
        serial = done.request.certificate_serial
        encryption_serial = done.request.encryption_serial
    assert serial and encryption_serial
    return IssuedOfficial(
        official_id, key, record_der(services, serial), serial, record_der(services, encryption_serial)
    )


def record_der(services: Services, serial: str) -> bytes:
    with services.sessions() as session:
        der = session.scalar(select(CertificateRecord.cert_der).where(CertificateRecord.serial == serial))
    assert der is not None
    return der


def issue_direct(
    services: Services, profile: str, cn: str, *, dns: bool = False
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A certificate straight from the CA (no RA request, so linked to no official)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] | None = None if dns else []
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile=profile, csr=csr_pem(key, cn=cn, names=names))
        session.commit()
        assert record.cert_der is not None
        return key, record.cert_der


def foreign_certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An official-looking certificate from a CA nobody here trusts."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unknown CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "张三")]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(POLICY), None)]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)
