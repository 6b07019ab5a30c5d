"""The RA request workflow: a clerk submits, another officer of the prefecture approves
(or rejects); approval issues the official's dual pair, a service certificate, a renewal,
or changes a certificate's status through the CA. Bad input is refused with nothing changed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca.models import CertificateRecord
from govpki.audit import AuditEntry, verify_chain
from govpki.errors import ConflictError, ForbiddenError, GovpkiError, InvalidError, NotFoundError
from govpki.principal import Principal
from ra.requests import RequestInput
from ra.subscriber_models import RaRequest
from ra.subscribers import OfficialInput, ServiceInput
from tests.helpers import csr_pem
from tests.ra.conftest import CLERK, OFFICER, OFFICER2, OTHER_CLERK, OTHER_OFFICER
from tests.ra.idnumbers import id_number
from web.container import Services


def official(services: Services, sequence: str = "123", email: str | None = "zs@czj.example.gov.cn") -> int:
    with services.sessions() as session:
        created = services.subscribers.register_official(
            session,
            CLERK,
            OfficialInput(name="张三", id_number=id_number(sequence=sequence), department="财政局", email=email),
        )
        session.commit()
        return created.id


def submit(services: Services, data: RequestInput, who: Principal = CLERK) -> int:
    with services.sessions() as session:
        request = services.requests.submit(session, who, data)
        session.commit()
        return request.id


def approve(services: Services, request_id: int, who: Principal = OFFICER, comment: str | None = "ok"):
    with services.sessions() as session:
        done = services.requests.approve(session, who, request_id, comment=comment)
        session.commit()
        return done


def certificate_count(services: Services) -> int:
    with services.sessions() as session:
        return session.scalar(select(func.count()).select_from(CertificateRecord)) or 0


def request_count(services: Services) -> int:
    with services.sessions() as session:
        return session.scalar(select(func.count()).select_from(RaRequest)) or 0


def lying_csr(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A CSR whose subject and SAN claim someone else, with an attribute the CA would refuse."""
    return csr_pem(
        key,
        cn="Administrator",
        names=[x509.RFC822Name("boss@example.com")],
        attrs=[x509.NameAttribute(NameOID.SERIAL_NUMBER, "X")],
    )


def test_new_official_gets_the_dual_pair(ra: Services):
    official_id = official(ra)
    request_id = submit(ra, RequestInput(kind="new", official_id=official_id, csr=lying_csr()))
    done = approve(ra, request_id, comment="identity checked against the card")
    request = done.request
    assert request.state == "completed" and request.decided_by == "account:officer1"
    assert request.certificate_serial and request.encryption_serial and request.escrow_id
    assert done.pkcs12 is not None
    with ra.sessions() as session:
        signing = session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial == request.certificate_serial)
        ).one()
        assert signing.profile == "official-signing" and signing.prefecture_code == "650100"
        assert signing.contact_email == "zs@czj.example.gov.cn"
        assert signing.cert_der is not None
        cert = x509.load_der_x509_certificate(signing.cert_der)
        # the registered identity, not the CSR's claims
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "张三"
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "财政局"
        assert cert.subject.get_attributes_for_oid(NameOID.LOCALITY_NAME)[0].value == "乌鲁木齐市"
        assert not cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.RFC822Name) == ["zs@czj.example.gov.cn"]
        encryption = session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial == request.encryption_serial)
        ).one()
        assert encryption.profile == "official-encryption" and encryption.prefecture_code == "650100"
    bundle = pkcs12.load_pkcs12(done.pkcs12.data, done.pkcs12.password.encode())
    assert bundle.cert is not None and format(bundle.cert.certificate.serial_number, "x") == request.encryption_serial
    with ra.sessions() as session:
        history = ra.requests.history(session, OFFICER, request_id)
        assert [(e.action, e.actor) for e in history] == [
            ("submit", "account:clerk1"),
            ("approve", "account:officer1"),
            ("complete", "account:officer1"),
        ]
        assert history[1].detail == "identity checked against the card"
        assert history[0].at <= history[1].at <= history[2].at
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.action.like("ra:request:%")).order_by(AuditEntry.seq)
        ).all()
        assert actions == ["ra:request:submit", "ra:request:approve", "ra:request:complete"]
        # the certificate page's request history
        pages = ra.requests.requests_for_certificate(session, CLERK, request.certificate_serial)
        assert [r.id for r in pages] == [request_id]
        assert ra.requests.requests_for_certificate(session, OTHER_CLERK, request.certificate_serial) == []
        # the one-time password is stored nowhere
        dump = " ".join(str(v) for row in session.execute(select(RaRequest)).all() for v in row)
        dump += " ".join(session.scalars(select(AuditEntry.details)).all())
        assert done.pkcs12.password not in dump


