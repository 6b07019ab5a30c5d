"""The OCSP endpoint with real clients: `openssl ocsp` against a running server, GET
through the test client, and bad input that must get a clear OCSP answer and change nothing."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.serving import make_server

from ca.models import CaKind, OcspResponder, OcspResponse
from govpki.audit import AuditEntry
from govpki.principal import SYSTEM
from tests.helpers import csr_pem, write_pem
from web.container import Services

OCSP_REQ = {"Content-Type": "application/ocsp-request"}
DER = Encoding.DER


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/ocsp"
    finally:
        srv.shutdown()
        thread.join(5)


@pytest.fixture
def pki(services: Services, tmp_path: Path) -> dict[str, Path]:
    """root.pem, issuing.pem and two issued leaves (a.pem, b.pem)."""
    folder = tmp_path / "pki"
    folder.mkdir()
    with services.sessions() as session:
        root = services.ca.active_ca(session, CaKind.ROOT)
        issuing = services.ca.active_ca(session, CaKind.ISSUING)
        write_pem(folder / "root.pem", root.cert_der)
        write_pem(folder / "issuing.pem", issuing.cert_der)
        for name in ("a", "b"):
            record = services.ca.issue(
                session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=f"{name}.ocsp.example.gov.cn")
            )
            session.commit()
            write_pem(folder / f"{name}.pem", record.cert_der or b"")
    return {p.stem: p for p in folder.iterdir()}


def openssl_ocsp(pki: dict[str, Path], url: str, *args: str) -> str:
    result = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(pki["issuing"]), "-CAfile", str(pki["root"]), "-url", url, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    return out


def serial_of(path: Path) -> str:
    return format(x509.load_pem_x509_certificate(path.read_bytes()).serial_number, "x")


def test_openssl_good_revoked_hold_release_unknown(services: Services, pki: dict[str, Path], server: str):
    a, b = str(pki["a"]), str(pki["b"])
    out = openssl_ocsp(pki, server, "-cert", a, "-resp_text")  # with a nonce (openssl's default)
    assert f"{a}: good" in out and "Response verify OK" in out and "OCSP Nonce" in out
    out = openssl_ocsp(pki, server, "-no_nonce", "-cert", a)
    assert f"{a}: good" in out and "Response verify OK" in out
    out = openssl_ocsp(pki, server, "-no_nonce", "-sha256", "-cert", a, "-resp_text")
    assert "Hash Algorithm: sha256" in out and f"{a}: good" in out and "Response verify OK" in out
    # several requests in one message, one of them a serial this CA never issued
    out = openssl_ocsp(pki, server, "-cert", a, "-cert", b, "-serial", "0x1234567890abcdef", "-resp_text")
    assert f"{a}: good" in out and f"{b}: good" in out and "0x1234567890abcdef: unknown" in out
    assert out.count("Certificate ID:") == 3 and "Response verify OK" in out

    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, serial_of(pki["a"]), reason="keyCompromise")
        services.revocation.hold(session, SYSTEM, serial_of(pki["b"]))
        session.commit()
    for extra in ((), ("-no_nonce",)):
        out = openssl_ocsp(pki, server, *extra, "-cert", a, "-cert", b)
        assert f"{a}: revoked" in out and "Reason: keyCompromise" in out and "Revocation Time:" in out
        assert f"{b}: revoked" in out and "Reason: certificateHold" in out and "Response verify OK" in out
    out = openssl_ocsp(pki, server, "-no_nonce", "-cert", a)
    assert f"{a}: revoked" in out and "Reason: keyCompromise" in out

    with services.sessions() as session:
        services.revocation.release(session, SYSTEM, serial_of(pki["b"]))
        session.commit()
    out = openssl_ocsp(pki, server, "-no_nonce", "-cert", b)
    assert f"{b}: good" in out and "Response verify OK" in out


def _request(pki: dict[str, Path], *, digest: hashes.HashAlgorithm | None = None, nonce: bytes | None = None) -> bytes:
    leaf = x509.load_pem_x509_certificate(pki["a"].read_bytes())
    issuer = x509.load_pem_x509_certificate(pki["issuing"].read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, digest or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def test_get_in_every_base64_spelling_with_cache_headers(
    services: Services, pki: dict[str, Path], client: FlaskClient, tmp_path: Path
):
    subprocess.run(
        [
            *("openssl", "ocsp", "-issuer", str(pki["issuing"]), "-cert", str(pki["a"]), "-no_nonce"),
            "-reqout",
            str(tmp_path / "req.der"),
        ],
        check=True,
        capture_output=True,
    )
    der = (tmp_path / "req.der").read_bytes()
    std = base64.b64encode(der).decode()
    spellings = [std, quote(std, safe=""), base64.urlsafe_b64encode(der).decode().rstrip("=")]
    bodies = set()
    for path in spellings:
        response = client.get(f"/ocsp/{path}")
        assert response.status_code == 200, path
        assert response.content_type == "application/ocsp-response"
        parsed = ocsp.load_der_ocsp_response(response.data)
        assert parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert parsed.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert "max-age=" in response.headers["Cache-Control"]
        assert response.headers["Last-Modified"] and response.headers["Expires"] and response.headers["ETag"]
        bodies.add(response.data)
    assert len(bodies) == 1  # the same pre-signed bytes every time

    # the CA key never signs: the responder is the delegated OCSP signing certificate
    parsed = ocsp.load_der_ocsp_response(bodies.pop())
    responder_cert = parsed.certificates[0]
    eku = responder_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.OCSP_SIGNING in eku
    assert responder_cert.extensions.get_extension_for_oid(x509.OID_OCSP_NO_CHECK)
    issuing = x509.load_pem_x509_certificate(pki["issuing"].read_bytes())
    assert responder_cert.issuer == issuing.subject and responder_cert.subject != issuing.subject
    assert parsed.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(responder_cert.public_key()).digest
    with services.sessions() as session:
        responder = session.scalars(select(OcspResponder).where(OcspResponder.active.is_(True))).one()
        assert responder.cert_der == responder_cert.public_bytes(DER)

    # SHA-256 CertID and a nonce through POST
    response = client.post("/ocsp", data=_request(pki, digest=hashes.SHA256(), nonce=b"n" * 32), headers=OCSP_REQ)
    parsed = ocsp.load_der_ocsp_response(response.data)
    assert parsed.certificate_status is ocsp.OCSPCertStatus.GOOD and parsed.hash_algorithm.name == "sha256"
    nonce = parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert nonce == b"n" * 32
    assert response.headers["Cache-Control"] == "no-store"


def _counts(services: Services) -> tuple[int, int, int]:
    with services.sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(AuditEntry)) or 0,
            session.scalar(select(func.count()).select_from(OcspResponse)) or 0,
            session.scalar(select(func.count()).select_from(OcspResponder)) or 0,
        )


def test_bad_input_gets_a_clear_ocsp_status_and_changes_nothing(
    services: Services, pki: dict[str, Path], client: FlaskClient
):
    good = _request(pki)
    client.post("/ocsp", data=good, headers=OCSP_REQ)  # store the pre-signed answer first
    before = _counts(services)
    malformed = {
        "truncated": good[: len(good) // 2],
        "one byte short": good[:-1],
        "trailing garbage": good + b"\x00",
        "random": os.urandom(200),
        "empty": b"",
        "1 MB": b"\x30" * 1_000_000,
        "64-byte nonce": _request(pki, nonce=b"x" * 64),
    }
    for name, body in malformed.items():
        response = client.post("/ocsp", data=body, headers=OCSP_REQ)
        assert response.status_code == 200, name
        assert response.content_type == "application/ocsp-response", name
        status = ocsp.load_der_ocsp_response(response.data).response_status
        assert status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST, name
    for path in ("/ocsp/not*base64!", "/ocsp/%%%", "/ocsp/", "/ocsp/MA"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert ocsp.load_der_ocsp_response(response.data).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST

    # an issuer we do not serve, and the offline root (its CAs are on its ARL)
    key = ec.generate_private_key(ec.SECP256R1())
    stranger_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "stranger")])
    stranger = (
        x509.CertificateBuilder()
        .subject_name(stranger_name)
        .issuer_name(stranger_name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(leaf_time := x509.load_pem_x509_certificate(pki["a"].read_bytes()).not_valid_before_utc)
        .not_valid_after(leaf_time)
        .sign(key, hashes.SHA256())
    )
    leaf = x509.load_pem_x509_certificate(pki["a"].read_bytes())
    wrong_issuer = ocsp.OCSPRequestBuilder().add_certificate(leaf, stranger, hashes.SHA1()).build()
    issuing = x509.load_pem_x509_certificate(pki["issuing"].read_bytes())
    root = x509.load_pem_x509_certificate(pki["root"].read_bytes())
    root_issued = ocsp.OCSPRequestBuilder().add_certificate(issuing, root, hashes.SHA1()).build()
    for request in (wrong_issuer, root_issued):
        response = client.post("/ocsp", data=request.public_bytes(DER), headers=OCSP_REQ)
        assert ocsp.load_der_ocsp_response(response.data).response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED

    too_big = client.post("/ocsp", data=b"\x30" * (2 * 1024 * 1024), headers=OCSP_REQ)
    assert too_big.status_code == 413
    assert client.put("/ocsp", data=good).status_code == 405
    assert _counts(services) == before
