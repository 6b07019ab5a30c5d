"""The validation core and its revocation lookups, on small hand-made hierarchies."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.revocation_status import CrlStatus, GivenCrls, RevokedEntry
from ca.validation import (
    MAX_INTERMEDIATES,
    NoRevocationCheck,
    Purpose,
    StatusLookup,
    ValidationResult,
    load_certificate,
    validate,
)
from ca.validation_service import ValidationService, load_trust_anchors
from govpki.errors import ConfigError, InvalidError
from govpki.principal import SYSTEM
from web.container import Services

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOST = "svc.example.gov.cn"
CRL_URL = "http://crl.example.test/ca.crl"
DER = serialization.Encoding.DER


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(
    cn: str,
    issuer: x509.Certificate | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=365))
        .not_valid_after(not_after or NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(CRL_URL)], None, None, None)]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256()), key


def make_leaf(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    host: str | None = HOST,
    eku: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.SERVER_AUTH,),
    key_usage: x509.KeyUsage | None = None,
    crl_url: str | None = CRL_URL,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(host or "someone"))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=10))
        .not_valid_after(NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage or x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if host:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
    if crl_url:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def make_crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    revoked: Sequence[x509.Certificate] = (),
    *,
    next_update: dt.datetime = NOW + dt.timedelta(days=7),
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(min(NOW - dt.timedelta(hours=1), next_update - dt.timedelta(days=1)))
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(NOW - dt.timedelta(days=1))
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(DER)


class Clock:
    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now_value = now

    def now(self) -> dt.datetime:
        return self.now_value


@pytest.fixture(scope="module")
def pki():
    root, root_key = make_ca("Test Root")
    ica, ica_key = make_ca("Test Issuing", root, root_key)
    leaf, _ = make_leaf(ica, ica_key)
    return root, root_key, ica, ica_key, leaf


def run(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    purpose: Purpose = Purpose.TLS_SERVER,
    host: str | None = HOST,
    at: dt.datetime = NOW,
    revocation: StatusLookup | None = None,
) -> ValidationResult:
    return validate(
        leaf.public_bytes(serialization.Encoding.PEM),
        [c.public_bytes(DER) for c in intermediates],
        purpose=purpose,
        host=host if purpose is Purpose.TLS_SERVER else None,
        at=at,
        trust_anchors=anchors,
        revocation=revocation or NoRevocationCheck(),
    )


def test_valid_path_and_its_description(pki):
    root, _, ica, _, leaf = pki
    result = run(leaf, [ica], [root])
    assert result.valid and result.code == "validation.ok"
    assert [p.role for p in result.path] == ["end_entity", "intermediate", "trust_anchor"]
    assert result.path[0].serial == format(leaf.serial_number, "x")
    assert result.path[0].fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert result.path[2].revocation.status == "not_checked"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"host": "other.example.gov.cn"}, "validation.hostname_mismatch"),
        ({"at": NOW + dt.timedelta(days=200)}, "validation.expired"),
        ({"at": NOW - dt.timedelta(days=100)}, "validation.not_yet_valid"),
        ({"purpose": Purpose.TLS_CLIENT}, "validation.wrong_purpose"),
        ({"purpose": Purpose.DOCUMENT_SIGNING}, "validation.wrong_purpose"),
        ({"intermediates": []}, "validation.untrusted"),
    ],
)
def test_failures_have_codes_and_reasons(pki, change, code):
    root, _, ica, _, leaf = pki
    args = {"intermediates": [ica], "anchors": [root]}
    args.update({k: v for k, v in change.items() if k in args})
    result = run(leaf, args["intermediates"], args["anchors"], **{k: v for k, v in change.items() if k not in args})
    assert not result.valid and result.code == code, (result.code, result.reason)
    assert result.reason and "Certificate(" not in result.reason
    assert result.path == () and result.certificate is not None


def test_expired_intermediate_is_named():
    root, root_key = make_ca("Root")
    ica, ica_key = make_ca("Old Issuing", root, root_key, not_after=NOW - dt.timedelta(days=1))
    leaf, _ = make_leaf(ica, ica_key)
    result = run(leaf, [ica], [root])
    assert result.code == "validation.expired" and "Old Issuing" in result.reason


def test_document_signing_needs_email_protection_and_signing_key_usage(pki):
    root, _, ica, ica_key, _ = pki
    signing_ku = x509.KeyUsage(True, True, False, False, False, False, False, False, False)
    good, _ = make_leaf(
        ica,
        ica_key,
        host=None,
        eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION),
        key_usage=signing_ku,
    )
    assert run(good, [ica], [root], purpose=Purpose.DOCUMENT_SIGNING).valid
    assert run(good, [ica], [root], purpose=Purpose.TLS_CLIENT).valid
    encipher_only = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    wrong_ku, _ = make_leaf(
        ica, ica_key, host=None, eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,), key_usage=encipher_only
    )
    result = run(wrong_ku, [ica], [root], purpose=Purpose.DOCUMENT_SIGNING)
    assert result.code == "validation.wrong_purpose" and "key usage" in result.reason


def test_limits_and_non_certificates(pki):
    root, _, ica, _, leaf = pki
    with pytest.raises(InvalidError) as too_many:
        run(leaf, [ica] * 50, [root])
    assert too_many.value.field == "intermediates" and f"at most {MAX_INTERMEDIATES}" in too_many.value.reason
    for junk in (b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(InvalidError) as bad:
            load_certificate(junk, field="certificate")
        assert bad.value.field == "certificate" and bad.value.reason == "is not an X.509 certificate (PEM or DER)"
    with pytest.raises(InvalidError, match="bytes"):
        load_certificate(b"\x30" * 40000, field="certificate")
    two = leaf.public_bytes(serialization.Encoding.PEM) * 2
    with pytest.raises(InvalidError, match="more than one"):
        load_certificate(two, field="certificate")
    with pytest.raises(InvalidError) as no_host:
        run(leaf, [ica], [root], host=None)
    assert no_host.value.field == "host"
    ip = validate(
        leaf.public_bytes(DER),
        [ica.public_bytes(DER)],
        purpose=Purpose.TLS_SERVER,
        host="10.0.0.1",
        at=NOW,
        trust_anchors=[root],
        revocation=NoRevocationCheck(),
    )
    assert ip.code == "validation.hostname_mismatch"


# ----- revocation from CRLs ---------------------------------------------------------


class Fetcher:
    def __init__(self, answers: dict[str, bytes | Exception]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        answer = self.answers.get(url, OSError("no such host"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_crl_good_revoked_and_cached(pki):
    root, _, ica, ica_key, leaf = pki
    other, _ = make_leaf(ica, ica_key)
    fetch = Fetcher({CRL_URL: make_crl(ica, ica_key, [other])})
    clock = Clock()
    lookup = CrlStatus(clock, fetch)
    # the issuing CA has the same CRL URL in this test; issued by root, so its CRL does not verify
    good = run(leaf, [ica], [root], revocation=lookup)
    assert good.valid, good.reason
    assert good.path[0].revocation.status == "good" and good.path[0].revocation.source == f"crl {CRL_URL}"
    assert good.path[1].revocation.status == "unknown" and "another CA" in (good.path[1].revocation.reason or "")
    revoked = run(other, [ica], [root], revocation=lookup)
    assert not revoked.valid and revoked.code == "validation.revoked"
    assert revoked.path[0].revocation.revocation_reason == "key_compromise"
    assert "revoked on" in revoked.reason and "key_compromise" in revoked.reason
    assert fetch.calls == [CRL_URL]  # cached until nextUpdate
    clock.now_value = NOW + dt.timedelta(days=8)
    run(leaf, [ica], [root], revocation=lookup, at=NOW)
    assert len(fetch.calls) > 1  # past nextUpdate: fetched again


def test_revoked_after_the_validation_time_is_good_then(pki):
    root, _, ica, ica_key, _ = pki
    leaf, _ = make_leaf(ica, ica_key)
    lookup = CrlStatus(Clock(), Fetcher({CRL_URL: make_crl(ica, ica_key, [leaf])}))
    earlier = run(leaf, [ica], [root], revocation=lookup, at=NOW - dt.timedelta(days=5))
    assert earlier.valid and "revoked later" in (earlier.path[0].revocation.reason or "")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (OSError("connection refused"), "connection refused"),
        (b"not a crl", "CRL"),
        ("wrong-signer", "signature"),
        ("stale", "out of date"),
    ],
)
def test_unusable_crl_is_unknown_not_invalid(pki, answer, why):
    root, _, ica, ica_key, leaf = pki
    if answer == "wrong-signer":
        impostor = ec.generate_private_key(ec.SECP256R1())
        answer = make_crl(ica, impostor, [leaf])
    elif answer == "stale":
        answer = make_crl(ica, ica_key, [leaf], next_update=NOW - dt.timedelta(days=1))
    result = run(leaf, [ica], [root], revocation=CrlStatus(Clock(), Fetcher({CRL_URL: answer})))
    assert result.valid, result.reason
    status = result.path[0].revocation
    assert status.status == "unknown" and why.lower() in (status.reason or "").lower(), status
    assert "revocation status unknown" in result.reason


def test_no_distribution_point_and_given_crls(pki):
    root, _, ica, ica_key, _ = pki
    leaf, _ = make_leaf(ica, ica_key, crl_url=None)
    result = run(leaf, [ica], [root], revocation=CrlStatus(Clock(), Fetcher({})))
    assert result.path[0].revocation.status == "unknown"
    assert "no http CRL distribution point" in (result.path[0].revocation.reason or "")
    crl = x509.load_der_x509_crl(make_crl(ica, ica_key, [leaf]))
    assert run(leaf, [ica], [root], revocation=GivenCrls([crl], Clock())).code == "validation.revoked"


# ----- the service: our anchors, our intermediates, our records ----------------------


class Records:
    def __init__(self) -> None:
        self.revoked_serials: dict[tuple[int, str], RevokedEntry] = {}

    def revoked(self, session, ca_id: int, serial: str) -> RevokedEntry | None:
        return self.revoked_serials.get((ca_id, serial))


def test_service_uses_our_cas_and_records(services: Services, tmp_path):
    from tests.helpers import csr_pem

    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=HOST))
        assert record.cert_der is not None
        records = Records()
        service = ValidationService(clock=services.clock, crl_status=NoRevocationCheck(), records=records)
        answer = service.validate(session, SYSTEM, certificate=record.cert_der, purpose=Purpose.TLS_SERVER, host=HOST)
        assert answer.valid and [p.revocation.status for p in answer.path] == ["good", "good", "not_checked"]
        records.revoked_serials[(record.ca_id, record.serial)] = RevokedEntry(
            services.clock.now() - dt.timedelta(minutes=1), "key_compromise"
        )
        revoked = service.validate(session, SYSTEM, certificate=record.cert_der, purpose=Purpose.TLS_SERVER, host=HOST)
        assert revoked.code == "validation.revoked" and revoked.path[0].revocation.source == "database"
        assert not session.new and not session.dirty

    # an extra anchor from the configured file is trusted besides ours
    root, root_key = make_ca("Partner Root")
    leaf, _ = make_leaf(root, root_key)
    anchors_file = tmp_path / "anchors.pem"
    anchors_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    service = ValidationService(
        clock=Clock(), crl_status=NoRevocationCheck(), extra_anchors=load_trust_anchors(anchors_file)
    )
    with services.sessions() as session:
        partner = service.validate(
            session, SYSTEM, certificate=leaf.public_bytes(DER), purpose=Purpose.TLS_SERVER, host=HOST
        )
    assert partner.valid, partner.reason


def test_extra_anchor_file_errors_name_the_variable(tmp_path):
    missing = tmp_path / "none.pem"
    with pytest.raises(ConfigError, match="GOVPKI_EXTRA_TRUST_ANCHORS_FILE"):
        load_trust_anchors(missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="not a file of PEM certificates"):
        load_trust_anchors(junk)
    root, root_key = make_ca("R")
    leaf, _ = make_leaf(root, root_key)
    not_ca = tmp_path / "leaf.pem"
    not_ca.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match="not a CA certificate"):
        load_trust_anchors(not_ca)