def test_self_approval_and_other_prefecture_are_refused(ra: Services):
    officer_clerk = Principal(OFFICER.kind, OFFICER.id, OFFICER.name, CLERK.roles | OFFICER.roles, OFFICER.prefecture)
    request_id = submit(
        ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[])), officer_clerk
    )
    before = certificate_count(ra)
    with ra.sessions() as session, pytest.raises(ForbiddenError) as caught:
        ra.requests.approve(session, officer_clerk, request_id)
    assert caught.value.code == "ra.self_approval"
    with ra.sessions() as session, pytest.raises(NotFoundError) as missing:
        ra.requests.approve(session, OTHER_OFFICER, request_id)
    assert missing.value.code == "ra.request_not_found"
    with ra.sessions() as session, pytest.raises(NotFoundError):
        ra.requests.get_request(session, OTHER_CLERK, request_id)
    with ra.sessions() as session, pytest.raises(ForbiddenError) as clerk:
        ra.requests.approve(session, CLERK, request_id)
    assert clerk.value.code == "ra.not_an_officer"
    with ra.sessions() as session:
        assert ra.requests.get_request(session, OFFICER, request_id).state == "submitted"
    assert certificate_count(ra) == before


def test_reject_needs_a_comment(ra: Services):
    request_id = submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[])))
    with ra.sessions() as session, pytest.raises(InvalidError) as caught:
        ra.requests.reject(session, OFFICER, request_id, comment=" ")
    assert caught.value.field == "comment"
    with ra.sessions() as session:
        rejected = ra.requests.reject(session, OFFICER, request_id, comment="photo does not match")
        session.commit()
        assert rejected.state == "rejected" and rejected.comment == "photo does not match"
    with ra.sessions() as session, pytest.raises(ConflictError) as again:
        ra.requests.approve(session, OFFICER2, request_id)
    assert again.value.code == "ra.already_decided"
    with ra.sessions() as session:
        assert [e.action for e in ra.requests.history(session, CLERK, request_id)] == ["submit", "reject"]


def test_bad_requests_change_nothing(ra: Services):
    official_id = official(ra)
    key = ec.generate_private_key(ec.SECP256R1())
    first = submit(ra, RequestInput(kind="new", official_id=official_id, csr=csr_pem(key, cn=None, names=[])))
    cases: list[tuple[RequestInput, Principal, type[GovpkiError], str | None, str | None]] = [
        (RequestInput(kind="new", official_id=official_id, csr="hello"), CLERK, InvalidError, "csr", None),
        (RequestInput(kind="new", official_id=official_id, csr=None), CLERK, InvalidError, "csr", None),
        (
            RequestInput(kind="new", official_id=official_id, csr=csr_pem(key, cn=None, names=[])),
            CLERK,
            ConflictError,
            "csr",
            "ra.key_in_request",
        ),
        (RequestInput(kind="upgrade", official_id=official_id), CLERK, InvalidError, "kind", "ra.unknown_kind"),
        (RequestInput(kind="new", csr=lying_csr()), CLERK, InvalidError, "official_id", "ra.one_subscriber"),
        (
            RequestInput(kind="new", official_id=official_id, csr=lying_csr()),
            OTHER_CLERK,
            NotFoundError,
            "official_id",
            "ra.official_not_found",
        ),
        (
            RequestInput(kind="new", official_id=official_id, csr=lying_csr()),
            OFFICER,
            ForbiddenError,
            "principal",
            "ra.not_a_clerk",
        ),
        (
            RequestInput(kind="new", official_id=official_id, csr=lying_csr(), profile="service-tls-server"),
            CLERK,
            InvalidError,
            "profile",
            None,
        ),
        (RequestInput(kind="revoke", serial="abc"), CLERK, NotFoundError, "serial", "ra.certificate_not_found"),
        (RequestInput(kind="revoke", serial="xyz"), CLERK, InvalidError, "serial", None),
    ]
    before = request_count(ra)
    for data, who, error, field, code in cases:
        with ra.sessions() as session, pytest.raises(error) as caught:
            ra.requests.submit(session, who, data)
        assert caught.value.field == field, data
        if code:
            assert caught.value.code == code, data
    assert request_count(ra) == before
    approve(ra, first)
    # the key is now in a certificate
    again = RequestInput(kind="new", official_id=official_id, csr=csr_pem(key, cn=None, names=[]))
    with ra.sessions() as session, pytest.raises(ConflictError) as in_use:
        ra.requests.submit(session, CLERK, again)
    assert in_use.value.code == "ra.key_in_use" and "already in use by certificate" in in_use.value.reason


