"""Certificate sign-in (service level): trusted-proxy parsing, mapping a certificate to the
official, and every refusal — each audited, nothing granted."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from authz import certlogin
from authz.certlogin import CertificateLoginService, is_trusted, parse_trusted_proxies, read_certificate_header
from ca.models import RevocationReason
from ca.revocation_status import CrlStatus, DatabaseRecords
from ca.validation import ClientRequirements, NoRevocationCheck, Purpose, validate
from ca.validation_service import ValidationService
from govpki.audit import AuditEntry
from govpki.errors import ConflictError, ForbiddenError, InvalidError, UnauthenticatedError
from govpki.principal import SYSTEM, PrincipalKind
from tests.authz.certlogin_helpers import (
    POLICY,
    IssuedOfficial,
    foreign_certificate,
    header,
    issue_direct,
    issue_official,
    pem,
    prepare_ra,
)
from tests.ra.conftest import CLERK
from web.container import Services, certificate_login

PROXY = "127.0.0.1"


@pytest.fixture
def issued(services: Services) -> IssuedOfficial:
    prepare_ra(services)
    return issue_official(services)


@pytest.fixture
def login(services: Services) -> CertificateLoginService:
    service = certificate_login(services.config, services.clock, services.validation, services.profiles)
    service.trusted_proxies = parse_trusted_proxies(f"{PROXY},10.9.0.0/16")
    return service


def sign_in(services: Services, login: CertificateLoginService, cert: str | None, **kw: str | None):
    source = kw.pop("source", PROXY) or PROXY
    verify = kw.pop("verify", "SUCCESS")
    with services.sessions() as session:
        try:
            return login.sign_in(session, source=source, cert_header=cert, verify_header=verify)
        finally:
            session.commit()  # what the web layer does with a refusal: keep its audit entry


def last_entry(services: Services) -> AuditEntry:
    with services.sessions() as session:
        entry = session.scalar(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1))
        assert entry is not None
        return entry


def refused(services: Services, login: CertificateLoginService, cert: str | None, code: str, **kw: str | None):
    kind = ForbiddenError if code == certlogin.NOT_LINKED else UnauthenticatedError
    with pytest.raises(kind) as caught:
        sign_in(services, login, cert, **kw)
    assert caught.value.code == code, caught.value.reason
    entry = last_entry(services)
    assert entry.action == "authz:session:sign_in_fail" and entry.outcome == "failure"
    details = json.loads(entry.details or "{}")
    assert details["method"] == "certificate" and details["code"] == code
    return caught.value


# ----- GOVPKI_TRUSTED_PROXIES -------------------------------------------------------------


def test_trusted_proxies_parse_addresses_and_networks():
    nets = parse_trusted_proxies(" 127.0.0.1 , 10.1.2.0/24,,::1 ")
    assert nets == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.1.2.0/24"),
        ipaddress.ip_network("::1/128"),
    )
    assert parse_trusted_proxies("") == ()
    assert is_trusted("10.1.2.77", nets) and is_trusted("127.0.0.1", nets) and is_trusted("::1", nets)
    assert is_trusted("::ffff:10.1.2.5", nets)  # an IPv4 peer on a dual-stack socket
    assert not is_trusted("10.1.3.1", nets) and not is_trusted("192.0.2.1", nets)
    assert not is_trusted(None, nets) and not is_trusted("not-an-address", nets)
    assert not is_trusted("127.0.0.1", ())  # default: nobody is trusted


@pytest.mark.parametrize(
    ("text", "detail"),
    [("localhost", "not an IP address"), ("10.0.0.1/24", "host bits are set"), ("1.2.3.4/33", "not an IP")],
)
def test_trusted_proxies_refuse_bad_entries(text: str, detail: str):
    with pytest.raises(InvalidError) as caught:
        parse_trusted_proxies(f"127.0.0.1,{text}")
    assert caught.value.field == "trusted_proxies"
    assert text in caught.value.reason and detail in caught.value.reason


def test_bad_trusted_proxies_stop_start_up(services: Services):
    from dataclasses import replace

    from govpki.errors import ConfigError

    with pytest.raises(ConfigError, match="GOVPKI_TRUSTED_PROXIES: 'gateway'"):
        certificate_login(
            replace(services.config, trusted_proxies="gateway"), services.clock, services.validation, services.profiles
        )


# ----- mapping ------------------------------------------------------------------------


def test_certificate_maps_to_the_official(services: Services, login: CertificateLoginService, issued: IssuedOfficial):
    result = sign_in(services, login, header(issued.cert_der))
    assert result.official.id == issued.official_id
    assert (result.official.name, result.official.prefecture) == ("张三", "650100")
    assert (result.official.department, result.official.title) == ("财政局", "科长")
    assert result.serial == issued.serial and result.amr == ("swk",)
    cert = x509.load_der_x509_certificate(issued.cert_der)
    assert result.issuer == cert.issuer.rfc4514_string()
    principal = result.principal
    assert principal.kind is PrincipalKind.OFFICIAL and principal.id == str(issued.official_id)
    assert (principal.prefecture, principal.department, principal.title) == ("650100", "财政局", "科长")
    assert principal.roles == frozenset()  # no staff role
    entry = last_entry(services)
    assert entry.action == "authz:session:sign_in" and entry.actor == f"official:{issued.official_id}"
    details = json.loads(entry.details or "{}")
    assert details["method"] == "certificate" and details["serial"] == issued.serial and details["amr"] == ["swk"]
    # the official's own certificates: the dual pair
    with services.sessions() as session:
        mine = login.certificates_of(session, principal)
        assert {c.serial for c in mine} == {
            issued.serial,
            read_certificate_header(header(issued.encryption_der)).serial,
        }
        assert {c.status for c in mine} == {"valid"}
        with pytest.raises(ForbiddenError):
            login.certificates_of(session, SYSTEM)


def test_plain_pem_header_is_read_too(services: Services, login: CertificateLoginService, issued: IssuedOfficial):
    assert sign_in(services, login, issued.cert_pem.decode()).official.id == issued.official_id


# ----- refusals -----------------------------------------------------------------------


def test_header_from_an_untrusted_address_is_refused(
    services: Services, login: CertificateLoginService, issued: IssuedOfficial
):
    error = refused(services, login, header(issued.cert_der), certlogin.UNTRUSTED_PROXY, source="192.0.2.10")
    assert "192.0.2.10" in error.reason and "GOVPKI_TRUSTED_PROXIES" in error.reason
    login.trusted_proxies = ()  # the default: the header is never believed
    refused(services, login, header(issued.cert_der), certlogin.UNTRUSTED_PROXY)


def test_no_certificate(services: Services, login: CertificateLoginService):
    refused(services, login, None, certlogin.NO_CERTIFICATE, verify="NONE")
    refused(services, login, "", certlogin.NO_CERTIFICATE)
    assert last_entry(services).object_id == "-"


def test_malformed_certificate(services: Services, login: CertificateLoginService):
    refused(services, login, "-----BEGIN%20CERTIFICATE-----%0Agarbage", certlogin.MALFORMED)
    refused(services, login, "x" * 20000, certlogin.MALFORMED)


def test_revoked_and_suspended_certificates(services: Services, login: CertificateLoginService, issued: IssuedOfficial):
    with services.sessions() as session:
        services.revocation.hold(session, SYSTEM, issued.serial)
        session.commit()
    error = refused(services, login, header(issued.cert_der), certlogin.REVOKED)
    assert last_entry(services).object_id == issued.serial
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, issued.serial, reason=RevocationReason.KEY_COMPROMISE)
        session.commit()
    error = refused(services, login, header(issued.cert_der), certlogin.REVOKED)
    assert "revoked" in error.reason


def test_certificate_from_an_unknown_ca(services: Services, login: CertificateLoginService):
    refused(services, login, header(foreign_certificate(ec.generate_private_key(ec.SECP256R1()))), certlogin.UNKNOWN_CA)


def test_expired_certificate(services: Services, issued: IssuedOfficial):
    class Later:
        def now(self) -> dt.datetime:
            return dt.datetime.now(dt.UTC) + dt.timedelta(days=800)  # past the 730-day validity

    validation = ValidationService(
        clock=Later(), crl_status=CrlStatus(Later()), records=DatabaseRecords(services.revocation)
    )
    later = certificate_login(services.config, Later(), validation, services.profiles)
    later.trusted_proxies = parse_trusted_proxies(PROXY)
    error = refused(services, later, header(issued.cert_der), certlogin.EXPIRED)
    assert "expired" in error.reason


def test_encryption_certificate_is_not_for_sign_in(
    services: Services, login: CertificateLoginService, issued: IssuedOfficial
):
    """The dual pair's encryption certificate: emailProtection only, no clientAuth."""
    error = refused(services, login, header(issued.encryption_der), certlogin.WRONG_PURPOSE)
    assert "not for sign-in" in error.reason


