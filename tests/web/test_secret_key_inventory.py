"""The subscriber data key and the TOTP key are in the key inventory (made or found at
start-up), ``govpki keys list`` shows them, and ``govpki backup create --subscriber-data-key
| --totp-key`` / ``restore`` put them back into a fresh file key store: ID numbers decrypt
and TOTP codes verify again."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from authz import totp
from authz.models import Account, TotpKey
from authz.services import account_principal
from govpki.audit import AuditEntry
from govpki.errors import ConflictError, NotFoundError, UnavailableError
from govpki.principal import SYSTEM, Role
from keymgmt.models import KeyRecord
from keymgmt.policy import KeyPurpose
from ra.subscriber_models import SubscriberDataKey
from ra.subscribers import OfficialInput
from tests.ra.conftest import CLERK, OFFICER
from tests.ra.idnumbers import id_number
from tests.web.test_cli_backup import create, passphrase_files, run
from web.bootstrap import initialize
from web.container import Services, build_services

PASSWORD = "one-time-password-Xq7"
NUMBER = id_number()


def records(services: Services, purpose: KeyPurpose) -> list[KeyRecord]:
    with services.sessions() as s:
        return list(s.scalars(select(KeyRecord).where(KeyRecord.purpose == purpose.value).order_by(KeyRecord.id)))


def enrolled_account(services: Services, username: str = "clerk1") -> tuple[Account, str]:
    """An RA clerk that enrolled TOTP (the TOTP key is made at the first enrolment); its secret."""
    with services.sessions() as s:
        account = services.accounts.create(
            s, SYSTEM, username=username, display_name=username, role=Role.RA_CLERK, password=PASSWORD,
            prefecture="650100",
        )  # fmt: skip
        s.commit()
        principal = account_principal(account)
        secret, _uri = services.accounts.totp_enrolment(s, principal)
        now = dt.datetime.now(dt.UTC)
        services.accounts.confirm_totp(s, principal, code=totp.code_at(secret, totp.time_step(now)))
        s.commit()
        s.expunge(account)
    return account, secret


def register_official(services: Services) -> int:
    with services.sessions() as s:
        official = services.subscribers.register_official(
            s, CLERK, OfficialInput(name="张三", id_number=NUMBER, department="税务局")
        )
        s.commit()
        return official.id


def test_the_secret_keys_are_recorded_when_made_and_listed(services: Services) -> None:
    with services.sessions() as s:
        data_key = services.subscribers.active_data_key(s)
    [data_record] = records(services, KeyPurpose.SUBSCRIBER_DATA)
    assert (data_record.store, data_record.handle) == (data_key.key_store, data_key.key_handle)
    assert (data_record.state, data_record.algorithm, data_record.spki_sha256) == ("active", "aes-256", None)

    assert records(services, KeyPurpose.TOTP_SEALING) == []  # made at the first enrolment
    assert run(services, "kmc", "init").exit_code == 0
    enrolled_account(services)
    enrolled_account(services, "clerk2")  # the same key seals the second secret
    with services.sessions() as s:
        [totp_key] = s.scalars(select(TotpKey)).all()
    [totp_record] = records(services, KeyPurpose.TOTP_SEALING)
    assert (totp_record.store, totp_record.handle, totp_record.state) == (
        totp_key.key_store,
        totp_key.key_handle,
        "active",
    )
    with services.sessions() as s:
        registered = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "keymgmt:key:register", AuditEntry.actor == "account:clerk1")
        ).all()
    assert len(registered) == 1  # recorded by whoever caused the key, in the same transaction

    listed = run(services, "keys", "list", "--json")
    assert listed.exit_code == 0, listed.output
    by_purpose = {r["purpose"]: r for r in map(json.loads, listed.output.splitlines())}
    assert by_purpose["subscriber_data"]["handle"] == data_key.key_handle
    assert by_purpose["totp_sealing"]["handle"] == totp_key.key_handle
    assert by_purpose["kmc_storage"]["algorithm"] == "aes-256"  # made by init, recorded since it exists
    text = run(services, "keys", "list", "--purpose", "totp_sealing")
    assert text.exit_code == 0 and totp_key.key_handle in text.output and "subscriber_data" not in text.output


def test_keys_made_before_they_were_recorded_get_records_at_start_up(services: Services) -> None:
    assert run(services, "kmc", "init").exit_code == 0
    enrolled_account(services)
    secret_purposes = (KeyPurpose.SUBSCRIBER_DATA, KeyPurpose.TOTP_SEALING, KeyPurpose.KMC_STORAGE)
    with services.sessions() as s:
        assert s.scalars(select(SubscriberDataKey)).all() and s.scalars(select(TotpKey)).all()
        # an instance of before this change: the keys exist, their records do not
        s.execute(delete(KeyRecord).where(KeyRecord.purpose.in_([p.value for p in secret_purposes])))
        s.commit()
    assert all(records(services, p) == [] for p in secret_purposes)

    report = initialize(services, SYSTEM, first_admin=False, kmc=True)
    assert "key record(s) for 1 subscriber data key(s) made before keys were recorded" in report.created
    assert "key record(s) for 1 TOTP key(s) made before keys were recorded" in report.created
    assert "key record(s) for 1 KMC storage key(s) made before keys were recorded" in report.created
    with services.sessions() as s:
        data_key = services.subscribers.active_data_key(s)
        totp_key = s.scalars(select(TotpKey)).one()
    assert [r.handle for r in records(services, KeyPurpose.SUBSCRIBER_DATA)] == [data_key.key_handle]
    assert [r.handle for r in records(services, KeyPurpose.TOTP_SEALING)] == [totp_key.key_handle]
    assert len(records(services, KeyPurpose.KMC_STORAGE)) == 1

    again = initialize(services, SYSTEM, first_admin=False, kmc=True)  # idempotent
    assert not [line for line in again.created if line.startswith("key record")]
    assert all(len(records(services, p)) == 1 for p in secret_purposes)
    verified = run(services, "audit", "verify")
    assert verified.exit_code == 0, verified.output


def test_a_lost_online_store_gets_both_keys_back_from_custodian_shares(services: Services, tmp_path: Path) -> None:
    official_id = register_official(services)
    account, secret = enrolled_account(services)
    passes = passphrase_files(tmp_path / "passes")
    data_backup, data_id = create(services, tmp_path, passes, "data-key", "--subscriber-data-key")
    totp_backup, totp_id = create(services, tmp_path, passes, "totp-key", "--totp-key")
    data_manifest = json.loads((data_backup / "manifest.json").read_text())
    assert data_manifest["key"]["purpose"] == "subscriber-data" and data_manifest["key"]["algorithm"] == "aes-256"
    assert json.loads((totp_backup / "manifest.json").read_text())["key"]["purpose"] == "totp-sealing"

    # The online key store is lost: a fresh, empty one in its place.
    online = services.config.online_keystore.path
    assert online is not None
    shutil.move(online, tmp_path / "lost-online-store")
    online.mkdir(mode=0o700)
    broken = build_services(services.config)
    try:
        with broken.sessions() as s, pytest.raises(NotFoundError):
            broken.subscribers.reveal_id_number(s, OFFICER, official_id)
    finally:
        broken.dispose()

    for folder in (data_backup, totp_backup):
        restored = run(
            services,
            "backup",
            "restore",
            "--manifest",
            str(folder / "manifest.json"),
            "--share",
            f"{folder / 'share-1-alice.json'}={passes['alice']}",
            "--share",
            f"{folder / 'share-3-carol.json'}={passes['carol']}",
            "--store",
            "online",
        )
        assert restored.exit_code == 0, restored.output
        assert "(checked)" in restored.output

    fresh = build_services(services.config)  # nothing cached from before the loss
    try:
        with fresh.sessions() as s:
            assert fresh.subscribers.reveal_id_number(s, OFFICER, official_id) == NUMBER
            s.commit()
        with fresh.sessions() as s:
            code = totp.code_at(secret, totp.time_step(dt.datetime.now(dt.UTC)) + 1)  # not the step used at enrolment
            signed_in = fresh.accounts.sign_in_totp(s, account.id, code=code, source="10.0.0.9")
            assert signed_in.username == "clerk1"
            s.commit()
        # a registration after the restore finds the number registered before (same HMAC key)
        with fresh.sessions() as s, pytest.raises(ConflictError) as caught:
            fresh.subscribers.register_official(s, CLERK, OfficialInput(name="张三", id_number=NUMBER, department="x"))
        assert caught.value.code == "ra.duplicate_id_number"
    finally:
        fresh.dispose()

    # the keys kept their records (put back where they were): no second record
    assert len(records(services, KeyPurpose.SUBSCRIBER_DATA)) == 1
    assert len(records(services, KeyPurpose.TOTP_SEALING)) == 1
    with services.sessions() as s:
        restores = s.scalars(select(AuditEntry).where(AuditEntry.action == "keymgmt:backup:restore")).all()
        kept = {json.loads(e.details)["backup_id"]: json.loads(e.details)["key_record"] for e in restores}
    assert set(kept) == {data_id, totp_id} and all(isinstance(v, int) for v in kept.values())


def test_backing_up_a_key_that_does_not_exist_yet_is_a_clear_error(services: Services, tmp_path: Path) -> None:
    passes = passphrase_files(tmp_path / "passes")
    result = run(
        services,
        "backup",
        "create",
        "--totp-key",
        "-m",
        "2",
        "--custodian",
        f"alice={passes['alice']}",
        "--custodian",
        f"bob={passes['bob']}",
        "--out",
        str(tmp_path / "none"),
    )
    assert result.exit_code != 0 and "first TOTP enrolment" in result.output
    assert not (tmp_path / "none").exists()
    both = run(services, "backup", "create", "--totp-key", "--subscriber-data-key", "-m", "2", "--out", "x",
               "--custodian", f"alice={passes['alice']}")  # fmt: skip
    assert both.exit_code == 2 and "--subscriber-data-key, --totp-key" in both.output
    with services.sessions() as s, pytest.raises(UnavailableError):
        services.accounts.totp_key(s, SYSTEM)
