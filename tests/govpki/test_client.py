"""govpki.client over real HTTP: validate() against the Flask app on a local port,
ocsp_status() against a tiny OCSP responder built with cryptography's
OCSPResponseBuilder on an http.server thread."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from flask import Flask
from werkzeug.serving import make_server

from govpki.client import ClientError, GovpkiClient, OcspError
from govpki.principal import SYSTEM
from tests.ca.test_validation import _name, make_ca, make_leaf
from tests.helpers import csr_pem
from web.container import Services

HOST = "app.example.gov.cn"


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


def test_validate_over_http(base_url: str, operator_token: str, services: Services):
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=HOST))
        assert record.cert_der is not None
        der = record.cert_der
    client = GovpkiClient(base_url, token=operator_token, timeout=10)
    answer = client.validate(der, purpose="tls_server", host=HOST)
    assert answer.valid and answer.code == "validation.ok" and len(answer.path) == 3
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
    wrong = client.validate(pem, purpose="tls_server", host="other.example.gov.cn")
    assert not wrong.valid and wrong.code == "validation.hostname_mismatch"
    later = client.validate(der, purpose="tls_server", host=HOST, at=dt.datetime.now(dt.UTC) + dt.timedelta(days=900))
    assert later.code == "validation.expired"
    with pytest.raises(ClientError) as bad:
        client.validate(b"not a certificate", purpose="tls_client")
    assert bad.value.status == 422 and bad.value.fields == ["certificate"]
    with pytest.raises(ClientError) as missing:
        client.validate(der, purpose="tls_server")
    assert missing.value.fields == ["host"]
    with pytest.raises(ClientError) as anonymous:
        GovpkiClient(base_url, token="", timeout=10).validate(der, purpose="tls_client")
    assert anonymous.value.status == 401


# ----- a tiny OCSP responder ------------------------------------------------------------


class Responder:
    """Answers OCSP POSTs as told by ``mode``; a real HTTP exchange on 127.0.0.1."""

    def __init__(self, issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey) -> None:
        self.issuer, self.issuer_key = issuer, issuer_key
        self.mode = "good"
        self.revoked: set[int] = set()
        self.requests: list[tuple[str, bytes]] = []
        self.delegate = self._responder_cert(issuer, issuer_key, ocsp_eku=True)
        self.no_eku = self._responder_cert(issuer, issuer_key, ocsp_eku=False)
        stranger_root, stranger_key = make_ca("Stranger")
        self.stranger = self._responder_cert(stranger_root, stranger_key, ocsp_eku=True)

    @staticmethod
    def _responder_cert(
        issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, *, ocsp_eku: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("OCSP responder"))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
        )
        if ocsp_eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256()), key

    def answer(self, body: bytes) -> bytes:
        request = ocsp.load_der_ocsp_request(body)
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        now = dt.datetime.now(dt.UTC)
        revoked = request.serial_number in self.revoked
        cert = _CERTS[request.serial_number]
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=self.issuer,
            algorithm=request.hash_algorithm,
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=now - dt.timedelta(minutes=1),
            next_update=now - dt.timedelta(hours=1) if self.mode == "stale" else now + dt.timedelta(hours=1),
            revocation_time=now - dt.timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        builder = builder.add_extension(
            x509.OCSPNonce(b"\x00" * 16 if self.mode == "bad-nonce" else nonce), critical=False
        )
        signer, key = (self.issuer, self.issuer_key)
        if self.mode == "delegated":
            signer, key = self.delegate
        elif self.mode == "no-eku":
            signer, key = self.no_eku
        elif self.mode == "wrong-signer":
            signer, key = self.stranger
        if signer is not self.issuer:
            builder = builder.certificates([signer])
        response = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer).sign(key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)


_CERTS: dict[int, x509.Certificate] = {}


@pytest.fixture
def ocsp_server() -> Iterator[tuple[str, Responder, x509.Certificate, x509.Certificate]]:
    root, root_key = make_ca("OCSP Test CA")
    leaf, _ = make_leaf(root, root_key)
    _CERTS[leaf.serial_number] = leaf
    responder = Responder(root, root_key)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            responder.requests.append((self.headers["Content-Type"], body))
            data = responder.answer(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ocsp", responder, leaf, root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_ocsp_good_and_revoked(ocsp_server):
    url, responder, leaf, root = ocsp_server
    client = GovpkiClient("http://unused.invalid", timeout=5)
    good = client.ocsp_status(leaf, root, url=url)
    assert good.status == "good" and good.next_update is not None and good.revocation_time is None
    content_type, body = responder.requests[-1]
    assert content_type == "application/ocsp-request"
    assert ocsp.load_der_ocsp_request(body).serial_number == leaf.serial_number
    responder.revoked.add(leaf.serial_number)
    revoked = client.ocsp_status(
        leaf.public_bytes(serialization.Encoding.PEM), root, url=url, hash_algorithm=hashes.SHA1()
    )
    assert revoked.status == "revoked" and revoked.revocation_reason == "key_compromise"
    assert revoked.revocation_time is not None
    responder.mode = "delegated"
    assert client.ocsp_status(leaf, root, url=url).status == "revoked"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("bad-nonce", "nonce"),
        ("wrong-signer", "not issued by the certificate's issuer"),
        ("no-eku", "OCSPSigning"),
        ("stale", "out of date"),
    ],
)
def test_ocsp_answers_that_do_not_check_out(ocsp_server, mode: str, message: str):
    url, responder, leaf, root = ocsp_server
    responder.mode = mode
    with pytest.raises(OcspError, match=message):
        GovpkiClient("http://unused.invalid", timeout=5).ocsp_status(leaf, root, url=url)


def test_ocsp_for_another_issuer_and_unreachable(ocsp_server):
    url, _responder, leaf, _root = ocsp_server
    other_root, _ = make_ca("OCSP Test CA")  # same name, other key: CertID and signer do not match
    with pytest.raises(OcspError):
        GovpkiClient("http://unused.invalid", timeout=5).ocsp_status(leaf, other_root, url=url)
    with pytest.raises(OcspError, match="did not answer"):
        GovpkiClient("http://unused.invalid", timeout=2).ocsp_status(leaf, _root, url="http://127.0.0.1:9/ocsp")
    with pytest.raises(OcspError, match="no OCSP responder"):
        GovpkiClient("http://unused.invalid").ocsp_status(leaf, _root)


def test_ocsp_status_against_the_real_responder(base_url: str, services: Services):
    """The client library and govpki's own /ocsp agree: good, then revoked with the reason."""
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=HOST))
        issuer_der = record.ca.cert_der
        assert record.cert_der is not None
        leaf_der, serial = record.cert_der, record.serial
    client = GovpkiClient(base_url, timeout=10)
    good = client.ocsp_status(leaf_der, issuer_der, url=f"{base_url}/ocsp")
    assert good.status == "good" and good.next_update is not None
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, serial, reason="keyCompromise")
        session.commit()
    revoked = client.ocsp_status(leaf_der, issuer_der, url=f"{base_url}/ocsp", hash_algorithm=hashes.SHA256())
    assert revoked.status == "revoked" and revoked.revocation_reason == "key_compromise"
