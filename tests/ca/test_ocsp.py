"""The OCSP service: pre-signed responses follow every status change at once, the periodic
refresh re-signs and pre-signs, and the delegated responder rotates before it expires."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from sqlalchemy import func, select

from ca.models import CaKind, OcspResponder, OcspResponse
from ca.ocsp import OcspService
from govpki.audit import AuditEntry
from govpki.clock import UTC
from govpki.config import Config
from govpki.errors import InvalidError
from govpki.principal import SYSTEM
from tests.helpers import csr_pem, write_pem
from web.bootstrap import initialize
from web.cli import main
from web.container import Services, build_services


class MovableClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at


def _issue(services: Services, cn: str) -> x509.Certificate:
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn))
        session.commit()
    return x509.load_der_x509_certificate(record.cert_der or b"")


def _ask(services: Services, cert: x509.Certificate, digest: hashes.HashAlgorithm | None = None) -> ocsp.OCSPResponse:
    with services.sessions() as session:
        issuer = x509.load_der_x509_certificate(services.ca.active_ca(session, CaKind.ISSUING).cert_der)
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, digest or hashes.SHA1()).build()
    answer = services.ocsp.respond(request.public_bytes(Encoding.DER))
    return ocsp.load_der_ocsp_response(answer.der)


def _stored(services: Services, cert: x509.Certificate) -> dict[str, ocsp.OCSPResponse]:
    with services.sessions() as session:
        rows = session.scalars(select(OcspResponse).where(OcspResponse.serial == format(cert.serial_number, "x")))
        return {r.hash_algorithm: ocsp.load_der_ocsp_response(r.der) for r in rows}


def test_a_status_change_re_signs_the_stored_responses_in_its_transaction(services: Services):
    cert = _issue(services, "status.example.gov.cn")
    assert _ask(services, cert).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert set(_stored(services, cert)) == {"sha1"}  # signed on first request and kept

    serial = format(cert.serial_number, "x")
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, serial, reason="keyCompromise")
        session.commit()
    stored = _stored(services, cert)
    assert set(stored) == {"sha1", "sha256"}
    for response in stored.values():
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason is x509.ReasonFlags.key_compromise
    answer = _ask(services, cert, hashes.SHA256())
    assert answer.revocation_reason is x509.ReasonFlags.key_compromise and answer.revocation_time_utc is not None


def test_a_failed_signature_rolls_the_status_change_back(services: Services, monkeypatch: pytest.MonkeyPatch):
    cert = _issue(services, "failclosed.example.gov.cn")

    def broken(*_args: object, **_kwargs: object) -> bytes:
        raise RuntimeError("HSM unplugged")

    monkeypatch.setattr(OcspService, "_sign", broken)
    with services.sessions() as session, pytest.raises(RuntimeError):
        services.revocation.revoke(session, SYSTEM, format(cert.serial_number, "x"), reason="superseded")
    monkeypatch.undo()
    with services.sessions() as session:
        status = services.revocation.status(session, format(cert.serial_number, "x"))
    assert status.status.value == "good"
    assert _ask(services, cert).certificate_status is ocsp.OCSPCertStatus.GOOD


def test_refresh_due_pre_signs_missing_and_re_signs_old_responses(services: Services):
    certs = [_issue(services, f"bulk{i}.example.gov.cn") for i in range(3)]
    with services.sessions() as session:
        seen: list[int] = []
        report = services.ocsp.refresh_due(session, SYSTEM, progress=seen.append, checkpoint=session.commit)
        session.commit()
    # the three leaves and the responder's own certificate
    assert report.presigned == 4 and report.resigned == 0 and report.rotated == [] and sum(seen) == 4
    assert all(_stored(services, c)["sha1"].certificate_status is ocsp.OCSPCertStatus.GOOD for c in certs)
    with services.sessions() as session:
        assert services.ocsp.refresh_due(session, SYSTEM).total == 0  # nothing due
        assert services.ocsp.pending(session) == 0


@pytest.fixture
def past(tmp_path: Path, config: Config) -> Iterator[tuple[Services, MovableClock]]:
    """An instance set up 24 days ago (the responder certificate has 6 of its 30 days left)."""
    clock = MovableClock(dt.datetime.now(UTC) - dt.timedelta(days=24))
    services = build_services(config, clock=clock)
    try:
        initialize(services, SYSTEM, first_admin=False)
        yield services, clock
    finally:
        services.dispose()


def test_the_responder_rotates_in_its_renew_window_and_answers_still_verify(
    past: tuple[Services, MovableClock], tmp_path: Path
):
    services, clock = past
    cert = _issue(services, "rotate.example.gov.cn")
    old_answer = _ask(services, cert)
    with services.sessions() as session:
        old = services.ocsp.list_responders(session, SYSTEM)
    assert len(old) == 1

    clock.at = dt.datetime.now(UTC)
    with services.sessions() as session:
        report = services.ocsp.refresh_due(session, SYSTEM, checkpoint=session.commit)
        session.commit()
    with services.sessions() as session:
        responders = services.ocsp.list_responders(session, SYSTEM)
        actions = list(session.scalars(select(AuditEntry.action).where(AuditEntry.object_type == "ocsp_responder")))
        issuing = services.ca.active_ca(session, CaKind.ISSUING)
        root = services.ca.active_ca(session, CaKind.ROOT)
    assert report.rotated == [issuing.id] and report.resigned >= 1
    assert [r.active for r in responders] == [False, True]
    assert actions == ["ca:ocsp_responder:create", "ca:ocsp_responder:create", "ca:ocsp_responder:retire"]

    new_answer = _ask(services, cert)
    assert new_answer.certificates[0].serial_number != old_answer.certificates[0].serial_number
    new_cert = x509.load_der_x509_certificate(responders[1].cert_der)
    assert new_answer.certificates[0] == new_cert
    # openssl accepts the stored answer signed by the new responder
    (tmp_path / "resp.der").write_bytes(_stored(services, cert)["sha1"].public_bytes(Encoding.DER))
    result = subprocess.run(
        [
            "openssl",
            "ocsp",
            "-respin",
            str(tmp_path / "resp.der"),
            "-issuer",
            str(write_pem(tmp_path / "issuing.pem", issuing.cert_der)),
            "-CAfile",
            str(write_pem(tmp_path / "root.pem", root.cert_der)),
            "-cert",
            str(write_pem(tmp_path / "leaf.pem", cert.public_bytes(Encoding.DER))),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Response verify OK" in result.stderr + result.stdout and ": good" in result.stdout, result
    with services.sessions() as session:
        assert (
            session.scalar(select(func.count()).select_from(OcspResponse).where(OcspResponse.responder_id == old[0].id))
            == 0
        )


def test_the_root_has_no_responder(services: Services):
    with services.sessions() as session:
        root = services.ca.active_ca(session, CaKind.ROOT)
        with pytest.raises(InvalidError) as caught:
            services.ocsp.ensure_responder(session, SYSTEM, root)
    assert caught.value.field == "ca"


def test_cli_refresh_and_responders(services: Services):
    _issue(services, "cli.example.gov.cn")
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    result = CliRunner().invoke(main, ["ocsp", "refresh"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "pre-signed 2" in result.output
    result = CliRunner().invoke(main, ["ocsp", "responders"], env=env, catch_exceptions=False)
    assert result.exit_code == 0 and "active" in result.output
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OcspResponder)) == 1


def test_the_fast_stored_read_matches_the_full_path_and_recovers_from_a_dead_connection(services: Services):
    cert = _issue(services, "fast.example.gov.cn")
    with services.sessions() as session:
        issuer = x509.load_der_x509_certificate(services.ca.active_ca(session, CaKind.ISSUING).cert_der)
    der = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(Encoding.DER)
    first = services.ocsp.respond(der)  # loads the issuers; the answer was stored at issuance or now
    stored = services.ocsp.respond_stored(der)
    assert stored is not None and stored.der == first.der == _stored(services, cert)["sha1"].public_bytes(Encoding.DER)
    assert stored.this_update == first.this_update and stored.this_update.tzinfo is not None
    # the reader's own connection dies: the answer still comes (the Core path), then the reader reconnects
    reader = services.ocsp._reader
    reader._connection().close()
    assert services.ocsp.respond_stored(der) == stored
    assert services.ocsp.respond_stored(der) == stored and reader._open
    # a status change is visible to the fast read at once (its connection is in autocommit)
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, format(cert.serial_number, "x"), reason="keyCompromise")
        session.commit()
    revoked = services.ocsp.respond_stored(der)
    assert revoked is not None
    assert ocsp.load_der_ocsp_response(revoked.der).certificate_status == ocsp.OCSPCertStatus.REVOKED
    services.ocsp.close()
    assert not reader._open
    assert services.ocsp.respond_stored(der) == revoked  # and it opens a new one when asked again


def test_the_hot_path_gives_the_stored_answer_or_leaves_the_request_to_the_full_path(
    services: Services, monkeypatch: pytest.MonkeyPatch
):
    cert = _issue(services, "hot.example.gov.cn")
    with services.sessions() as session:
        issuer = x509.load_der_x509_certificate(services.ca.active_ca(session, CaKind.ISSUING).cert_der)

    def request(digest: hashes.HashAlgorithm | None = None, *, nonce: bytes | None = None) -> bytes:
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, digest or hashes.SHA1())
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.build().public_bytes(Encoding.DER)

    plain = request()
    full = services.ocsp.respond(plain)  # the full path also loads the issuers the hot path looks up
    assert services.ocsp.stored_der(plain) == full.der == _stored(services, cert)["sha1"].public_bytes(Encoding.DER)
    sha256 = request(hashes.SHA256())
    assert services.ocsp.stored_der(sha256) is None  # not stored until first asked (only SHA-1 is pre-signed)
    assert services.ocsp.respond(sha256).der == services.ocsp.stored_der(sha256)
    # what needs signing or a refusal is the full path's: a nonce, another hash, garbage, too big
    assert services.ocsp.stored_der(request(nonce=b"n" * 16)) is None
    assert services.ocsp.stored_der(request(hashes.SHA512())) is None
    assert services.ocsp.stored_der(b"\x30\x03garbage") is None
    assert services.ocsp.stored_der(plain + b"\x00" * 70_000) is None
    # a status change is visible at once
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, format(cert.serial_number, "x"), reason="keyCompromise")
        session.commit()
    revoked = services.ocsp.stored_der(plain)
    assert revoked is not None
    assert ocsp.load_der_ocsp_response(revoked).certificate_status == ocsp.OCSPCertStatus.REVOKED
    # a stored answer past its nextUpdate is not served: the full path signs a new one
    later = services.ocsp._clock.now() + services.ocsp.validity + dt.timedelta(seconds=1)
    monkeypatch.setattr(services.ocsp, "_clock", MovableClock(later))
    assert services.ocsp.stored_der(plain) is None
    fresh = ocsp.load_der_ocsp_response(services.ocsp.respond(plain).der)
    assert fresh.this_update_utc <= later < fresh.next_update_utc
    assert services.ocsp.stored_der(plain) == services.ocsp.respond(plain).der
