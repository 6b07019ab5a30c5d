"""CA key rollover on the file key store and on SoftHSM2: the issuing CA (issuance before
and after, CRL and OCSP of the old CA for what it issued, retirement after its last
certificate expired) and the root (RFC 4210 root key update with cross-certificates in
both directions, checked with `openssl verify`, cryptography's verifier and the
validation API)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from sqlalchemy import func, select
from werkzeug.serving import make_server

from ca.ceremony import Outcome
from ca.models import CaKind, CaState, CertificateAuthority, CrlKind, CrossCertificate, CrossDirection, OcspResponder
from ca.validation import NoRevocationCheck, Purpose, validate
from govpki.audit import AuditEntry
from govpki.clock import UTC
from govpki.config import Config
from govpki.errors import ConflictError, ForbiddenError, UnavailableError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from keymgmt import KeyExportRefusedError, Pkcs11KeyStore
from keymgmt.policy import KeyPurpose
from tests.helpers import check_every_issued_certificate, csr_pem, write_pem
from tests.softhsm import softhsm_settings
from web.app import create_app
from web.bootstrap import initialize
from web.container import Services, build_services
from web.jobs import run_due
from web.rollover import rollover

PEM = Encoding.PEM
CA_OPERATOR = Principal(PrincipalKind.ACCOUNT, "7", "operator", frozenset({Role.CA_OPERATOR}))
SECURITY_ADMIN = Principal(PrincipalKind.ACCOUNT, "8", "secadmin", frozenset({Role.SECURITY_ADMIN}))


class MovableClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at


BOTH_STORES = pytest.mark.parametrize("store", ["file", "softhsm"])


@pytest.fixture
def store() -> str:
    """The key store kind (tests marked BOTH_STORES run on files and on SoftHSM2)."""
    return "file"


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(dt.datetime.now(UTC))


@pytest.fixture
def pki(tmp_path: Path, config: Config, store: str, clock: MovableClock) -> Iterator[Services]:
    """An initialised instance with both key stores on files or on SoftHSM2 tokens.
    At the end every certificate issued is linted and verified with openssl."""
    if store == "softhsm":
        config = dataclasses.replace(
            config,
            root_keystore=softhsm_settings(tmp_path, "rollover-root"),
            online_keystore=softhsm_settings(tmp_path, "rollover-online"),
        )
    services = build_services(config, clock=clock)
    try:
        initialize(services, SYSTEM, first_admin=False)
        yield services
        if clock.at <= dt.datetime.now(UTC) + dt.timedelta(minutes=5):  # openssl checks at the real time
            check_every_issued_certificate(services, tmp_path / "issued-check")
    finally:
        services.dispose()


def issue(services: Services, cn: str, days: int | None = None) -> x509.Certificate:
    with services.sessions() as session:
        record = services.ca.issue(
            session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn), validity_days=days
        )
        session.commit()
        assert record.cert_der is not None
    return x509.load_der_x509_certificate(record.cert_der)


def cas(services: Services) -> list[CertificateAuthority]:
    with services.sessions() as session:
        return services.ca.list_cas(session)


def actions(services: Services, prefix: str) -> list[AuditEntry]:
    with services.sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action.startswith(prefix))))


def pem_file(path: Path, *ders: bytes) -> Path:
    path.write_bytes(b"".join(x509.load_der_x509_certificate(d).public_bytes(PEM) for d in ders))
    return path


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False, timeout=60)


def ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def aki(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def ocsp_status(services: Services, cert: x509.Certificate, issuer_der: bytes) -> ocsp.OCSPCertStatus:
    issuer = x509.load_der_x509_certificate(issuer_der)
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    answer = ocsp.load_der_ocsp_response(services.ocsp.respond(request.public_bytes(Encoding.DER)).der)
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    # signed by the issuer's own delegated responder, which the issuer certified
    responder = answer.certificates[0]
    assert responder.issuer == issuer.subject
    responder.verify_directly_issued_by(issuer)
    return answer.certificate_status


# ----- issuing CA rollover ---------------------------------------------------------


@BOTH_STORES
def test_issuing_rollover_end_to_end(pki: Services, tmp_path: Path, store: str):
    services = pki
    before = issue(services, "before.example.gov.cn")
    with services.sessions() as session:
        old = services.ca.active_ca(session, CaKind.ISSUING)
        root = services.ca.active_ca(session, CaKind.ROOT)

    outcome = Outcome()
    rollover(services, SYSTEM, outcome)
    with services.sessions() as session:
        new = services.ca.active_ca(session, CaKind.ISSUING)
        old = services.ca.find_ca(session, old.id)
        assert services.ca.active_ca(session, CaKind.ROOT).id == root.id  # the root is unchanged
    assert new.id != old.id and [ca.id for ca in outcome.cas] == [new.id]
    assert new.name == f"{old.name} G2"
    assert new.parent_id == root.id and new.key_handle != old.key_handle
    assert old.state is CaState.SERVING and new.state is CaState.ISSUING and old.superseded_at is not None
    assert new.key_handle.startswith("pkcs11:") == (store == "softhsm")

    # new certificates come from the new CA at once
    after = issue(services, "after.example.gov.cn")
    assert after.issuer == x509.load_der_x509_certificate(new.cert_der).subject
    assert before.issuer == x509.load_der_x509_certificate(old.cert_der).subject
    assert after.issuer != before.issuer

    # revoke the old certificate after the rollover: the old CA's CRLs and OCSP say so
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, format(before.serial_number, "x"), reason="keyCompromise")
        session.commit()
    results = run_due(services)  # the scheduled jobs: CRLs (both CAs), OCSP, ca-retire (nothing yet)
    assert all(r.ok for r in results), results
    assert next(r.lines for r in results if r.name == "ca-retire") == ()
    with services.sessions() as session:
        delta = services.crl.latest(session, old.id, CrlKind.DELTA)  # the job's delta lists it at once
        full = services.crl.generate(session, SYSTEM, old.id, CrlKind.FULL)  # as 'govpki crl generate --ca'
        session.commit()
        new_full = services.crl.latest(session, new.id, CrlKind.FULL)
        assert full is not None and delta is not None and new_full is not None
        full_der, delta_der, new_full_der = full.der, delta.der, new_full.der
    crl = x509.load_der_x509_crl(full_der)
    assert crl.issuer == x509.load_der_x509_certificate(old.cert_der).subject
    assert crl.get_revoked_certificate_by_serial_number(before.serial_number) is not None
    assert x509.load_der_x509_crl(delta_der).get_revoked_certificate_by_serial_number(before.serial_number)
    assert len(x509.load_der_x509_crl(new_full_der)) == 0

    folder = tmp_path / "openssl"
    folder.mkdir()
    root_pem = write_pem(folder / "root.pem", root.cert_der)
    old_pem = write_pem(folder / "old.pem", old.cert_der)
    new_pem = write_pem(folder / "new.pem", new.cert_der)
    (folder / "old.crl").write_bytes(x509.load_der_x509_crl(full_der).public_bytes(PEM))
    (folder / "new.crl").write_bytes(x509.load_der_x509_crl(new_full_der).public_bytes(PEM))
    check = openssl("crl", "-in", str(folder / "old.crl"), "-CAfile", str(old_pem), "-noout")
    assert check.returncode == 0 and "verify OK" in check.stdout + check.stderr, check.stderr
    leaf_before = write_pem(folder / "before.pem", before.public_bytes(Encoding.DER))
    leaf_after = write_pem(folder / "after.pem", after.public_bytes(Encoding.DER))
    revoked = openssl(
        "verify", "-crl_check", "-CAfile", str(root_pem), "-untrusted", str(old_pem),
        "-CRLfile", str(folder / "old.crl"), str(leaf_before),
    )  # fmt: skip
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    ok = openssl(
        "verify", "-crl_check", "-CAfile", str(root_pem), "-untrusted", str(new_pem),
        "-CRLfile", str(folder / "new.crl"), str(leaf_after),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # OCSP: the old CA answers for its certificates, the new one for its own
    assert ocsp_status(services, before, old.cert_der) is ocsp.OCSPCertStatus.REVOKED
    assert ocsp_status(services, after, new.cert_der) is ocsp.OCSPCertStatus.GOOD

    # audited: the new CA's creation and the rollover naming both
    (entry,) = actions(services, "ca:issuing:rollover")
    details = json.loads(entry.details)
    assert details["old_ca_id"] == old.id and details["new_fingerprint_sha256"] == new.fingerprint_sha256

    if store == "softhsm":  # the new CA key is non-extractable like every CA key on the token
        online = services.keystores["online"]
        assert isinstance(online, Pkcs11KeyStore)
        protection = online.protection(new.key_handle)
        assert protection.sensitive and not protection.extractable
        with pytest.raises(KeyExportRefusedError):
            online.export_private_key(new.key_handle)


def test_issuing_rollover_then_openssl_ocsp_against_the_app(pki: Services, tmp_path: Path, store: str):
    services = pki
    before = issue(services, "http-before.example.gov.cn")
    rollover(services, SYSTEM, Outcome())
    after = issue(services, "http-after.example.gov.cn")
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, format(before.serial_number, "x"), reason="superseded")
        session.commit()
        root = services.ca.active_ca(session, CaKind.ROOT)
        new = services.ca.active_ca(session, CaKind.ISSUING)
        old = session.scalars(
            select(CertificateAuthority).where(
                CertificateAuthority.kind == "issuing", CertificateAuthority.id != new.id
            )
        ).one()
    app = create_app(services.config, services=services)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/ocsp"
        folder = tmp_path / "ocsp"
        folder.mkdir()
        root_pem = write_pem(folder / "root.pem", root.cert_der)
        for name, cert, issuer, status in (
            ("before", before, old, "revoked"),
            ("after", after, new, "good"),
        ):
            leaf = write_pem(folder / f"{name}.pem", cert.public_bytes(Encoding.DER))
            issuer_pem = write_pem(folder / f"{name}-issuer.pem", issuer.cert_der)
            result = openssl(
                "ocsp", "-issuer", str(issuer_pem), "-CAfile", str(root_pem), "-url", url, "-cert", str(leaf)
            )
            out = result.stdout + result.stderr
            assert result.returncode == 0, out
            assert f"{leaf}: {status}" in out and "Response verify OK" in out, out
        # the old CA's CRL and certificate stay at their URLs
        client = app.test_client()
        assert client.get(f"/crl/{old.id}.crl").status_code == 200
        assert client.get(f"/ca/{old.id}.der").data == old.cert_der
        assert client.get("/ca/issuing.der").data == new.cert_der
    finally:
        server.shutdown()
        thread.join(5)


@BOTH_STORES
def test_the_old_ca_retires_only_after_its_last_certificate_expired(pki: Services, clock: MovableClock):
    services = pki
    short = issue(services, "short.example.gov.cn", days=2)
    longer = issue(services, "longer.example.gov.cn", days=5)
    rollover(services, SYSTEM, Outcome())
    with services.sessions() as session:
        old = session.scalars(select(CertificateAuthority).where(CertificateAuthority.active.is_(False))).one()
    assert longer.not_valid_after_utc > short.not_valid_after_utc

    clock.at = short.not_valid_after_utc + dt.timedelta(hours=1)  # one certificate left
    results = run_due(services)
    assert all(r.ok for r in results), results
    assert next(r.lines for r in results if r.name == "ca-retire") == ()
    # meanwhile the old CA still publishes: its CRLs are refreshed by the job
    with services.sessions() as session:
        crl = services.crl.latest(session, old.id, CrlKind.FULL, with_der=False)
        assert crl is not None and crl.this_update >= short.not_valid_after_utc
        assert services.ca.find_ca(session, old.id).state is CaState.SERVING

    clock.at = longer.not_valid_after_utc + dt.timedelta(seconds=1)  # the last one expired
    results = run_due(services)
    assert all(r.ok for r in results), results
    retire_lines = next(r.lines for r in results if r.name == "ca-retire")
    assert len(retire_lines) == 1 and f"CA {old.id}" in retire_lines[0]
    names = [r.name for r in results]
    assert names.index("ca-retire") < names.index("audit-checkpoint") == len(names) - 1
    with services.sessions() as session:
        retired = services.ca.find_ca(session, old.id)
        assert retired.state is CaState.RETIRED and retired.retired_at == clock.at
        assert not session.scalars(
            select(OcspResponder).where(OcspResponder.ca_id == old.id, OcspResponder.active.is_(True))
        ).all()
        assert services.ca.active_ca(session, CaKind.ROOT).retired_at is None  # the root still has a CA
        last = services.crl.latest(session, old.id, CrlKind.FULL, with_der=False)
        with pytest.raises(ConflictError) as refused:
            services.crl.generate(session, SYSTEM, old.id)
        assert refused.value.code == "ca.retired"
    (entry,) = actions(services, "ca:ca:retire")
    assert entry.object_id == str(old.id)

    clock.at += dt.timedelta(days=3)
    results = run_due(services)  # nothing more for a retired CA
    assert all(r.ok for r in results), results
    with services.sessions() as session:
        newest = services.crl.latest(session, old.id, CrlKind.FULL, with_der=False)
        assert last is not None and newest is not None and newest.number == last.number
    assert len(actions(services, "ca:ca:retire")) == 1


def test_a_serving_ca_issues_nothing_new_but_renews_its_ocsp_responder(pki: Services, clock: MovableClock):
    services = pki
    before = issue(services, "long.example.gov.cn")  # the profile's full validity: it keeps the CA serving
    rollover(services, SYSTEM, Outcome())
    with services.sessions() as session:
        old = session.scalars(select(CertificateAuthority).where(CertificateAuthority.active.is_(False))).one()
        responder = services.ocsp.active_responder(session, old.id)
        assert responder is not None
        with pytest.raises(UnavailableError):
            services.ca.issue(
                session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn="x.example.gov.cn"), issuer_id=old.id
            )
    # into the responder's renew window: the OCSP job rotates the old CA's responder too
    renew_days = services.keys.policy.get(KeyPurpose.OCSP_SIGNING).overlap_days
    clock.at = responder.not_after - dt.timedelta(days=renew_days - 1)
    results = run_due(services)
    assert all(r.ok for r in results), results
    assert f"rotated the OCSP responder of CA {old.id}" in next(r.lines for r in results if r.name == "ocsp")
    with services.sessions() as session:
        renewed = services.ocsp.active_responder(session, old.id)
        assert renewed is not None and renewed.id != responder.id
        renewed_der = renewed.cert_der
        assert services.ca.find_ca(session, old.id).state is CaState.SERVING
    request = ocsp.OCSPRequestBuilder().add_certificate(
        before, x509.load_der_x509_certificate(old.cert_der), hashes.SHA1()
    )
    answer = ocsp.load_der_ocsp_response(services.ocsp.respond(request.build().public_bytes(Encoding.DER)).der)
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert answer.certificates[0].public_bytes(Encoding.DER) == renewed_der


# ----- root rollover ----------------------------------------------------------------


@BOTH_STORES
def test_root_rollover_cross_certificates_both_directions(pki: Services, tmp_path: Path, store: str):
    services = pki
    under_old = issue(services, "old-root.example.gov.cn")
    with services.sessions() as session:
        old_root = services.ca.active_ca(session, CaKind.ROOT)
        old_issuing = services.ca.active_ca(session, CaKind.ISSUING)

    outcome = Outcome()
    rollover(services, SYSTEM, outcome, root=True)
    under_new = issue(services, "new-root.example.gov.cn")
    with services.sessions() as session:
        new_root = services.ca.active_ca(session, CaKind.ROOT)
        new_issuing = services.ca.active_ca(session, CaKind.ISSUING)
        crosses = {c.direction: c for c in services.ca.cross_certificates(session)}
        old_root = services.ca.find_ca(session, old_root.id)
        old_issuing = services.ca.find_ca(session, old_issuing.id)
    assert new_root.id != old_root.id and new_issuing.parent_id == new_root.id
    assert new_root.name == f"{old_root.name} G2" and new_root.subject != old_root.subject
    assert old_root.state is CaState.SERVING and old_issuing.state is CaState.SERVING
    assert new_root.key_handle.startswith("pkcs11:") == (store == "softhsm")
    assert [c.id for c in outcome.crosses] == [c.id for c in crosses.values()]
    assert under_new.issuer == x509.load_der_x509_certificate(new_issuing.cert_der).subject

    old_cert = x509.load_der_x509_certificate(old_root.cert_der)
    new_cert = x509.load_der_x509_certificate(new_root.cert_der)
    new_with_old = x509.load_der_x509_certificate(crosses[CrossDirection.NEW_WITH_OLD].cert_der)
    old_with_new = x509.load_der_x509_certificate(crosses[CrossDirection.OLD_WITH_NEW].cert_der)
    # RFC 4210 4.4: the subject's name and key (so SKI), the issuer's name and key identifier (AKI)
    assert new_with_old.subject == new_cert.subject and new_with_old.issuer == old_cert.subject
    assert new_with_old.public_key() == new_cert.public_key()
    assert ski(new_with_old) == ski(new_cert) and aki(new_with_old) == ski(old_cert)
    new_with_old.verify_directly_issued_by(old_cert)
    assert old_with_new.subject == old_cert.subject and old_with_new.issuer == new_cert.subject
    assert old_with_new.public_key() == old_cert.public_key()
    assert ski(old_with_new) == ski(old_cert) and aki(old_with_new) == ski(new_cert)
    old_with_new.verify_directly_issued_by(new_cert)
    assert new_with_old.not_valid_after_utc <= old_cert.not_valid_after_utc

    folder = tmp_path / "roots"
    folder.mkdir()
    old_root_pem = pem_file(folder / "old-root.pem", old_root.cert_der)
    new_root_pem = pem_file(folder / "new-root.pem", new_root.cert_der)
    leaf_new = pem_file(folder / "leaf-new.pem", under_new.public_bytes(Encoding.DER))
    leaf_old = pem_file(folder / "leaf-old.pem", under_old.public_bytes(Encoding.DER))
    nwo = crosses[CrossDirection.NEW_WITH_OLD].cert_der
    own = crosses[CrossDirection.OLD_WITH_NEW].cert_der
    # a client that trusts only the old root: leaf → new issuing → NewWithOld → old root
    up = pem_file(folder / "up.pem", new_issuing.cert_der, nwo)
    result = openssl("verify", "-x509_strict", "-CAfile", str(old_root_pem), "-untrusted", str(up), str(leaf_new))
    assert result.returncode == 0, result.stdout + result.stderr
    without = pem_file(folder / "no-cross-up.pem", new_issuing.cert_der)
    result = openssl("verify", "-CAfile", str(old_root_pem), "-untrusted", str(without), str(leaf_new))
    assert result.returncode != 0  # the cross-certificate is what makes the path
    # a client that trusts only the new root: leaf → old issuing → OldWithNew → new root
    down = pem_file(folder / "down.pem", old_issuing.cert_der, own)
    result = openssl("verify", "-x509_strict", "-CAfile", str(new_root_pem), "-untrusted", str(down), str(leaf_old))
    assert result.returncode == 0, result.stdout + result.stderr
    # and each root's own chain as before
    result = openssl("verify", "-CAfile", str(new_root_pem), "-untrusted", str(without), str(leaf_new))
    assert result.returncode == 0, result.stdout + result.stderr

    # cryptography's verifier (the validation API's path builder), trusting one root
    now = dt.datetime.now(UTC)
    der = Encoding.DER
    up_result = validate(
        under_new.public_bytes(der), [new_issuing.cert_der, nwo],
        purpose=Purpose.TLS_SERVER, host="new-root.example.gov.cn", at=now,
        trust_anchors=[old_cert], revocation=NoRevocationCheck(),
    )  # fmt: skip
    assert up_result.valid, up_result
    assert [e.subject for e in up_result.path][-2:] == [new_cert.subject.rfc4514_string(), old_root.subject]
    down_result = validate(
        under_old.public_bytes(der), [old_issuing.cert_der, own],
        purpose=Purpose.TLS_SERVER, host="old-root.example.gov.cn", at=now,
        trust_anchors=[new_cert], revocation=NoRevocationCheck(),
    )  # fmt: skip
    assert down_result.valid, down_result
    assert down_result.path[-1].subject == new_root.subject

    # the validation API trusts both roots now (and still validates what the old CAs issued)
    app = create_app(services.config, services=services)
    client = app.test_client()
    with services.sessions() as session:
        _token, secret = services.tokens.create(session, SYSTEM, name="rollover", days=1)
        session.commit()
    auth = {"Authorization": f"Bearer {secret}"}
    pem = lambda d: x509.load_der_x509_certificate(d).public_bytes(PEM).decode()  # noqa: E731
    for leaf, intermediates, host in (
        (under_new, [new_issuing.cert_der, nwo], "new-root.example.gov.cn"),
        (under_old, [old_issuing.cert_der, own], "old-root.example.gov.cn"),
        (under_old, [], "old-root.example.gov.cn"),
    ):
        answer = client.post(
            "/api/v1/validate",
            json={
                "certificate": leaf.public_bytes(PEM).decode(),
                "intermediates": [pem(d) for d in intermediates],
                "purpose": "tls_server",
                "host": host,
            },
            headers=auth,
        )
        assert answer.status_code == 200, answer.json
        assert answer.json["valid"] is True and answer.json["code"] == "validation.ok", answer.json

    # served: the cross-certificates, the new root, a chain with NewWithOld
    nwo_id = crosses[CrossDirection.NEW_WITH_OLD].id
    assert client.get(f"/ca/cross/{nwo_id}.der").data == nwo
    assert b"BEGIN CERTIFICATE" in client.get(f"/ca/cross/{nwo_id}.pem").data
    assert client.get("/ca/cross/9999.der").status_code == 404
    assert client.get("/ca/root.der").data == new_root.cert_der
    chain = x509.load_pem_x509_certificates(client.get("/ca/chain.pem").data)
    assert [c.public_bytes(der) for c in chain] == [new_issuing.cert_der, new_root.cert_der, nwo]
    # a certificate's chain in the API leads to the old root too (issuing CA, then NewWithOld)
    record = client.get(f"/api/v1/certificates/{under_new.serial_number:x}", headers=auth)
    assert record.status_code == 200, record.json
    api_chain = x509.load_pem_x509_certificates(record.json["chain_pem"].encode())
    assert [c.public_bytes(der) for c in api_chain] == [new_issuing.cert_der, nwo]

    # ARLs: the new root signed its first at the rollover; at a ceremony both roots' are refreshed
    with services.sessions() as session:
        new_arl = services.crl.latest(session, new_root.id, CrlKind.FULL)
        assert new_arl is not None
        new_key, old_key = new_cert.public_key(), old_cert.public_key()
        assert isinstance(new_key, ec.EllipticCurvePublicKey) and isinstance(old_key, ec.EllipticCurvePublicKey)
        assert x509.load_der_x509_crl(new_arl.der).is_signature_valid(new_key)
        services.crl.generate(session, SYSTEM, old_root.id)
        session.commit()
        old_arl = services.crl.latest(session, old_root.id, CrlKind.FULL)
        assert old_arl is not None and x509.load_der_x509_crl(old_arl.der).is_signature_valid(old_key)

    # audited
    (root_entry,) = actions(services, "ca:root:rollover")
    assert root_entry.object_id == str(new_root.id)
    assert len(actions(services, "ca:cross_certificate:create")) == 2
    assert len(actions(services, "ca:issuing:rollover")) == 1

    if store == "softhsm":
        root_store = services.keystores["root"]
        assert isinstance(root_store, Pkcs11KeyStore)
        assert not root_store.protection(new_root.key_handle).extractable
        with pytest.raises(KeyExportRefusedError):
            root_store.export_private_key(new_root.key_handle)


def test_a_second_root_rollover_gets_the_next_generation_name(pki: Services, store: str):
    rollover(pki, SYSTEM, Outcome(), root=True)
    rollover(pki, SYSTEM, Outcome(), root=True)
    names = [ca.name for ca in cas(pki)]
    assert len(set(names)) == len(names) == 6
    with pki.sessions() as session:
        root = pki.ca.active_ca(session, CaKind.ROOT)
        assert root.name.endswith(" G3")
        assert session.scalar(select(func.count()).select_from(CrossCertificate)) == 4
        serving = [ca for ca in pki.ca.list_cas(session) if ca.state is CaState.SERVING]
        assert len(serving) == 4  # two old roots and two old issuing CAs, all still serving


# ----- refusals ----------------------------------------------------------------------


def test_only_a_security_administrator_rolls_keys_over(pki: Services, store: str):
    before = [(ca.id, ca.active) for ca in cas(pki)]
    audit_before = len(actions(pki, ""))
    with pki.sessions() as session:
        for call in (pki.ca.rollover_issuing, pki.ca.rollover_root):
            with pytest.raises(ForbiddenError):
                call(session, CA_OPERATOR)
        with pytest.raises(ForbiddenError):
            pki.ceremonies.begin(CA_OPERATOR, "sign-issuing", ["Alice", "Bob"])
        with pytest.raises(ForbiddenError):
            pki.ca.retire_due(
                session, Principal(PrincipalKind.ACCOUNT, "9", "auditor", frozenset({Role.SECURITY_AUDITOR}))
            )
        session.rollback()
    assert [(ca.id, ca.active) for ca in cas(pki)] == before
    assert len(actions(pki, "")) == audit_before
    # a security administrator may
    with pki.sessions() as session:
        made = pki.ca.rollover_issuing(session, SECURITY_ADMIN)
        session.commit()
    assert made.new.state is CaState.ISSUING
