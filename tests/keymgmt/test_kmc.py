"""The key-management centre: escrow of officials' encryption keys and M-of-N recovery,
with the storage key in the file store and on a SoftHSM2 token."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import func, select, update

from authz.models import Account
from authz.services import account_principal
from ca.models import CertificateRecord
from govpki.audit import AuditEntry
from govpki.db import Base
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnavailableError
from govpki.principal import SYSTEM, Principal, Role
from keymgmt import KeyExportRefusedError, Pkcs11KeyStore, SecretDecryptError
from keymgmt.kmc_models import EscrowedKey, KmcStorageKey, RecoveryRequest
from keymgmt.models import KeyRecord
from ra.encryption import IssuedEncryption
from tests.helpers import check_every_issued_certificate, make_config
from tests.softhsm import softhsm_settings
from web.bootstrap import initialize
from web.container import Services, build_services

PASSWORD = "correct horse battery staple"


def kmc_env(kind: str, tmp_path: Path) -> dict[str, str]:
    if kind == "file":
        return {}
    settings = softhsm_settings(tmp_path, "kmc-test")
    return {
        "GOVPKI_KMC_KEYSTORE": "pkcs11",
        "GOVPKI_KMC_PKCS11_MODULE": str(settings.pkcs11_module),
        "GOVPKI_KMC_PKCS11_TOKEN_LABEL": str(settings.pkcs11_token_label),
        "GOVPKI_KMC_PKCS11_PIN_FILE": str(settings.pkcs11_pin_file),
    }


@pytest.fixture(params=["file", "pkcs11"])
def kmc(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Services]:
    """An initialised instance whose KMC storage key is in the file store or on SoftHSM2."""
    config = make_config(tmp_path / "instance", database_url, **kmc_env(request.param, tmp_path))
    services = build_services(config)
    try:
        initialize(services, SYSTEM)
        with services.sessions() as session:
            key, created = services.kmc.ensure_storage_key(session, SYSTEM)
            session.commit()
        assert created and key.key_store == ("online" if request.param == "file" else "kmc")
        yield services
        check_every_issued_certificate(services, tmp_path / "issued-check")
    finally:
        services.dispose()


def account(services: Services, username: str, role: Role) -> Principal:
    with services.sessions() as session:
        created = services.accounts.create(
            session, SYSTEM, username=username, display_name=username, role=role, password=PASSWORD
        )
        session.commit()
        return account_principal(created)


def issue(
    services: Services, cn: str = "张三", *, email: str | None = None, algorithm: str | None = None
) -> IssuedEncryption:
    with services.sessions() as session:
        issued = services.encryption.issue(
            session, SYSTEM, common_name=cn, organizational_unit="财政局", email=email, algorithm=algorithm
        )
        session.commit()
        return issued


def audit_actions(services: Services, prefix: str = "kmc:") -> list[tuple[str, str, str]]:
    with services.sessions() as session:
        rows = session.execute(
            select(AuditEntry.action, AuditEntry.object_id, AuditEntry.actor)
            .where(AuditEntry.action.like(f"{prefix}%"))
            .order_by(AuditEntry.seq)
        ).all()
    return [(r.action, r.object_id, r.actor) for r in rows]


def open_pkcs12(data: bytes, password: str) -> pkcs12.PKCS12KeyAndCertificates:
    return pkcs12.load_pkcs12(data, password.encode())


def openssl_pkcs12_info(tmp_path: Path, data: bytes, password: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bundle.p12"
    path.write_bytes(data)
    return subprocess.run(
        ["openssl", "pkcs12", "-info", "-noout", "-in", str(path), "-passin", f"pass:{password}"],
        capture_output=True,
        text=True,
        check=False,
    )


def private_bytes(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_value(key: object) -> bytes:
    """The secret number itself (RSA d, EC private scalar) as big-endian bytes."""
    if isinstance(key, rsa.RSAPrivateKey):
        d = key.private_numbers().d
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        d = key.private_numbers().private_value
    return d.to_bytes((d.bit_length() + 7) // 8, "big")


def database_dump(services: Services) -> bytes:
    """Every value of every table, as bytes (binary columns raw, the rest as text)."""
    out = bytearray()
    with services.sessions() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).all():
                for value in row:
                    out += value if isinstance(value, bytes) else str(value).encode()
                    out += b"\0"
    return bytes(out)


# ----- escrow --------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa-2048", "ec-p256"])
def test_escrow_issues_the_encryption_certificate_and_a_pkcs12_that_opens_with_the_otp(
    kmc: Services, tmp_path: Path, algorithm: str
):
    issued = issue(kmc, email="zhangsan@czj.example.gov.cn", algorithm=algorithm)
    bundle = issued.pkcs12
    assert issued.record.profile == "official-encryption" and issued.escrow.cert_serial == issued.record.serial
    assert issued.escrow.algorithm == algorithm
    assert len(bundle.password) >= 20

    opened = open_pkcs12(bundle.data, bundle.password)
    assert opened.key is not None and opened.cert is not None
    cert = opened.cert.certificate
    assert issued.record.cert_der == cert.public_bytes(serialization.Encoding.DER)
    assert cert.public_key() == opened.key.public_key()
    assert isinstance(opened.key, rsa.RSAPrivateKey if algorithm.startswith("rsa") else ec.EllipticCurvePrivateKey)
    assert len(opened.additional_certs) == 2  # issuing CA and root
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not key_usage.digital_signature and not key_usage.content_commitment
    assert key_usage.key_encipherment if algorithm.startswith("rsa") else key_usage.key_agreement

    ok = openssl_pkcs12_info(tmp_path, bundle.data, bundle.password)
    assert ok.returncode == 0, ok.stderr
    wrong = openssl_pkcs12_info(tmp_path, bundle.data, bundle.password + "x")
    assert wrong.returncode != 0
    with pytest.raises(ValueError):
        open_pkcs12(bundle.data, "not-the-password")

    # nothing in the database holds the clear key, the OTP or the PKCS#12
    dump = database_dump(kmc)
    assert private_bytes(opened.key) not in dump
    assert private_value(opened.key) not in dump
    assert bundle.password.encode() not in dump and bundle.data not in dump
    if kmc.config.database_url.startswith("sqlite:///"):
        db_file = Path(kmc.config.database_url.removeprefix("sqlite:///"))
        on_disk = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*") if p.is_file())
        assert private_value(opened.key) not in on_disk

    actions = audit_actions(kmc)
    assert [a for a, _, _ in actions] == ["kmc:storage_key:create", "kmc:escrow:create"]
    assert actions[1][1] == str(issued.escrow.id)

    # both keys have key records: the storage key in its store, the escrowed key sealed in "escrow"
    with kmc.sessions() as session:
        records = {r.purpose: r for r in session.scalars(select(KeyRecord))}
        storage = kmc.kmc.storage_key(session)
    assert (records["kmc_storage"].store, records["kmc_storage"].handle) == (storage.key_store, storage.key_handle)
    escrowed = records["escrowed_encryption"]
    assert (escrowed.store, escrowed.handle, escrowed.algorithm) == ("escrow", issued.escrow.key_ref, algorithm)
    assert escrowed.spki_sha256 == issued.escrow.spki_sha256 and escrowed.state == "active"


def test_the_storage_key_is_in_the_configured_store_and_never_leaves_it(kmc: Services):
    with kmc.sessions() as session:
        storage = kmc.kmc.storage_key(session)
        again, created = kmc.kmc.ensure_storage_key(session, SYSTEM)
    assert not created and again.id == storage.id
    store = kmc.keystores[storage.key_store]
    if isinstance(store, Pkcs11KeyStore):
        protection = store.secret_protection(storage.key_handle)
        assert protection.token and protection.sensitive and not protection.extractable
        assert protection.always_sensitive and protection.never_extractable
        with pytest.raises(KeyExportRefusedError):
            store.export_secret(storage.key_handle)
    else:
        label = storage.key_handle.removeprefix("file:")
        path = kmc.config.online_keystore.path / f"{label}.secret.json"
        assert path.stat().st_mode & 0o777 == 0o600
        assert b"sealed" in path.read_bytes()


def test_escrowed_ciphertext_is_bound_to_its_record(kmc: Services):
    first, second = issue(kmc, "甲"), issue(kmc, "乙")
    with kmc.sessions() as session:
        a = session.get_one(EscrowedKey, first.escrow.id)
        b = session.get_one(EscrowedKey, second.escrow.id)
        a.wrapped_key = b.wrapped_key  # moved onto another record: the AAD no longer fits
        cert = x509.load_der_x509_certificate(first.record.cert_der or b"")
        with pytest.raises(SecretDecryptError) as caught:
            kmc.kmc.pkcs12(a, certificate=cert, chain=[], name="甲")
        assert caught.value.code == "keymgmt.decrypt_failed"
        session.rollback()


def test_signing_profiles_are_never_escrowed(kmc: Services):
    before = audit_actions(kmc, "")
    with kmc.sessions() as session:
        with pytest.raises(ForbiddenError) as caught:
            kmc.encryption.issue(session, SYSTEM, common_name="李四", profile="official-signing")
        assert caught.value.code == "kmc.signing_key_not_escrowed" and caught.value.field == "profile"
        # the KMC itself refuses whatever the caller says the profile is
        with pytest.raises(ForbiddenError) as direct:
            kmc.kmc.generate(
                session,
                SYSTEM,
                profile="mixed",
                key_usage=["key_encipherment", "digital_signature"],
                subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "李四")]),
            )
        assert direct.value.code == "kmc.signing_key_not_escrowed"
        assert session.scalar(select(func.count()).select_from(EscrowedKey)) == 0
        assert (
            session.scalar(
                select(func.count())
                .select_from(CertificateRecord)
                .where(CertificateRecord.profile == "official-signing")
            )
            == 0
        )
    assert audit_actions(kmc, "") == before


def test_escrow_needs_an_issuing_role(kmc: Services):
    auditor = account(kmc, "auditor1", Role.SECURITY_AUDITOR)
    with kmc.sessions() as session, pytest.raises(ForbiddenError):
        kmc.encryption.issue(session, auditor, common_name="王五")


def test_no_storage_key_is_a_clear_error(services: Services):
    with services.sessions() as session:
        with pytest.raises(UnavailableError) as caught:
            services.encryption.issue(session, SYSTEM, common_name="王五")
        assert caught.value.code == "kmc.no_storage_key"


# ----- recovery ------------------------------------------------------------


@pytest.fixture
def people(kmc: Services) -> dict[str, Principal]:
    return {
        "requester": account(kmc, "secadmin2", Role.SECURITY_ADMIN),
        "operator": account(kmc, "operator1", Role.CA_OPERATOR),
        "o1": account(kmc, "officer1", Role.KEY_RECOVERY_OFFICER),
        "o2": account(kmc, "officer2", Role.KEY_RECOVERY_OFFICER),
        "o3": account(kmc, "officer3", Role.KEY_RECOVERY_OFFICER),
    }


def request(services: Services, who: Principal, escrow_id: int, kind: str = "subscriber", **kw: str) -> int:
    with services.sessions() as session:
        made = services.kmc.request_recovery(
            session, who, escrow_id=escrow_id, kind=kind, reason=kw.pop("reason", "lost smart card"), **kw
        )
        session.commit()
        return made.id


def decide(services: Services, who: Principal, request_id: int, approve: bool = True) -> RecoveryRequest:
    with services.sessions() as session:
        if approve:
            done = services.kmc.approve(session, who, request_id)
        else:
            done = services.kmc.reject(session, who, request_id, reason="no court order attached")
        session.commit()
        return done


def release(services: Services, who: Principal, request_id: int):
    with services.sessions() as session:
        done = services.encryption.release(session, who, request_id)
        session.commit()
        return done


def test_recovery_with_m_approvals_releases_a_new_pkcs12_with_the_same_key(
    kmc: Services, people: dict[str, Principal], tmp_path: Path
):
    issued = issue(kmc)
    original = open_pkcs12(issued.pkcs12.data, issued.pkcs12.password).key
    rid = request(kmc, people["requester"], issued.escrow.id)

    assert decide(kmc, people["o1"], rid).state == "pending"
    # with M-1 approvals nothing is released and nothing is written
    before = audit_actions(kmc)
    with pytest.raises(ConflictError) as short:
        release(kmc, people["requester"], rid)
    assert short.value.code == "kmc.not_enough_approvals" and "1 of the 2" in short.value.reason
    assert audit_actions(kmc) == before

    assert decide(kmc, people["o2"], rid).state == "approved"
    # only the requester takes it out
    with pytest.raises(ForbiddenError) as other:
        release(kmc, people["operator"], rid)
    assert other.value.code == "kmc.not_the_requester"

    done, bundle = release(kmc, people["requester"], rid)
    assert done.state == "released" and done.released_by == "account:secadmin2"
    assert bundle.password != issued.pkcs12.password and bundle.data != issued.pkcs12.data
    recovered = open_pkcs12(bundle.data, bundle.password)
    assert private_bytes(recovered.key) == private_bytes(original)
    assert (
        recovered.cert is not None
        and recovered.cert.certificate.public_bytes(serialization.Encoding.DER) == issued.record.cert_der
    )
    assert openssl_pkcs12_info(tmp_path, bundle.data, bundle.password).returncode == 0
    with pytest.raises(ValueError):
        open_pkcs12(bundle.data, issued.pkcs12.password)  # the old one-time password does not open it

    with pytest.raises(ConflictError) as twice:
        release(kmc, people["requester"], rid)
    assert twice.value.code == "kmc.already_released"

    actions = [(a, o, who) for a, o, who in audit_actions(kmc) if a.startswith("kmc:recovery")]
    assert actions == [
        ("kmc:recovery:request", str(rid), "account:secadmin2"),
        ("kmc:recovery:approve", str(rid), "account:officer1"),
        ("kmc:recovery:approve", str(rid), "account:officer2"),
        ("kmc:recovery:release", str(rid), "account:secadmin2"),
    ]


def test_judicial_recovery_needs_a_case_reference(kmc: Services, people: dict[str, Principal]):
    issued = issue(kmc)
    for case in (None, "  "):
        with kmc.sessions() as session:
            with pytest.raises(InvalidError) as caught:
                kmc.kmc.request_recovery(
                    session,
                    people["requester"],
                    escrow_id=issued.escrow.id,
                    kind="judicial",
                    reason="court",
                    case_reference=case,
                )
            assert caught.value.code == "kmc.case_reference_required" and caught.value.field == "case_reference"
    rid = request(kmc, people["operator"], issued.escrow.id, "judicial", case_reference="(2026)新01刑初123号")
    decide(kmc, people["o3"], rid)
    decide(kmc, people["o1"], rid)
    done, bundle = release(kmc, people["operator"], rid)
    assert done.kind == "judicial" and done.case_reference == "(2026)新01刑初123号"
    assert open_pkcs12(bundle.data, bundle.password).key is not None
    with kmc.sessions() as session:
        details = session.scalars(select(AuditEntry.details).where(AuditEntry.action == "kmc:recovery:release")).one()
    assert "(2026)新01刑初123号" in details and "officer3" in details and "officer1" in details


def test_recovery_refusals_are_clear_and_change_nothing(kmc: Services, people: dict[str, Principal]):
    issued = issue(kmc)
    requester = people["requester"]
    cases = [
        (
            dict(escrow_id=issued.escrow.id, kind="court-order", reason="x"),
            InvalidError,
            "kmc.unknown_recovery_kind",
            "kind",
        ),
        (dict(escrow_id=999999, kind="subscriber", reason="x"), NotFoundError, "kmc.escrow_not_found", "escrow_id"),
        (
            dict(escrow_id=issued.escrow.id, kind="subscriber", reason=" "),
            InvalidError,
            "kmc.reason_required",
            "reason",
        ),
    ]
    before = audit_actions(kmc, "")
    for kwargs, error, code, field in cases:
        with kmc.sessions() as session:
            with pytest.raises(error) as caught:
                kmc.kmc.request_recovery(session, requester, **kwargs)  # type: ignore[arg-type]
            assert (caught.value.code, caught.value.field) == (code, field)
    # officers and the service itself do not request; SYSTEM (the CLI's local operator) does not approve
    for who in (people["o1"], SYSTEM):
        with kmc.sessions() as session:
            with pytest.raises(ForbiddenError) as caught:
                kmc.kmc.request_recovery(session, who, escrow_id=issued.escrow.id, kind="subscriber", reason="x")
            assert caught.value.code == "kmc.may_not_request"
    assert audit_actions(kmc, "") == before

    rid = request(kmc, requester, issued.escrow.id)
    with kmc.sessions() as session:
        for who in (SYSTEM, requester, people["operator"]):
            with pytest.raises(ForbiddenError) as caught:
                kmc.kmc.approve(session, who, rid)
            assert caught.value.code == "kmc.not_an_officer"
        with pytest.raises(NotFoundError) as missing:
            kmc.kmc.approve(session, people["o1"], 424242)
        assert missing.value.code == "kmc.recovery_not_found"
    decide(kmc, people["o1"], rid)
    with pytest.raises(ConflictError) as again:
        decide(kmc, people["o1"], rid)
    assert again.value.code == "kmc.already_decided"
    with kmc.sessions() as session:
        assert session.get_one(RecoveryRequest, rid).approvals == 1


def test_the_requester_cannot_approve_even_after_becoming_an_officer(kmc: Services, people: dict[str, Principal]):
    issued = issue(kmc)
    rid = request(kmc, people["operator"], issued.escrow.id)
    with kmc.sessions() as session:
        session.execute(update(Account).where(Account.username == "operator1").values(role="key_recovery_officer"))
        session.commit()
        promoted = account_principal(session.scalars(select(Account).where(Account.username == "operator1")).one())
    with kmc.sessions() as session:
        with pytest.raises(ForbiddenError) as caught:
            kmc.kmc.approve(session, promoted, rid)
        assert caught.value.code == "kmc.requester_cannot_decide"
    # and an officer whose account was disabled since sign-in no longer counts
    with kmc.sessions() as session:
        session.execute(update(Account).where(Account.username == "officer2").values(disabled=True))
        session.commit()
    with kmc.sessions() as session, pytest.raises(ForbiddenError):
        kmc.kmc.approve(session, people["o2"], rid)


def test_one_rejection_closes_the_request(kmc: Services, people: dict[str, Principal]):
    issued = issue(kmc)
    rid = request(kmc, people["requester"], issued.escrow.id)
    decide(kmc, people["o1"], rid)
    assert decide(kmc, people["o2"], rid, approve=False).state == "rejected"
    with pytest.raises(ConflictError) as late:
        decide(kmc, people["o3"], rid)
    assert late.value.code == "kmc.not_pending"
    with pytest.raises(ConflictError) as refused:
        release(kmc, people["requester"], rid)
    assert refused.value.code == "kmc.recovery_rejected"
    assert [a for a, _, _ in audit_actions(kmc, "kmc:recovery")] == [
        "kmc:recovery:request",
        "kmc:recovery:approve",
        "kmc:recovery:reject",
    ]


def test_recovery_needs_n_officers_to_exist(kmc: Services):
    issued = issue(kmc)
    requester = account(kmc, "secadmin2", Role.SECURITY_ADMIN)
    account(kmc, "officer1", Role.KEY_RECOVERY_OFFICER)
    account(kmc, "officer2", Role.KEY_RECOVERY_OFFICER)
    with kmc.sessions() as session:
        with pytest.raises(UnavailableError) as caught:
            kmc.kmc.request_recovery(session, requester, escrow_id=issued.escrow.id, kind="subscriber", reason="lost")
        assert caught.value.code == "kmc.not_enough_officers" and "there are 2" in caught.value.reason
        assert session.scalar(select(func.count()).select_from(RecoveryRequest)) == 0


def test_storage_key_rows_name_the_store(kmc: Services):
    with kmc.sessions() as session:
        keys = session.scalars(select(KmcStorageKey)).all()
    assert len(keys) == 1 and keys[0].created_by == "system:system"


def test_an_escrow_failure_after_issuance_names_the_serial(kmc: Services, monkeypatch: pytest.MonkeyPatch):
    from keymgmt import KeyStoreError

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyStoreError("token 'kmc' failed: DeviceRemoved")

    monkeypatch.setattr(kmc.kmc, "pkcs12", broken)
    with kmc.sessions() as session:
        with pytest.raises(UnavailableError) as caught:
            kmc.encryption.issue(session, SYSTEM, common_name="赵六")
        session.rollback()
        serial = session.scalars(select(CertificateRecord.serial).where(CertificateRecord.subject.like("%赵六%"))).one()
        assert session.scalar(select(func.count()).select_from(EscrowedKey)) == 0
    assert (
        caught.value.code == "kmc.escrow_failed" and serial in caught.value.reason and "revoke" in caught.value.reason
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"common_name": " "}, "common_name"),
        ({"common_name": "x" * 65}, "common_name"),
        ({"common_name": "a\x00b"}, "common_name"),
        ({"common_name": "x", "organizational_unit": "y" * 65}, "organizational_unit"),
        ({"common_name": "x", "email": "not-an-address"}, "email"),
        ({"common_name": "x", "email": "张@例子.cn"}, "email"),
        ({"common_name": "x", "algorithm": "ec-p384"}, "algorithm"),
        ({"common_name": "x", "profile": "no-such-profile"}, "profile"),
    ],
)
def test_bad_issuance_input_names_the_field_and_changes_nothing(services: Services, kwargs: dict[str, str], field: str):
    with services.sessions() as session:
        services.kmc.ensure_storage_key(session, SYSTEM)
        session.commit()
    before = audit_actions(services, "")
    with services.sessions() as session:
        certificates = session.scalar(select(func.count()).select_from(CertificateRecord))
        with pytest.raises((InvalidError, NotFoundError)) as caught:
            services.encryption.issue(session, SYSTEM, **kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field and caught.value.reason
        session.rollback()
        assert session.scalar(select(func.count()).select_from(CertificateRecord)) == certificates
        assert session.scalar(select(func.count()).select_from(EscrowedKey)) == 0
    assert audit_actions(services, "") == before
