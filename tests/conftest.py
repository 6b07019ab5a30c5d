"""Shared fixtures. The database comes from GOVPKI_TEST_DATABASE_URL when set (the
test script points it at a throw-away PostgreSQL cluster); otherwise SQLite.
Every ``services`` fixture gets a fresh database and instance folder."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from ca import lint
from ca.models import CaKind, CertificateAuthority, CertificateRecord
from govpki.config import Config
from govpki.principal import SYSTEM
from tests.helpers import write_pem
from web.app import create_app
from web.bootstrap import InitReport, initialize
from web.container import Services, build_services

PEM = Encoding.PEM

PG_ADMIN_URL = os.environ.get("GOVPKI_TEST_DATABASE_URL", "")


def _fresh_database(tmp: Path) -> Iterator[str]:
    if not PG_ADMIN_URL:
        yield f"sqlite:///{tmp / 'govpki.sqlite3'}"
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_config(instance: Path, database_url: str, **env: str) -> Config:
    values = {
        "GOVPKI_INSTANCE_DIR": str(instance),
        "GOVPKI_DATABASE_URL": database_url,
        "GOVPKI_TESTING": "1",
        "GOVPKI_ROOT_KEY_ALGORITHM": "ec-p384",
        "GOVPKI_ISSUING_KEY_ALGORITHM": "ec-p384",
    }
    values.update(env)
    return Config.from_env(values)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield from _fresh_database(tmp_path)


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