def test_the_ca_refuses_a_key_in_use(ra: Services):
    """The CA's own check, for a request whose key got a certificate after submission."""
    key = ec.generate_private_key(ec.SECP256R1())
    first = submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(key, cn=None, names=[])))
    with ra.sessions() as session:
        record = ra.ca.issue(
            session, OFFICER, profile="official-signing", csr=csr_pem(key, cn="李四", names=[]), identity={"CN": "李四"}
        )
        session.commit()
    with ra.sessions() as session, pytest.raises(ConflictError) as caught:
        ra.ca.issue(
            session, OFFICER, profile="official-signing", csr=csr_pem(key, cn="李四", names=[]), unique_key=True
        )
    assert caught.value.code == "ca.key_in_use" and record.serial in caught.value.reason
    with ra.sessions() as session, pytest.raises(ConflictError) as approving:
        ra.requests.approve(session, OFFICER, first)
    assert approving.value.code == "ra.key_in_use"
    with ra.sessions() as session:
        assert ra.requests.get_request(session, OFFICER, first).state == "submitted"


def test_the_ca_repeats_the_ra_checks(ra: Services):
    with ra.sessions() as session, pytest.raises(ForbiddenError) as caught:
        ra.ca.issue(session, OFFICER, profile="ocsp-signing", csr=csr_pem(cn="x", names=[]))
    assert caught.value.code == "ca.profile_not_allowed"
    with ra.sessions() as session, pytest.raises(ForbiddenError) as prefecture:
        ra.ca.issue(session, OFFICER, profile="official-signing", csr=csr_pem(cn="x", names=[]), prefecture="650200")
    assert prefecture.value.field == "prefecture"
    with ra.sessions() as session, pytest.raises(ForbiddenError):
        ra.ca.issue(session, CLERK, profile="official-signing", csr=csr_pem(cn="x", names=[]))


def test_two_simultaneous_approvals_make_one_certificate(ra: Services):
    request_id = submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[])))
    before = certificate_count(ra)
    start = threading.Barrier(2)

    def attempt(who: Principal) -> str:
        start.wait()
        try:
            done = approve(ra, request_id, who)
        except ConflictError as exc:
            return exc.code
        assert done.pkcs12 is not None
        return "approved"

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = sorted(pool.map(attempt, [OFFICER, OFFICER2]))
    assert outcomes == ["approved", "ra.already_decided"]
    assert certificate_count(ra) == before + 2  # one dual pair
    with ra.sessions() as session:
        request = ra.requests.get_request(session, OFFICER, request_id)
        assert request.state == "completed"
        assert [e.action for e in request.events] == ["submit", "approve", "complete"]
        assert verify_chain(session).ok


def service_request(ra: Services, profile: str = "service-tls-server") -> tuple[int, int]:
    responsible = official(ra)
    with ra.sessions() as session:
        service = ra.subscribers.register_service(
            session,
            CLERK,
            ServiceInput(
                name="预算管理系统",
                department="财政局",
                responsible_official_id=responsible,
                host_names=["budget.czj.example.gov.cn"],
                ip_addresses=["10.1.2.3"],
            ),
        )
        session.commit()
        service_id = service.id
    return service_id, submit(ra, RequestInput(kind="new", service_id=service_id, csr=lying_csr(), profile=profile))


