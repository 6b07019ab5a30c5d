"""Shared fixtures. The database comes from GOVPKI_TEST_DATABASE_URL when set (the
test script points it at a throw-away PostgreSQL cluster); otherwise SQLite.
Every ``services`` fixture gets a fresh database and instance folder."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from ca import lint
from ca.models import CaKind, CertificateAuthority, CertificateRecord
from govpki.config import Config
from govpki.principal import SYSTEM
from tests.helpers import fresh_database, make_config, write_pem
from web.app import create_app
from web.bootstrap import InitReport, initialize
from web.container import Services, build_services

PEM = Encoding.PEM


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database(tmp_path)


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return make_config(tmp_path / "instance", database_url)


@pytest.fixture
def bare_services(config: Config) -> Iterator[Services]:
    """Migrated database and key stores, no CA yet."""
    services = build_services(config)
    try:
        yield services
    finally:
        services.dispose()


@pytest.fixture
def init_report(bare_services: Services) -> InitReport:
    return initialize(bare_services, SYSTEM)


@pytest.fixture
def services(bare_services: Services, init_report: InitReport, tmp_path: Path) -> Iterator[Services]:
    """Root CA, issuing CA, 14 RAs and the first security administrator.

    At teardown, every certificate the test got issued is checked: no pkilint
    ERROR/FATAL, and ``openssl verify -CAfile root -untrusted issuing`` accepts it."""
    yield bare_services
    check_every_issued_certificate(bare_services, tmp_path / "issued-check")


def check_every_issued_certificate(services: Services, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    with services.sessions() as session:
        root = services.ca.active_ca(session, CaKind.ROOT)
        issuing = session.scalars(select(CertificateAuthority).where(CertificateAuthority.kind == "issuing")).all()
        leaves = session.scalars(
            select(CertificateRecord).where(CertificateRecord.cert_der.is_not(None), CertificateRecord.ca_id != root.id)
        ).all()
        for record in leaves:
            assert record.cert_der is not None
            bad = [f for f in lint.lint_certificate(record.cert_der) if f.refuses]
            assert not bad, (record.serial, bad)
        if not leaves:
            return
        root_pem = write_pem(folder / "root.pem", root.cert_der)
        untrusted = folder / "issuing.pem"
        untrusted.write_bytes(b"".join(x509.load_der_x509_certificate(ca.cert_der).public_bytes(PEM) for ca in issuing))
        files = [str(write_pem(folder / f"{r.serial}.pem", r.cert_der or b"")) for r in leaves]
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(root_pem), "-untrusted", str(untrusted), *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def app(services: Services) -> Flask:
    return create_app(services.config, services=services)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def operator_token(services: Services) -> str:
    with services.sessions() as session:
        _token, secret = services.tokens.create(session, SYSTEM, name="test-operator", days=30)
        session.commit()
    return secret
