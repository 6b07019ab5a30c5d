"""Small builders for test inputs (keys, CSRs) and real-client checks (openssl, pkilint)."""

from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
import uuid
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from authz import totp
from ca import lint
from ca.models import CaKind, CertificateAuthority, CertificateRecord
from govpki.config import Config
from web.app import create_app
from web.bootstrap import initialize
from web.container import Services, build_services

PEM = Encoding.PEM
AnyKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def csr_pem(
    key: AnyKey | None = None,
    *,
    cn: str | None = "svc.example.gov.cn",
    names: Sequence[x509.GeneralName] | None = None,
    attrs: Sequence[x509.NameAttribute[str]] = (),
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


PG_ADMIN_URL = os.environ.get("GOVPKI_TEST_DATABASE_URL", "")


def fresh_database(tmp: Path) -> Generator[str, None, None]:
    """A new empty database (SQLite file, or a new PostgreSQL database); dropped when closed."""
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


def check_every_issued_certificate(services: Services, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    with services.sessions() as session:
        services.ca.active_ca(session, CaKind.ROOT)  # there is one
        # every root (after a root rollover the old one too) is trusted here
        roots = session.scalars(select(CertificateAuthority).where(CertificateAuthority.kind == "root")).all()
        issuing = session.scalars(select(CertificateAuthority).where(CertificateAuthority.kind == "issuing")).all()
        leaves = session.scalars(
            select(CertificateRecord).where(
                CertificateRecord.cert_der.is_not(None), CertificateRecord.ca_id.not_in([r.id for r in roots])
            )
        ).all()
        for record in leaves:
            assert record.cert_der is not None
            bad = [f for f in lint.lint_certificate(record.cert_der) if f.refuses]
            assert not bad, (record.serial, bad)
        if not leaves:
            return
        root_pem = folder / "root.pem"
        root_pem.write_bytes(b"".join(x509.load_der_x509_certificate(r.cert_der).public_bytes(PEM) for r in roots))
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


@contextmanager
def initialised_portal(folder: Path) -> Iterator[tuple[Flask, Services, str]]:
    """A fresh database and instance with the demo ceremony done: (app, services, one-time password)."""
    databases = fresh_database(folder)
    config = make_config(folder / "inst", next(databases))
    services = build_services(config)
    try:
        report = initialize(services)
        assert report.admin_password
        yield create_app(config, services=services), services, report.admin_password
    finally:
        services.dispose()
        databases.close()


_TOTP_SECRET = re.compile(r'id="totp-secret"[^>]*>([A-Z2-7 ]+)<')
_CSRF_TOKEN = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def totp_secret_on(page: str) -> str:
    """The TOTP secret the enrolment page shows in text (grouped by four)."""
    match = _TOTP_SECRET.search(page)
    assert match, "the page shows no TOTP secret"
    return match.group(1).replace(" ", "")


def totp_code(secret: str, steps_ahead: int = 0, at: _dt.datetime | None = None) -> str:
    """The code an authenticator app would show now (``steps_ahead``: a later 30 s step,
    still accepted within the ±1 window: a second sign-in in the same step as the last)."""
    return totp.code_at(secret, totp.time_step(at or _dt.datetime.now(_dt.UTC)) + steps_ahead)


def enrol_totp(client: FlaskClient, at: _dt.datetime | None = None) -> str:
    """Set up TOTP through the portal's enrolment page as a person would (read the key shown,
    type the app's code); returns the secret. The client is signed in with its password."""
    page = client.get("/totp/enrol")
    assert page.status_code == 200, page.headers.get("Location")
    body = page.get_data(as_text=True)
    secret = totp_secret_on(body)
    token = _CSRF_TOKEN.search(body)
    assert token
    done = client.post("/totp/enrol", data={"csrf_token": token.group(1), "code": totp_code(secret, 0, at)})
    assert done.status_code == 302, done.get_data(as_text=True)
    return secret