def test_service_certificate_with_registered_names(ra: Services):
    _service_id, request_id = service_request(ra)
    done = approve(ra, request_id)
    assert done.pkcs12 is None and done.request.encryption_serial is None
    with ra.sessions() as session:
        record = session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial == done.request.certificate_serial)
        ).one()
        assert record.profile == "service-tls-server" and record.contact_email == "zs@czj.example.gov.cn"
        assert record.cert_der is not None
        cert = x509.load_der_x509_certificate(record.cert_der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["budget.czj.example.gov.cn"]
        assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
        assert not sans.get_values_for_type(x509.RFC822Name)


def test_a_service_needs_a_profile(ra: Services):
    service_id, _ = service_request(ra)
    with ra.sessions() as session, pytest.raises(InvalidError) as caught:
        ra.requests.submit(session, CLERK, RequestInput(kind="new", service_id=service_id, csr=lying_csr()))
    assert caught.value.field == "profile"


def test_suspend_resume_revoke_and_renew(ra: Services):
    done = approve(ra, submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[]))))
    serial = done.request.certificate_serial
    assert serial is not None

    def status() -> str | None:
        with ra.sessions() as session:
            return ra.revocation.status(session, serial).status.value

    # resume of a certificate not on hold is refused at submission
    with ra.sessions() as session, pytest.raises(ConflictError) as not_held:
        ra.requests.submit(session, CLERK, RequestInput(kind="resume", serial=serial))
    assert not_held.value.code == "ra.not_on_hold"
    approve(ra, submit(ra, RequestInput(kind="suspend", serial=serial)))
    assert status() == "on_hold"
    # the other prefecture's officer cannot act on it
    with ra.sessions() as session, pytest.raises(NotFoundError):
        ra.revocation.release(session, OTHER_OFFICER, serial)
    approve(ra, submit(ra, RequestInput(kind="resume", serial=serial)), OFFICER2)
    assert status() == "good"
    # renewal with a new key: the CSR's names are not used either
    renewed = approve(ra, submit(ra, RequestInput(kind="renew", serial=serial, csr=lying_csr())))
    new_serial = renewed.request.certificate_serial
    assert new_serial and new_serial != serial
    with ra.sessions() as session:
        record = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == new_serial)).one()
        assert record.cert_der is not None
        cert = x509.load_der_x509_certificate(record.cert_der)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "张三"
    # a revocation needs a reason
    with ra.sessions() as session, pytest.raises(InvalidError) as no_reason:
        ra.requests.submit(session, CLERK, RequestInput(kind="revoke", serial=new_serial))
    assert no_reason.value.field == "reason"
    with ra.sessions() as session, pytest.raises(InvalidError):
        ra.requests.submit(session, CLERK, RequestInput(kind="revoke", serial=new_serial, reason="bored"))
    revoke_id = submit(ra, RequestInput(kind="revoke", serial=new_serial, reason="keyCompromise"))
    with ra.sessions() as session, pytest.raises(ConflictError) as still_open:
        ra.requests.submit(session, CLERK, RequestInput(kind="suspend", serial=new_serial))
    assert still_open.value.code == "ra.request_open"
    approve(ra, revoke_id)
    with ra.sessions() as session:
        assert ra.revocation.status(session, new_serial).reason == "keyCompromise"
        history = ra.requests.requests_for_certificate(session, CLERK, new_serial)
        assert [r.kind for r in history] == ["renew", "revoke"]
    # the encryption half is not renewed here
    with ra.sessions() as session, pytest.raises(InvalidError) as enc:
        assert done.request.encryption_serial is not None
        ra.requests.submit(session, CLERK, RequestInput(kind="renew", serial=done.request.encryption_serial))
    assert enc.value.code == "ra.encryption_not_renewable"


def test_a_failure_at_the_ca_marks_the_request_failed(ra: Services):
    done = approve(ra, submit(ra, RequestInput(kind="new", official_id=official(ra), csr=csr_pem(cn=None, names=[]))))
    serial = done.request.certificate_serial
    assert serial is not None
    request_id = submit(ra, RequestInput(kind="suspend", serial=serial))
    with ra.sessions() as session:  # revoked meanwhile, directly through the CA
        ra.revocation.revoke(session, OFFICER, serial, reason="superseded")
        session.commit()
    with ra.sessions() as session, pytest.raises(ConflictError) as caught:
        ra.requests.approve(session, OFFICER, request_id)
    assert caught.value.code == "ca.already_revoked"
    with ra.sessions() as session:
        request = ra.requests.get_request(session, OFFICER, request_id)
        assert request.state == "failed" and request.failure and "cannot be put on hold" in request.failure
        assert request.failure_code == "ca.already_revoked" and request.failure_params == {"serial": serial}
        assert [e.action for e in request.events] == ["submit", "approve", "fail"]
        fail = session.scalars(select(AuditEntry).where(AuditEntry.action == "ra:request:fail")).one()
        assert fail.outcome == "failure"
