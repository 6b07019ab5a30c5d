"""Shared fixtures. The database comes from GOVPKI_TEST_DATABASE_URL when set (the
test script points it at a throw-away PostgreSQL cluster); otherwise SQLite.
Every ``services`` fixture gets a fresh database and instance folder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from govpki.config import Config
from govpki.principal import SYSTEM
from web.app import create_app
from web.bootstrap import InitReport, initialize
from web.container import Services, build_services

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
def services(bare_services: Services, init_report: InitReport) -> Services:
    """Root CA, issuing CA, 14 RAs and the first security administrator."""
    return bare_services


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