def test_service_client_certificate_lacks_the_official_policy(services: Services, login: CertificateLoginService):
    _key, der = issue_direct(services, "service-tls-client", "app.example.gov.cn", dns=True)
    error = refused(services, login, header(der), certlogin.WRONG_POLICY)
    assert POLICY in error.reason


def test_certificate_of_no_official(services: Services, login: CertificateLoginService):
    _key, der = issue_direct(services, "official-signing", "李四")
    error = refused(services, login, header(der), certlogin.NOT_LINKED)
    assert "not issued to a registered official" in error.reason


def test_front_verdict_must_be_success(services: Services, login: CertificateLoginService, issued: IssuedOfficial):
    error = refused(services, login, header(issued.cert_der), certlogin.FRONT_REFUSED, verify="FAILED:unable to verify")
    assert "unable to verify" in error.reason


# ----- the validation core: requirements whether or not critical ---------------------------


def _hierarchy(critical: bool, *, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,), policy=POLICY, digital_signature=True):
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature, not digital_signature, False, False, False, False, False, False, False),
            critical=critical,
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=critical)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(policy), None)]), critical=critical
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca, leaf.public_bytes(Encoding.DER)


@pytest.mark.parametrize("critical", [False, True])
def test_requirements_hold_whether_or_not_critical(critical: bool):
    requirements = ClientRequirements(policy_oids=frozenset({POLICY}))

    def check(ca: x509.Certificate, leaf: bytes):
        return validate(
            leaf,
            purpose=Purpose.TLS_CLIENT,
            at=dt.datetime.now(dt.UTC),
            trust_anchors=[ca],
            revocation=NoRevocationCheck(),
            client=requirements,
        )

    assert check(*_hierarchy(critical)).code == "validation.ok"
    wrong_eku = check(*_hierarchy(critical, eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,)))
    assert wrong_eku.code == "validation.wrong_purpose" and "clientAuth" in wrong_eku.reason
    wrong_ku = check(*_hierarchy(critical, digital_signature=False))
    assert wrong_ku.code == "validation.wrong_purpose" and "digital_signature" in wrong_ku.reason
    wrong_policy = check(*_hierarchy(critical, policy="1.3.6.1.4.1.32473.6500.2.2"))
    assert wrong_policy.code == "validation.wrong_policy" and POLICY in wrong_policy.reason


