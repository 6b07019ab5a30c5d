"""Certificates carry their prefecture and contact; expiring ones are listed per prefecture
(scoped to the principal's own); renewal with the same key or a new one, and its refusals."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select

from ca.models import CertificateRecord
from govpki.audit import AuditEntry
from govpki.clock import UTC
from govpki.config import Config
from govpki.errors import ConflictError, ForbiddenError, GovpkiError, InvalidError, NotFoundError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from ra.expiry import PrefectureExpiry
from tests.helpers import csr_pem
from web.bootstrap import initialize
from web.container import Services, build_services

URUMQI, KARAMAY = "650100", "650200"
DAY = dt.timedelta(days=1)


class MovableClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at


def person(*roles: Role, prefecture: str | None = None) -> Principal:
    return Principal(PrincipalKind.ACCOUNT, "7", "tester", frozenset(roles), prefecture=prefecture)


OPERATOR = person(Role.CA_OPERATOR)


@pytest.fixture
def moving(config: Config) -> Iterator[tuple[Services, MovableClock]]:
    """An initialised instance whose clock the test moves."""
    clock = MovableClock(dt.datetime.now(UTC).replace(microsecond=0))
    services = build_services(config, clock=clock)
    try:
        initialize(services, SYSTEM, first_admin=False)
        yield services, clock
    finally:
        services.dispose()


def issue(
    services: Services,
    cn: str,
    *,
    principal: Principal = OPERATOR,
    profile: str = "service-tls-server",
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    prefecture: str | None = None,
    contact_email: str | None = None,
) -> CertificateRecord:
    names: list[x509.GeneralName] | None = None if profile == "service-tls-server" else []
    with services.sessions() as session:
        record = services.ca.issue(
            session,
            principal,
            profile=profile,
            csr=csr_pem(key, cn=cn, names=names),
            prefecture=prefecture,
            contact_email=contact_email,
        )
        session.commit()
    return record


def listing(services: Services, principal: Principal = OPERATOR, **kwargs: object) -> list[PrefectureExpiry]:
    with services.sessions() as session:
        return services.expiry.expiring(session, principal, **kwargs)  # type: ignore[arg-type]


def records(services: Services) -> int:
    with services.sessions() as session:
        return session.scalar(select(func.count()).select_from(CertificateRecord)) or 0


def test_issue_records_prefecture_and_contact_and_refuses_bad_ones(services: Services) -> None:
    record = issue(services, "a.example.gov.cn", prefecture=URUMQI, contact_email="zhang.san@example.gov.cn")
    assert (record.prefecture_code, record.contact_email) == (URUMQI, "zhang.san@example.gov.cn")
    before = records(services)
    bad: list[tuple[dict[str, str], str, str]] = [
        ({"prefecture": "659999"}, "prefecture", "unknown prefecture"),
        ({"contact_email": "not-an-address"}, "contact_email", "not an e-mail address"),
        ({"contact_email": "a@b.c\r\nBcc: x@y.cn"}, "contact_email", "control character"),
        ({"contact_email": "a..b@example.gov.cn"}, "contact_email", "local part"),
    ]
    for kwargs, field, reason in bad:
        with pytest.raises(InvalidError) as caught:
            issue(
                services,
                "b.example.gov.cn",
                prefecture=kwargs.get("prefecture"),
                contact_email=kwargs.get("contact_email"),
            )
        assert caught.value.field == field and reason in caught.value.reason, caught.value.reason
    assert records(services) == before  # nothing reserved


def test_a_principal_of_a_prefecture_issues_for_its_own_only(services: Services) -> None:
    ra_officer = person(Role.CA_OPERATOR, prefecture=KARAMAY)
    assert issue(services, "own.example.gov.cn", principal=ra_officer).prefecture_code == KARAMAY
    with pytest.raises(ForbiddenError) as caught:
        issue(services, "other.example.gov.cn", principal=ra_officer, prefecture=URUMQI)
    assert caught.value.field == "prefecture"


def test_expiring_groups_per_prefecture_in_not_after_order_and_scopes(moving: tuple[Services, MovableClock]) -> None:
    services, clock = moving
    start = clock.at
    u1 = issue(services, "u1.example.gov.cn", prefecture=URUMQI)
    clock.at = start + DAY
    u2 = issue(services, "u2.example.gov.cn", prefecture=URUMQI)
    k1 = issue(services, "k1.example.gov.cn", prefecture=KARAMAY)
    loose = issue(services, "loose.example.gov.cn")
    revoked = issue(services, "revoked.example.gov.cn", prefecture=URUMQI)
    held = issue(services, "held.example.gov.cn", prefecture=URUMQI)
    long_lived = issue(services, "官员", profile="official-signing", prefecture=URUMQI)  # 730 days
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, revoked.serial, reason="superseded")
        services.revocation.hold(session, SYSTEM, held.serial)
        session.commit()

    clock.at = start + 380 * DAY  # the TLS certificates (397 days) have 17 or 18 days left
    groups = listing(services)
    assert [(g.code, g.name, [c.serial for c in g.certificates]) for g in groups] == [
        (URUMQI, "乌鲁木齐市", [u1.serial, u2.serial]),
        (KARAMAY, "克拉玛依市", [k1.serial]),
        (None, None, [loose.serial]),
    ]
    assert groups[0].certificates[0].days_left(clock.at) == 17
    everything = {c.serial for g in groups for c in g.certificates}
    assert not everything & {revoked.serial, held.serial, long_lived.serial}  # the OCSP responder is not there either
    assert listing(services, within=10 * DAY) == []
    assert [g.code for g in listing(services, prefecture=KARAMAY)] == [KARAMAY]

    # a principal of a prefecture sees its own only, and may not ask for another
    mine = listing(services, person(Role.SECURITY_AUDITOR, prefecture=URUMQI))
    assert [g.code for g in mine] == [URUMQI]
    with pytest.raises(ForbiddenError) as caught:
        listing(services, person(Role.CA_OPERATOR, prefecture=URUMQI), prefecture=KARAMAY)
    assert caught.value.field == "prefecture"
    with pytest.raises(ForbiddenError):
        listing(services, person(Role.SYSTEM_ADMIN))
    with pytest.raises(InvalidError) as invalid:
        listing(services, prefecture="000000")
    assert invalid.value.field == "prefecture"
    with pytest.raises(InvalidError) as invalid:
        listing(services, within=dt.timedelta(hours=1))
    assert invalid.value.field == "days"

    clock.at = start + 397 * DAY + dt.timedelta(hours=1)  # u1 expired, u2 not yet
    assert [c.serial for g in listing(services) for c in g.certificates][:1] == [u2.serial]


def test_renewal_with_the_same_key_keeps_identity_and_links(moving: tuple[Services, MovableClock]) -> None:
    services, clock = moving
    old = issue(services, "same.example.gov.cn", prefecture=URUMQI, contact_email="ops@example.gov.cn")
    clock.at += 380 * DAY
    with services.sessions() as session:
        new = services.ca.renew(session, OPERATOR, old.serial)
        session.commit()
    assert new.serial != old.serial and new.state == "issued"
    assert (new.profile, new.subject, new.sans, new.spki_sha256) == (
        old.profile,
        old.subject,
        old.sans,
        old.spki_sha256,
    )
    assert (new.prefecture_code, new.contact_email, new.renewed_from_id) == (URUMQI, "ops@example.gov.cn", old.id)
    assert new.not_after is not None and new.not_after > clock.at + 396 * DAY
    cert = x509.load_der_x509_certificate(new.cert_der or b"")
    assert cert.not_valid_before_utc <= clock.at
    with services.sessions() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "ca:certificate:renew", AuditEntry.object_id == new.serial)
        ).one()
        assert '"renewed_from":"' + old.serial in entry.details and '"key":"same"' in entry.details
    # renewed: not listed as expiring any more, and not renewed twice
    assert old.serial not in {c.serial for g in listing(services) for c in g.certificates}
    with services.sessions() as session, pytest.raises(ConflictError) as caught:
        services.ca.renew(session, OPERATOR, old.serial)
    assert caught.value.code == "ca.already_renewed"


def test_renewal_with_a_new_key_and_what_a_new_request_may_not_change(moving: tuple[Services, MovableClock]) -> None:
    services, clock = moving
    old = issue(services, "newkey.example.gov.cn", contact_email="ops@example.gov.cn")
    clock.at += 300 * DAY
    before = records(services)
    refused = [
        (csr_pem(cn="newkey.example.gov.cn", names=[x509.DNSName("other.example.gov.cn")]), "csr.san"),
        (
            csr_pem(
                cn="newkey.example.gov.cn",
                attrs=[x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "新部门")],
            ),
            "csr.subject",
        ),
        (b"garbage", "csr"),
    ]
    for request, field in refused:
        with services.sessions() as session, pytest.raises(InvalidError) as caught:
            services.ca.renew(session, OPERATOR, old.serial, csr=request)
        assert caught.value.field == field, caught.value.reason
    assert records(services) == before

    with services.sessions() as session:
        new = services.ca.renew(session, OPERATOR, old.serial, csr=csr_pem(cn="newkey.example.gov.cn"))
        session.commit()
    assert new.spki_sha256 != old.spki_sha256 and new.subject == old.subject and new.renewed_from_id == old.id
    assert new.contact_email == "ops@example.gov.cn"


def test_renewal_refusals(moving: tuple[Services, MovableClock]) -> None:
    services, clock = moving
    revoked = issue(services, "r.example.gov.cn")
    held = issue(services, "h.example.gov.cn")
    key = ec.generate_private_key(ec.SECP256R1())
    compromised = issue(services, "k.example.gov.cn", key=key)
    same_key = issue(services, "k.example.gov.cn", key=key)
    expiring = issue(services, "e.example.gov.cn")
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, revoked.serial, reason="affiliationChanged")
        services.revocation.hold(session, SYSTEM, held.serial)
        services.revocation.revoke(session, SYSTEM, compromised.serial, reason="keyCompromise")
        session.commit()
    before = records(services)

    def refused(serial: str, principal: Principal = OPERATOR, csr: bytes | None = None) -> GovpkiError:
        with services.sessions() as session, pytest.raises(GovpkiError) as caught:
            services.ca.renew(session, principal, serial, csr=csr)
        return caught.value

    assert refused(revoked.serial).code == "ca.revoked"
    assert refused(held.serial).code == "ca.on_hold"
    assert isinstance(refused("abcdef"), NotFoundError)
    assert isinstance(refused("xyz"), InvalidError)
    assert isinstance(refused(expiring.serial, person(Role.SECURITY_AUDITOR)), ForbiddenError)
    assert isinstance(refused(expiring.serial, person(Role.CA_OPERATOR, prefecture=URUMQI)), ForbiddenError)
    # the key of a certificate revoked for keyCompromise: not again, with or without a new request
    error = refused(same_key.serial)
    assert error.code == "ca.key_compromised" and "keyCompromise" in str(error)
    assert refused(same_key.serial, csr=csr_pem(key, cn="k.example.gov.cn")).field == "csr.key"
    clock.at += 398 * DAY
    assert refused(expiring.serial).code == "ca.expired"
    assert records(services) == before


def test_same_key_renewal_rechecks_the_key_against_the_current_profile(services: Services) -> None:
    old = issue(services, "rsa.example.gov.cn", key=rsa.generate_private_key(65537, 2048))
    profiles = services.ca.profiles
    stricter = profiles.get("service-tls-server").model_copy(update={"rsa_min_bits": 3072, "version": 2})
    services.ca.profiles = profiles.model_copy(update={"profiles": {**profiles.profiles, stricter.name: stricter}})
    try:
        with services.sessions() as session, pytest.raises(InvalidError) as caught:
            services.ca.renew(session, OPERATOR, old.serial)
        assert caught.value.field == "csr.key" and "RSA-3072" in caught.value.reason
    finally:
        services.ca.profiles = profiles
