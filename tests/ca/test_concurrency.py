"""Many threads issuing at once: unique serials, every record complete, a gap-free chain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509
from sqlalchemy import func, select

from ca.models import CertificateRecord
from govpki.audit import AuditEntry, verify_chain
from govpki.principal import SYSTEM
from tests.helpers import check_every_issued_certificate, csr_pem, make_config
from web.bootstrap import initialize
from web.container import Services, build_services


def test_parallel_issuance(services: Services):
    csrs = [csr_pem(cn=f"p{i}.example.gov.cn") for i in range(24)]

    def issue(csr: bytes) -> str:
        with services.sessions() as session:
            record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr)
            session.commit()
            return record.serial

    with services.sessions() as session:
        before = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        serials = list(pool.map(issue, csrs))
    assert len(set(serials)) == len(csrs)
    with services.sessions() as session:
        states = session.scalars(select(CertificateRecord.state).where(CertificateRecord.serial.in_(serials))).all()
        assert sorted(states) == ["issued"] * len(csrs)
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == before + 3 * len(csrs)
        report = verify_chain(session)
        assert report.ok, report


def test_rsa_4096_root_with_ecdsa_issuing_ca(tmp_path: Path, database_url: str):
    config = make_config(
        tmp_path / "instance",
        database_url,
        GOVPKI_ROOT_KEY_ALGORITHM="rsa-4096",
        GOVPKI_ISSUING_KEY_ALGORITHM="ec-p256",
        GOVPKI_ROOT_VALIDITY_DAYS="9000",
        GOVPKI_ISSUING_VALIDITY_DAYS="1000",
    )
    services = build_services(config)
    try:
        report = initialize(services, SYSTEM)
        assert report.root is not None and report.issuing is not None
        root = x509.load_der_x509_certificate(report.root.cert_der)
        assert root.public_key().key_size == 4096
        assert root.signature_hash_algorithm is not None and root.signature_hash_algorithm.name == "sha384"
        issuing = x509.load_der_x509_certificate(report.issuing.cert_der)
        assert (root.not_valid_after_utc - root.not_valid_before_utc).days == 9000
        assert (issuing.not_valid_after_utc - issuing.not_valid_before_utc).days == 1000
        with services.sessions() as session:
            services.ca.issue(session, SYSTEM, profile="official-signing", csr=csr_pem(cn="王五", names=[]))
            session.commit()
        check_every_issued_certificate(services, tmp_path / "check")
    finally:
        services.dispose()