def test_client_requirements_only_for_tls_client():
    ca, leaf = _hierarchy(False)
    with pytest.raises(InvalidError) as caught:
        validate(
            leaf,
            purpose=Purpose.DOCUMENT_SIGNING,
            at=dt.datetime.now(dt.UTC),
            trust_anchors=[ca],
            revocation=NoRevocationCheck(),
            client=ClientRequirements(),
        )
    assert caught.value.field == "purpose"


# ----- applications: mutual TLS ---------------------------------------------------------


def test_application_bound_certificate(services: Services, login: CertificateLoginService):
    _key, der = issue_direct(services, "service-tls-client", "app.example.gov.cn", dns=True)
    _other_key, other = issue_direct(services, "service-tls-client", "other.example.gov.cn", dns=True)
    with services.sessions() as session:
        app, _secret = services.applications.register(session, SYSTEM, name="oa-system")
        client_id = app.client_id
        bound = services.applications.bind_certificate(session, SYSTEM, client_id, pem(der))
        assert bound.cert_serial == read_certificate_header(header(der)).serial
        session.commit()
    entry = last_entry(services)
    assert entry.action == "authz:application:bind_certificate" and entry.object_id == client_id

    def authenticate(cert: bytes, source: str = PROXY, verify: str = "SUCCESS"):
        with services.sessions() as session:
            return login.authenticate_application(
                session, source=source, cert_header=header(cert), verify_header=verify
            )

    principal = authenticate(der)
    assert principal.kind is PrincipalKind.APPLICATION and principal.id == client_id
    assert "audit:write" in principal.scopes
    for bad, source, verify, why in (
        (other, PROXY, "SUCCESS", "not bound"),
        (der, "192.0.2.1", "SUCCESS", "client credentials are required"),
        (der, PROXY, "FAILED:x", "TLS front"),
    ):
        with pytest.raises(UnauthenticatedError, match=why):
            authenticate(bad, source, verify)
    with services.sessions() as session:
        with pytest.raises(ConflictError):  # one certificate, one application
            app2, _ = services.applications.register(session, SYSTEM, name="second-app")
            services.applications.bind_certificate(session, SYSTEM, app2.client_id, pem(der))
        session.rollback()
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, read_certificate_header(header(der)).serial)
        session.commit()
    with pytest.raises(UnauthenticatedError, match="revoked"):
        authenticate(der)
    with services.sessions() as session:
        services.applications.bind_certificate(session, SYSTEM, client_id, None)
        session.commit()
    with pytest.raises(UnauthenticatedError, match="not bound"):
        authenticate(der)


def test_bind_refuses_what_is_no_client_certificate(services: Services, issued: IssuedOfficial):
    with services.sessions() as session:
        app, _secret = services.applications.register(session, SYSTEM, name="oa-system")
        ca_der = services.ca.list_cas(session)[0].cert_der
        for data, why in (
            (b"not a certificate", "not an X.509 certificate"),
            (ca_der, "CA certificate"),
            (issued.encryption_der, "lacks clientAuth"),
        ):
            with pytest.raises(InvalidError, match=why) as caught:
                services.applications.bind_certificate(session, SYSTEM, app.client_id, data)
            assert caught.value.field == "certificate"
        with pytest.raises(ForbiddenError):  # only a security administrator binds
            services.applications.bind_certificate(session, CLERK, app.client_id, issued.cert_der)
