"""Key records and the key policy: every key the system makes gets a record in the same
transaction; the policy refuses algorithms; rotation keeps the old key verifying during
the overlap; destroying refuses active keys and removes retired ones from their store
(a file, or the objects on a SoftHSM2 token); the migration backfills older instances."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from pkcs11 import Attribute
from sqlalchemy import delete, func, select

from ca.models import CaKind, OcspResponder, TlogTreeHead
from govpki import audit
from govpki.audit import AuditCheckpoint, AuditEntry
from govpki.clock import UTC
from govpki.config import Config
from govpki.db import MIGRATIONS_DIR
from govpki.errors import ConfigError, ConflictError, ForbiddenError, InvalidError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from keymgmt import Pkcs11KeyStore
from keymgmt.models import KeyRecord, KeyState
from keymgmt.policy import KeyPurpose, load_key_policy
from keymgmt.services import spki_sha256
from tests.helpers import csr_pem, make_config
from tests.softhsm import softhsm_settings
from web.bootstrap import initialize
from web.container import Services, build_services

AUDITOR = Principal(PrincipalKind.ACCOUNT, "7", "auditor", frozenset({Role.SECURITY_AUDITOR}))
SECADMIN = Principal(PrincipalKind.ACCOUNT, "8", "secadmin", frozenset({Role.SECURITY_ADMIN}))
OPERATOR = Principal(PrincipalKind.ACCOUNT, "9", "operator", frozenset({Role.CA_OPERATOR}))


class MovableClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at


def _records(services: Services, **where: str) -> list[KeyRecord]:
    with services.sessions() as s:
        query = select(KeyRecord).order_by(KeyRecord.id)
        for name, value in where.items():
            query = query.where(getattr(KeyRecord, name) == value)
        records = list(s.scalars(query))
        s.expunge_all()
        return records


def _checkpoint_and_sth(services: Services) -> None:
    with services.sessions() as s:
        services.auditing.checkpoint(s, SYSTEM)
        services.tlog.sign_tree_head(s, SYSTEM)
        s.commit()


def _issue(services: Services, cn: str) -> None:
    with services.sessions() as s:
        services.ca.issue(s, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn))
        s.commit()


def _assert_records_of_init(services: Services) -> None:
    _issue(services, "records.example.gov.cn")
    _checkpoint_and_sth(services)
    records = _records(services)
    by_purpose = {r.purpose: r for r in records}
    assert sorted(by_purpose) == [
        "audit_signing",
        "issuing_ca",
        "ocsp_signing",
        "root",
        "subscriber_data",
        "tlog_signing",
    ]
    assert len(records) == 6 and all(r.state == KeyState.ACTIVE.value for r in records)
    with services.sessions() as s:
        root = services.ca.active_ca(s, CaKind.ROOT)
        issuing = services.ca.active_ca(s, CaKind.ISSUING)
        responder = s.scalars(select(OcspResponder)).one()
        data_key = services.subscribers.active_data_key(s)
        registered = s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "keymgmt:key:register")
        )
    assert registered == 6
    # the subscriber data key: a secret (AES-256) key, no public key to fingerprint
    data_record = records.pop(records.index(by_purpose["subscriber_data"]))
    assert (data_record.store, data_record.handle) == (data_key.key_store, data_key.key_handle)
    assert (data_record.algorithm, data_record.spki_sha256) == ("aes-256", None)
    assert (by_purpose["root"].store, by_purpose["root"].handle) == ("root", root.key_handle)
    assert (by_purpose["issuing_ca"].store, by_purpose["issuing_ca"].handle) == ("online", issuing.key_handle)
    assert by_purpose["ocsp_signing"].handle == responder.key_handle
    assert by_purpose["ocsp_signing"].use_until == responder.not_after
    for record in records:
        store = services.keystores[record.store]
        assert record.spki_sha256 is not None
        assert spki_sha256(store.public_key(record.handle)) == record.spki_sha256
    # usage: the root signed itself, the issuing CA and the ARL; the issuing CA the OCSP
    # responder certificate, its first CRL and the leaf; each statement key one statement
    assert by_purpose["root"].usage_count == 3
    assert by_purpose["issuing_ca"].usage_count == 3
    assert by_purpose["audit_signing"].usage_count == 1 and by_purpose["tlog_signing"].usage_count == 1


def test_records_appear_for_the_keys_init_makes(services: Services) -> None:
    _assert_records_of_init(services)


def test_records_appear_for_the_keys_init_makes_on_softhsm(tmp_path: Path, database_url: str) -> None:
    config = dataclasses.replace(
        make_config(tmp_path / "instance", database_url),
        root_keystore=softhsm_settings(tmp_path, "keys-root"),
        online_keystore=softhsm_settings(tmp_path, "keys-online"),
    )
    services = build_services(config)
    try:
        initialize(services, SYSTEM, first_admin=False)
        _assert_records_of_init(services)
        assert all(r.handle.startswith("pkcs11:") for r in _records(services))
    finally:
        services.dispose()


def test_the_policy_refuses_an_algorithm_and_nothing_is_made(services: Services) -> None:
    before = _records(services)
    store = services.keystores["online"]
    with services.sessions() as s, pytest.raises(InvalidError) as refused:
        services.keys.generate(s, SYSTEM, KeyPurpose.AUDIT_SIGNING, label="audit-rsa", algorithm="rsa-2048")
    assert refused.value.code == "keymgmt.algorithm_not_allowed" and refused.value.field == "algorithm"
    assert "audit_signing" in refused.value.reason and "ec-p256" in refused.value.reason
    assert not store.has("file:audit-rsa")
    assert [r.id for r in _records(services)] == [r.id for r in before]


def test_a_ca_algorithm_the_policy_forbids_stops_start_up(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path / "instance", database_url, GOVPKI_ISSUING_KEY_ALGORITHM="rsa-2048")
    with pytest.raises(ConfigError, match="GOVPKI_ISSUING_KEY_ALGORITHM: 'rsa-2048' is not allowed for issuing_ca"):
        build_services(config)


def test_a_bad_policy_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    text = Path("keymgmt/data/key_policy.toml").read_text(encoding="utf-8")
    bad = tmp_path / "policy.toml"
    bad.write_text(text.replace("lifetime_days = 365\noverlap_days = 30", "lifetime_days = 30\noverlap_days = 30", 1))
    with pytest.raises(ConfigError, match=r"purposes\.audit_signing: .*overlap_days must be less than lifetime_days"):
        load_key_policy(bad)
    bad.write_text(text.replace('algorithms = ["ec-p256"]', 'algorithms = ["ed25519"]', 1))
    with pytest.raises(ConfigError, match=r"purposes\.audit_signing\.algorithms\.0"):
        load_key_policy(bad)
    bad.write_text(text.split("[purposes.escrowed_encryption]")[0])
    with pytest.raises(ConfigError, match=r"no policy for purpose.*escrowed_encryption"):
        load_key_policy(bad)
    with pytest.raises(ConfigError, match="GOVPKI_OCSP_RESPONDER_DAYS is replaced by the key policy"):
        Config.from_env({"GOVPKI_OCSP_RESPONDER_DAYS": "20"})


@pytest.fixture
def moving(tmp_path: Path, config: Config) -> Iterator[tuple[Services, MovableClock]]:
    clock = MovableClock(dt.datetime(2026, 1, 1, tzinfo=UTC))
    services = build_services(config, clock=clock)
    try:
        yield services, clock
    finally:
        services.dispose()


def _checkpoint(services: Services) -> None:
    with services.sessions() as s:
        audit.record(s, SYSTEM, "test:thing:touch", object_type="thing", object_id="x", details={})
        assert services.auditing.checkpoint(s, SYSTEM) is not None
        s.commit()


def _verify_ok(services: Services) -> None:
    with services.sessions() as s:
        report = services.auditing.verify(s, AUDITOR)
        s.commit()
    assert report.ok, report


def test_rotation_with_overlap_then_retire_and_destroy(moving: tuple[Services, MovableClock]) -> None:
    services, clock = moving
    _checkpoint(services)
    (first,) = _records(services, purpose="audit_signing")
    policy = services.keys.policy.get(KeyPurpose.AUDIT_SIGNING)
    assert first.use_until == clock.at + policy.lifetime

    # before lifetime - overlap nothing is due
    clock.at += policy.lifetime - policy.overlap - dt.timedelta(days=1)
    with services.sessions() as s:
        assert not services.keys.rotation_due(s, KeyPurpose.AUDIT_SIGNING)
        assert services.keys.rotate_due(s, SYSTEM).lines == []
    # in the overlap window: a new key signs, the old one stays active (verifies)
    clock.at += dt.timedelta(days=2)
    with services.sessions() as s:
        report = services.keys.rotate_due(s, SYSTEM)
        s.commit()
    assert len(report.rotated) == 1 and report.retired == []
    old, new = _records(services, purpose="audit_signing")
    assert old.id == first.id and old.state == new.state == "active"
    _checkpoint(services)
    with services.sessions() as s:
        handles = [c.key_handle for c in s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))]
    assert handles == [old.handle, new.handle]
    _verify_ok(services)  # the statement signed before still verifies, with the old key

    # the overlap ends: the old key is retired by the job, statements still verify
    assert old.use_until is not None
    clock.at = old.use_until + dt.timedelta(seconds=1)
    with services.sessions() as s:
        report = services.keys.rotate_due(s, SYSTEM)
        s.commit()
    assert [r.id for r in report.retired] == [old.id] and report.rotated == []
    _verify_ok(services)

    # destroying: the active key is refused, the retired one goes (file removed, audited)
    with services.sessions() as s, pytest.raises(ConflictError) as refused:
        services.keys.destroy(s, SECADMIN, new.id)
    assert refused.value.code == "keymgmt.key_active" and "retire it" in refused.value.reason
    with services.sessions() as s, pytest.raises(ForbiddenError):
        services.keys.destroy(s, AUDITOR, old.id)
    store = services.keystores["online"]
    assert store.has(old.handle)
    with services.sessions() as s:
        services.keys.destroy(s, SECADMIN, old.id)
        s.commit()
    assert not store.has(old.handle)
    (gone,) = _records(services, id=old.id)  # type: ignore[arg-type]
    assert gone.state == "destroyed" and gone.destroyed_at == clock.at
    _verify_ok(services)  # checkpoints of the destroyed key still verify by its record
    with services.sessions() as s, pytest.raises(ConflictError):
        services.keys.destroy(s, SECADMIN, old.id)


def test_rotation_of_the_tlog_key_keeps_old_tree_heads_verifiable(moving: tuple[Services, MovableClock]) -> None:
    services, clock = moving
    initialize(services, SYSTEM, first_admin=False)
    _checkpoint_and_sth(services)
    with services.sessions() as s:
        lines = services.keys.rotate(s, SECADMIN, "tlog_signing")
        s.commit()
    assert lines and lines[0].startswith("new tlog_signing key")
    _issue(services, "after-rotation.example.gov.cn")
    clock.at += dt.timedelta(minutes=1)
    _checkpoint_and_sth(services)
    with services.sessions() as s:
        report = services.tlog.audit(s)
        heads = list(s.scalars(select(TlogTreeHead).order_by(TlogTreeHead.tree_size)))
    assert report.ok, report.problems
    old, new = _records(services, purpose="tlog_signing")
    assert [h.key_handle for h in heads] == [old.handle, new.handle]


def test_rotate_ocsp_signing_makes_a_new_responder_and_the_old_key_verifies_until_expiry(services: Services) -> None:
    with services.sessions() as s:
        lines = services.keys.rotate(s, SYSTEM, KeyPurpose.OCSP_SIGNING, checkpoint=s.commit)
        s.commit()
    assert len(lines) == 1 and "new OCSP responder" in lines[0]
    old, new = _records(services, purpose="ocsp_signing")
    with services.sessions() as s:
        responders = list(s.scalars(select(OcspResponder).order_by(OcspResponder.id)))
    assert [r.active for r in responders] == [False, True]
    assert old.state == new.state == "active" and old.use_until == responders[0].not_after
    with services.sessions() as s:
        current = services.keys.current(s, KeyPurpose.OCSP_SIGNING)
        assert current is not None and current.id == new.id


def test_key_purposes_not_rotated_on_schedule_are_refused(services: Services) -> None:
    with services.sessions() as s, pytest.raises(InvalidError) as refused:
        services.keys.rotate(s, SYSTEM, "issuing_ca")
    assert refused.value.code == "keymgmt.not_rotating" and refused.value.field == "purpose"
    with services.sessions() as s, pytest.raises(InvalidError) as refused:
        services.keys.rotate(s, SYSTEM, "nonsense")
    assert refused.value.field == "purpose"


def test_permissions_auditor_reads_secadmin_manages(services: Services) -> None:
    with services.sessions() as s:
        assert {r.purpose for r in services.keys.list_keys(s, AUDITOR)} >= {"root", "issuing_ca"}
        assert services.keys.list_keys(s, AUDITOR, purpose="root", state="active")[0].store == "root"
        with pytest.raises(ForbiddenError):
            services.keys.list_keys(s, OPERATOR)
        issuing = services.keys.list_keys(s, AUDITOR, purpose="issuing_ca")[0]
        with pytest.raises(ForbiddenError):
            services.keys.retire(s, AUDITOR, issuing.id)
        with pytest.raises(InvalidError) as bad:
            services.keys.list_keys(s, AUDITOR, state="sleeping")
        assert bad.value.field == "state"
        # the active issuing CA key cannot be destroyed
        with pytest.raises(ConflictError) as refused:
            services.keys.destroy(s, SECADMIN, issuing.id)
        assert refused.value.code == "keymgmt.key_active"
        # retire (for CA rollover) is audited
        services.keys.retire(s, SECADMIN, issuing.id, reason="test")
        s.flush()
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "keymgmt:key:retire")).one()
        assert entry.object_id == str(issuing.id) and '"reason":"test"' in entry.details
        assert '"before":{"state":"active"}' in entry.details and '"after":{"state":"retired"}' in entry.details
        with pytest.raises(ConflictError):
            services.keys.retire(s, SECADMIN, issuing.id)
        s.rollback()


def test_destroy_a_retired_key_on_softhsm_removes_its_objects(tmp_path: Path, database_url: str) -> None:
    config = dataclasses.replace(
        make_config(tmp_path / "instance", database_url), online_keystore=softhsm_settings(tmp_path, "keys-destroy")
    )
    services = build_services(config)
    try:
        store = services.keystores["online"]
        assert isinstance(store, Pkcs11KeyStore)
        with services.sessions() as s:
            record = services.keys.generate(s, SYSTEM, KeyPurpose.TOKEN_SIGNING, activate=False)
            s.commit()
            record_id, handle = record.id, record.handle
        assert record.state == "pre_active" and store.has(handle)
        with services.sessions() as s:
            services.keys.activate(s, SECADMIN, record_id)
            s.commit()
        with services.sessions() as s:
            current = services.keys.current(s, KeyPurpose.TOKEN_SIGNING)
            assert current is not None and current.id == record_id
            with pytest.raises(ConflictError):
                services.keys.destroy(s, SECADMIN, record_id)
            services.keys.retire(s, SECADMIN, record_id)
            services.keys.destroy(s, SECADMIN, record_id)
            s.commit()
        assert not store.has(handle)
        label = handle.removeprefix("pkcs11:")
        objects = store._conn.run(lambda session: list(session.get_objects({Attribute.LABEL: label})))
        assert objects == []  # private and public objects are gone from the token
        with services.sessions() as s:
            entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "keymgmt:key:destroy")).one()
            assert entry.object_id == str(record_id) and handle in entry.details
            assert '"before":{"state":"retired"}' in entry.details and '"after":{"state":"destroyed"}' in entry.details
            actions = list(
                s.scalars(select(AuditEntry.action).where(AuditEntry.object_type == "key").order_by(AuditEntry.seq))
            )
        assert actions == ["keymgmt:key:register", "keymgmt:key:activate", "keymgmt:key:retire", "keymgmt:key:destroy"]
        (destroyed,) = _records(services, id=record_id)  # type: ignore[arg-type]
        assert destroyed.state == "destroyed"
    finally:
        services.dispose()


def test_the_migration_backfills_records_for_an_instance_made_before_it(services: Services) -> None:
    _issue(services, "backfill.example.gov.cn")
    _checkpoint_and_sth(services)
    # 0004 backfills the asymmetric keys; secret keys get their records at start-up (0017)
    expected = {
        (r.purpose, r.store, r.handle, r.spki_sha256, r.state)
        for r in _records(services)
        if r.purpose != KeyPurpose.SUBSCRIBER_DATA.value
    }
    assert len(expected) == 5
    # an instance from before migration 0004: its keys have no records; run 0004's backfill
    spec = importlib.util.spec_from_file_location("m0004", MIGRATIONS_DIR / "versions" / "0004_key_records.py")
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    with services.engine.begin() as conn:
        conn.execute(delete(KeyRecord))
        with Operations.context(MigrationContext.configure(conn)):
            migration.backfill()
    records = _records(services)
    assert {(r.purpose, r.store, r.handle, r.spki_sha256, r.state) for r in records} == expected
    by_purpose = {r.purpose: r for r in records}
    assert by_purpose["issuing_ca"].usage_count == 3  # OCSP responder certificate, first CRL, the leaf
    assert by_purpose["audit_signing"].usage_count == 1 and by_purpose["audit_signing"].use_until is None
    with services.sessions() as s:
        # the planned end of a backfilled record comes from the policy
        record = services.keys.current(s, KeyPurpose.AUDIT_SIGNING)
        assert record is not None and record.id == by_purpose["audit_signing"].id
        assert (
            services.keys.planned_end(record)
            == record.activated_at + services.keys.policy.get(KeyPurpose.AUDIT_SIGNING).lifetime
        )
