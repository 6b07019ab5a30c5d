"""Shared fixtures. The database comes from GOVPKI_TEST_DATABASE_URL when set (the
test script points it at a throw-away PostgreSQL cluster); otherwise SQLite.
Every ``services`` fixture gets a fresh database and instance folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask
from flask.testing import FlaskClient

from govpki.config import Config
from govpki.principal import SYSTEM
from tests.helpers import check_every_issued_certificate, fresh_database, make_config
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
