"""CA key backup to M-of-N custodian shares and restore (keymgmt.backup), on real files,
a real database for the audit records, and SoftHSM2 for the refusal of HSM keys."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.models import CaKind
from govpki.audit import AuditEntry
from govpki.clock import SystemClock
from govpki.errors import ConflictError, ForbiddenError, InvalidError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from keymgmt import FileKeyStore, KeyExportRefusedError, Pkcs11KeyStore, PublicKey
from keymgmt.backup import (
    BackupFileError,
    BackupResult,
    Custodian,
    DuplicateShareError,
    ForeignShareError,
    KeyBackupService,
    ManifestTamperedError,
    ShareInput,
    ShareTamperedError,
    TooFewSharesError,
    WrongPassphraseError,
    inspect_backup,
    spki_sha256,
)
from keymgmt.interfaces import signature_hash
from tests.softhsm import make_softhsm_token
from web.container import Services

PASS = b"store passphrase for tests"
NAMES = ("alice", "bob", "carol")
PASSPHRASES = {name: f"{name}'s long passphrase".encode() for name in (*NAMES, "dave", "erin")}
SECADMIN = Principal(PrincipalKind.ACCOUNT, "1", "secadmin", frozenset({Role.SECURITY_ADMIN}))
OPERATOR = Principal(PrincipalKind.ACCOUNT, "2", "operator", frozenset({Role.CA_OPERATOR}))


@pytest.fixture
def backup() -> KeyBackupService:
    return KeyBackupService(SystemClock(), scrypt_log2_n=14)  # cheap KDF: many shares per test


@pytest.fixture
def session(bare_services: Services) -> Iterator[Session]:
    with bare_services.sessions() as s:
        yield s


@pytest.fixture
def store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys", PASS)


@dataclass
class Made:
    result: BackupResult
    handle: str
    public: PublicKey

    @property
    def manifest(self) -> Path:
        return self.result.manifest_path

    def share(self, index: int) -> Path:
        return self.result.share_paths[index - 1]

    def inputs(self, *indexes: int) -> list[ShareInput]:
        names = self.result.manifest.custodians
        return [ShareInput(self.share(i), PASSPHRASES[names[i - 1]]) for i in indexes]


def custodians(names: Sequence[str] = NAMES) -> list[Custodian]:
    return [Custodian(n, PASSPHRASES[n]) for n in names]


def make_backup(
    backup: KeyBackupService,
    session: Session,
    store: FileKeyStore,
    out: Path,
    *,
    label: str = "issuing-test",
    algorithm: Any = "ec-p384",
    threshold: int = 2,
    names: Sequence[str] = NAMES,
    handle: str | None = None,
) -> Made:
    if handle is None:
        handle = store.generate(label, algorithm)
    result = backup.create(
        session,
        SYSTEM,
        store,
        handle,
        purpose="issuing-ca",
        threshold=threshold,
        custodians=custodians(names),
        out_dir=out,
    )
    return Made(result, handle, store.public_key(handle))


def audit_entries(session: Session, action: str) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def assert_signs_for(signer: Any, public: PublicKey) -> None:
    data = b"restored key test message"
    if isinstance(signer, ec.EllipticCurvePrivateKey):
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signer.sign(data, ec.ECDSA(hashes.SHA256())), data, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signer.sign(data, padding.PKCS1v15(), hashes.SHA256()), data, padding.PKCS1v15(), hashes.SHA256())


def edit_json(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.chmod(0o600)
    path.write_text(json.dumps(doc), encoding="utf-8")


def flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --- round trip against the real issuing CA ----------------------------------------------


def test_issuing_ca_key_round_trip_signs_a_crl_the_ca_certificate_verifies(
    services: Services, backup: KeyBackupService, tmp_path: Path
) -> None:
    online = services.keystores["online"]
    assert isinstance(online, FileKeyStore)
    with services.sessions() as session:
        ca = services.ca.active_ca(session, CaKind.ISSUING)
        cert = x509.load_der_x509_certificate(ca.cert_der)
        result = backup.create(
            session,
            SYSTEM,
            online,
            ca.key_handle,
            purpose="issuing-ca",
            threshold=2,
            custodians=custodians(),
            out_dir=tmp_path / "backup",
        )
        session.commit()
    assert result.manifest.spki_sha256 == spki_sha256(cert.public_key())  # type: ignore[arg-type]

    fresh = FileKeyStore(tmp_path / "fresh-store", b"another passphrase")
    with services.sessions() as session:
        restored = backup.restore(
            session,
            SECADMIN,
            result.manifest_path,
            [
                ShareInput(result.share_paths[0], PASSPHRASES["alice"]),
                ShareInput(result.share_paths[2], PASSPHRASES["carol"]),
            ],
            fresh,
        )
        session.commit()
    assert restored.handle == ca.key_handle and restored.used == ((1, "alice"), (3, "carol"))

    # A new store object reads the key from its file: the restored key signs a CRL that the
    # issuing CA certificate's public key verifies.
    signer = FileKeyStore(tmp_path / "fresh-store", b"another passphrase").signer(restored.handle)
    now = dt.datetime.now(dt.UTC)
    algorithm = signature_hash(signer.public_key())
    assert isinstance(algorithm, hashes.SHA256 | hashes.SHA384)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=1))
        .sign(signer, algorithm)
    )
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]

    with services.sessions() as session:
        (created,) = audit_entries(session, "keymgmt:backup:create")
        (restored_entry,) = audit_entries(session, "keymgmt:backup:restore")
    details = json.loads(created.details)
    assert created.object_id == ca.key_handle and created.actor == "system:system"
    assert details["backup_id"] == result.manifest.backup_id
    assert details["spki_sha256"] == result.manifest.spki_sha256
    assert (details["threshold"], details["shares"], details["custodians"]) == (2, 3, list(NAMES))
    again = json.loads(restored_entry.details)
    assert restored_entry.actor == "account:secadmin"
    assert again["backup_id"] == result.manifest.backup_id and again["custodians"] == ["alice", "carol"]
    manifest = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    for entry in (created, restored_entry):  # no key material in the log
        assert manifest["wrapped_key"] not in entry.details and "PRIVATE" not in entry.details


# --- restore with any M shares ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048"])
def test_every_subset_of_m_shares_restores_the_same_key(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path, algorithm: str
) -> None:
    made = make_backup(
        backup, session, store, tmp_path / "b", algorithm=algorithm, threshold=3, names=(*NAMES, "dave", "erin")
    )
    subsets = [*itertools.combinations(range(1, 6), 3), (1, 2, 3, 4, 5)]
    for n, subset in enumerate(subsets):
        target = FileKeyStore(tmp_path / f"target-{n}", PASS)
        restored = backup.restore(session, SYSTEM, made.manifest, made.inputs(*subset), target)
        assert [i for i, _ in restored.used] == list(subset)
        signer = FileKeyStore(tmp_path / f"target-{n}", PASS).signer(restored.handle)
        assert signer.public_key() == made.public
        assert_signs_for(signer, made.public)
    assert len(audit_entries(session, "keymgmt:backup:restore")) == len(subsets)


def test_restore_under_another_label(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    target = FileKeyStore(tmp_path / "t", PASS)
    restored = backup.restore(session, SYSTEM, made.manifest, made.inputs(2, 3), target, label="issuing-restored")
    assert restored.handle == "file:issuing-restored" and target.labels() == ["issuing-restored"]
    assert target.public_key(restored.handle) == made.public


def test_a_key_restored_into_a_configured_store_gets_a_pre_active_record(
    bare_services: Services, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    """Restored into the instance's own key store, the key is recorded (purpose from the
    backup, state pre-active: it signs nothing until someone puts it to use)."""
    from keymgmt.models import KeyRecord

    backup = KeyBackupService(SystemClock(), scrypt_log2_n=14, keys=bare_services.keys)
    made = make_backup(backup, session, store, tmp_path / "b")
    online = bare_services.keystores["online"]
    restored = backup.restore(
        session, SYSTEM, made.manifest, made.inputs(1, 3), online, label="issuing-restored", target_name="online"
    )
    record = session.scalars(select(KeyRecord).where(KeyRecord.handle == restored.handle)).one()
    assert (record.purpose, record.store, record.state) == ("issuing_ca", "online", "pre_active")
    assert record.description.startswith("restored from backup")
    # a store outside the instance (no name) gets no record
    other = backup.restore(session, SYSTEM, made.manifest, made.inputs(1, 2), FileKeyStore(tmp_path / "t", PASS))
    assert session.scalars(select(KeyRecord).where(KeyRecord.handle == other.handle)).first() is None


def test_a_label_another_key_record_names_is_refused(
    bare_services: Services, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    """Restored under a store and handle whose key record is of another purpose: a 409, no
    key written, no record changed (a key put back where its own record names it keeps it:
    tests/web/test_secret_key_inventory.py)."""
    from keymgmt.models import KeyRecord
    from keymgmt.policy import KeyPurpose

    backup = KeyBackupService(SystemClock(), scrypt_log2_n=14, keys=bare_services.keys)
    made = make_backup(backup, session, store, tmp_path / "b")
    online = bare_services.keystores["online"]
    bare_services.keys.register(
        session, SYSTEM, purpose=KeyPurpose.TOTP_SEALING, store="online", handle="file:lost-key", algorithm="aes-256"
    )
    with pytest.raises(ConflictError) as info:
        backup.restore(
            session, SYSTEM, made.manifest, made.inputs(1, 2), online, label="lost-key", target_name="online"
        )
    assert info.value.field == "label" and "totp_sealing" in str(info.value)
    assert not online.has("file:lost-key") and audit_entries(session, "keymgmt:backup:restore") == []
    assert len(session.scalars(select(KeyRecord).where(KeyRecord.handle == "file:lost-key")).all()) == 1


# --- refusals: each a clear error, nothing restored ----------------------------------------


def refused(
    backup: KeyBackupService,
    session: Session,
    made: Made,
    shares: list[ShareInput],
    target_dir: Path,
    error: type[Exception],
    *words: str,
) -> None:
    target = FileKeyStore(target_dir, PASS)
    with pytest.raises(error) as info:
        backup.restore(session, SYSTEM, made.manifest, shares, target)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert target.labels() == []
    assert audit_entries(session, "keymgmt:backup:restore") == []


def test_m_minus_one_shares_restore_nothing(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b", threshold=3, names=(*NAMES, "dave"))
    for subset in itertools.combinations(range(1, 5), 2):
        refused(backup, session, made, made.inputs(*subset), tmp_path / "t", TooFewSharesError, "needs 3", "2 given")
    refused(backup, session, made, [], tmp_path / "t", TooFewSharesError, "none given")
    with pytest.raises(TooFewSharesError) as info:
        backup.restore(session, SYSTEM, made.manifest, made.inputs(1, 2), FileKeyStore(tmp_path / "t", PASS))
    assert info.value.code == "keymgmt.backup_too_few_shares" and info.value.field == "shares"


def test_wrong_passphrase_names_the_share_file(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    swapped = [ShareInput(made.share(1), PASSPHRASES["alice"]), ShareInput(made.share(2), PASSPHRASES["alice"])]
    refused(backup, session, made, swapped, tmp_path / "t", WrongPassphraseError, str(made.share(2)), "'bob'")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.update(ciphertext=flip_b64(d["ciphertext"])), id="ciphertext"),
        pytest.param(lambda d: d.update(nonce=flip_b64(d["nonce"])), id="nonce"),
        pytest.param(lambda d: d.update(index=3), id="index"),
        pytest.param(lambda d: d.update(custodian="mallory"), id="custodian"),
        pytest.param(lambda d: d.update(spki_sha256="0" * 64), id="fingerprint"),
        pytest.param(lambda d: d.update(threshold=3), id="threshold"),
    ],
)
def test_a_tampered_share_is_refused(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path, change: Any
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    edit_json(made.share(1), change)
    refused(
        backup, session, made, made.inputs(1, 2), tmp_path / "t", ShareTamperedError, str(made.share(1)), "modified"
    )


def test_a_share_with_bytes_changed_on_disk_is_refused(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    path = made.share(2)
    doc = json.loads(path.read_text(encoding="utf-8"))
    text = path.read_text(encoding="utf-8")
    value = doc["ciphertext"]
    changed = value[:5] + ("A" if value[5] != "A" else "B") + value[6:]
    path.write_text(text.replace(value, changed), encoding="utf-8")
    refused(backup, session, made, made.inputs(1, 2), tmp_path / "t", ShareTamperedError, str(path))


def test_a_share_from_another_backup_is_refused(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "one")
    other = make_backup(backup, session, store, tmp_path / "two", handle=made.handle)  # same key, same people
    mixed = [*made.inputs(1), *other.inputs(2)]
    refused(
        backup,
        session,
        made,
        mixed,
        tmp_path / "t",
        ForeignShareError,
        str(other.share(2)),
        other.result.manifest.backup_id,
    )
    # Relabelled to pass as this backup's share, it no longer authenticates.
    edit_json(other.share(2), lambda d: d.update(backup_id=made.result.manifest.backup_id))
    refused(backup, session, made, mixed, tmp_path / "t", ShareTamperedError, str(other.share(2)))


def test_the_same_share_twice_is_refused(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    copy = tmp_path / "copy-of-share-1.json"
    shutil.copy(made.share(1), copy)
    twice = [*made.inputs(1), ShareInput(copy, PASSPHRASES["alice"])]
    refused(backup, session, made, twice, tmp_path / "t", DuplicateShareError, "both share 1", str(copy))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.update(wrapped_key=flip_b64(d["wrapped_key"])), id="wrapped-key"),
        pytest.param(lambda d: d["key"].update(purpose="root-ca"), id="purpose"),
        pytest.param(lambda d: d["key"].update(label="other"), id="label"),
        pytest.param(lambda d: d.update(created_at="2020-01-01T00:00:00.000000Z"), id="created-at"),
        pytest.param(lambda d: d["key"].update(spki_sha256="0" * 64), id="fingerprint"),
        pytest.param(lambda d: d.update(threshold=3), id="threshold"),
        pytest.param(lambda d: d["custodians"][0].update(name="mallory"), id="custodian"),
    ],
)
def test_a_tampered_manifest_is_refused(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path, change: Any
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    edit_json(made.manifest, change)
    shares = made.inputs(1, 2, 3)
    refused(backup, session, made, shares, tmp_path / "t", ManifestTamperedError, str(made.manifest), "altered")


def test_unreadable_files_are_clear_errors(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    missing = ShareInput(tmp_path / "nope.json", PASSPHRASES["bob"])
    refused(backup, session, made, [*made.inputs(1), missing], tmp_path / "t", BackupFileError, "does not exist")
    not_json = tmp_path / "garbage.json"
    not_json.write_bytes(b"\x00\x01garbage")
    with pytest.raises(BackupFileError) as info:
        backup.restore(session, SYSTEM, not_json, made.inputs(1, 2), FileKeyStore(tmp_path / "t", PASS))
    assert info.value.field == "manifest" and "not JSON" in info.value.reason
    with pytest.raises(BackupFileError, match="not a govpki key backup manifest"):
        backup.restore(session, SYSTEM, made.share(1), made.inputs(1, 2), FileKeyStore(tmp_path / "t", PASS))


def test_restore_never_overwrites_a_key(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    before = (store.directory / "issuing-test.key.pem").read_bytes()
    with pytest.raises(ConflictError) as info:
        backup.restore(session, SYSTEM, made.manifest, made.inputs(1, 2), store)
    assert info.value.field == "label"
    assert (store.directory / "issuing-test.key.pem").read_bytes() == before
    assert audit_entries(session, "keymgmt:backup:restore") == []


# --- backup: files, input checks, permissions, HSM -----------------------------------------


def test_backup_files_are_owner_only_and_never_overwritten(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    folder = made.result.folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["manifest.json", "share-1-alice.json", "share-2-bob.json", "share-3-carol.json"]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ConflictError) as info:
        make_backup(backup, session, store, folder, handle=made.handle)
    assert info.value.field == "out_dir"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert len(audit_entries(session, "keymgmt:backup:create")) == 1
    # Nothing secret in clear: no PEM and the shares are not the key.
    for data in before.values():
        assert b"PRIVATE KEY" not in data


def test_manifest_and_inspect(backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path) -> None:
    made = make_backup(backup, session, store, tmp_path / "b")
    other = make_backup(backup, session, store, tmp_path / "c", handle=made.handle)
    manifest, shares = inspect_backup(made.manifest, [made.share(2), other.share(3)])
    assert manifest == made.result.manifest
    assert (manifest.threshold, manifest.shares, manifest.custodians) == (2, 3, NAMES)
    assert manifest.label == "issuing-test" and manifest.purpose == "issuing-ca" and manifest.algorithm == "ec-p384"
    assert manifest.spki_sha256 == spki_sha256(made.public)
    assert [(s.index, s.custodian, s.belongs) for s in shares] == [(2, "bob", True), (3, "carol", False)]


@pytest.mark.parametrize(
    ("threshold", "names", "field", "words"),
    [
        (1, NAMES, "threshold", "at least 2"),
        (4, NAMES, "threshold", "more than the number of custodians"),
        (2, ("alice",), "threshold", "more than"),
        (2, ("alice", "alice", "bob"), "custodians", "named twice"),
    ],
)
def test_bad_backup_input_writes_nothing(
    backup: KeyBackupService,
    session: Session,
    store: FileKeyStore,
    tmp_path: Path,
    threshold: int,
    names: tuple[str, ...],
    field: str,
    words: str,
) -> None:
    handle = store.generate("k", "ec-p256")
    with pytest.raises(InvalidError) as info:
        backup.create(
            session,
            SYSTEM,
            store,
            handle,
            purpose="issuing-ca",
            threshold=threshold,
            custodians=custodians(names),
            out_dir=tmp_path / "b",
        )
    assert info.value.field == field and words in info.value.reason
    assert not (tmp_path / "b").exists()
    assert audit_entries(session, "keymgmt:backup:create") == []


@pytest.mark.parametrize(
    ("people", "words"),
    [
        ([Custodian("alice", b"short"), Custodian("bob", PASSPHRASES["bob"])], "at least 12"),
        ([Custodian("alice", PASSPHRASES["bob"]), Custodian("bob", PASSPHRASES["bob"])], "same passphrase"),
        ([Custodian("al=ice", PASSPHRASES["alice"]), Custodian("bob", PASSPHRASES["bob"])], "no '='"),
        ([Custodian(" ", PASSPHRASES["alice"]), Custodian("bob", PASSPHRASES["bob"])], "must not be empty"),
    ],
)
def test_bad_custodians_write_nothing(
    backup: KeyBackupService,
    session: Session,
    store: FileKeyStore,
    tmp_path: Path,
    people: list[Custodian],
    words: str,
) -> None:
    handle = store.generate("k", "ec-p256")
    with pytest.raises(InvalidError) as info:
        backup.create(
            session, SYSTEM, store, handle, purpose="issuing-ca", threshold=2, custodians=people, out_dir=tmp_path / "b"
        )
    assert info.value.field == "custodians" and words in info.value.reason
    assert not (tmp_path / "b").exists()


def test_custodian_names_outside_file_name_characters(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    people = [Custodian("张三", PASSPHRASES["alice"]), Custodian("李四", PASSPHRASES["bob"])]
    handle = store.generate("k", "ec-p256")
    result = backup.create(
        session, SYSTEM, store, handle, purpose="root-ca", threshold=2, custodians=people, out_dir=tmp_path / "b"
    )
    assert [p.name for p in result.share_paths] == ["share-1.json", "share-2.json"]
    restored = backup.restore(
        session,
        SYSTEM,
        result.manifest_path,
        [
            ShareInput(result.share_paths[1], PASSPHRASES["bob"]),
            ShareInput(result.share_paths[0], PASSPHRASES["alice"]),
        ],
        FileKeyStore(tmp_path / "t", PASS),
    )
    assert restored.used == ((1, "张三"), (2, "李四"))


def test_only_a_security_administrator_may_back_up_or_restore(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    handle = store.generate("k", "ec-p256")
    with pytest.raises(ForbiddenError):
        backup.create(
            session,
            OPERATOR,
            store,
            handle,
            purpose="issuing-ca",
            threshold=2,
            custodians=custodians(),
            out_dir=tmp_path / "b",
        )
    assert not (tmp_path / "b").exists()
    made = make_backup(backup, session, store, tmp_path / "ok", handle=handle)
    with pytest.raises(ForbiddenError):
        backup.restore(session, OPERATOR, made.manifest, made.inputs(1, 2), FileKeyStore(tmp_path / "t", PASS))
    assert FileKeyStore(tmp_path / "t", PASS).labels() == []


def test_an_hsm_key_cannot_be_backed_up(backup: KeyBackupService, session: Session, tmp_path: Path) -> None:
    _, module, label, pin = make_softhsm_token(tmp_path, label="backup-refusal")
    hsm = Pkcs11KeyStore(module, label, pin)
    handle = hsm.generate("issuing-hsm", "ec-p384")
    out = tmp_path / "b"
    with pytest.raises(KeyExportRefusedError) as info:
        backup.create(
            session, SYSTEM, hsm, handle, purpose="issuing-ca", threshold=2, custodians=custodians(), out_dir=out
        )
    assert info.value.code == "keymgmt.export_refused" and info.value.field == "handle"
    assert "HSM's own backup procedure" in info.value.reason
    assert not out.exists()
    assert audit_entries(session, "keymgmt:backup:create") == []
    # ... and a restore never writes into a token.
    store = FileKeyStore(tmp_path / "keys", PASS)
    made = make_backup(backup, session, store, tmp_path / "file-backup")
    with pytest.raises(InvalidError, match="file key store"):
        backup.restore(session, SYSTEM, made.manifest, made.inputs(1, 2), hsm)
    assert not hsm.has("pkcs11:issuing-test")


def test_a_signer_handle_still_refuses_export(store: FileKeyStore) -> None:
    signer = store.signer(store.generate("k", "ec-p256"))
    with pytest.raises(KeyExportRefusedError):
        signer.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


# --- secret keys (the KMC storage key) -------------------------------------------------------


def test_a_secret_key_round_trips_and_still_opens_what_it_sealed(
    backup: KeyBackupService, session: Session, store: FileKeyStore, tmp_path: Path
) -> None:
    """The KMC storage key (AES-256) is backed up like a CA key: restored from M shares it
    opens what it sealed before; a check value stands in for the public-key fingerprint."""
    from keymgmt.backup import SECRET_ALGORITHM, secret_check_value

    handle = store.generate_secret("kmc-storage-test")
    sealed = store.encrypt(handle, b"escrowed key bytes", b"record 7")
    result = backup.create(
        session,
        SYSTEM,
        store,
        handle,
        purpose="kmc-storage",
        threshold=2,
        custodians=custodians(),
        out_dir=tmp_path / "b",
    )
    made = Made(result, handle, None)  # type: ignore[arg-type]
    manifest = json.loads(made.manifest.read_text())
    assert manifest["key"]["algorithm"] == SECRET_ALGORITHM
    assert manifest["key"]["spki_sha256"] == secret_check_value(store.export_secret_for_backup(handle))
    assert store.export_secret_for_backup(handle) not in made.manifest.read_bytes()

    target = FileKeyStore(tmp_path / "t", PASS)
    restored = backup.restore(session, SYSTEM, made.manifest, made.inputs(3, 1), target)
    assert restored.handle == handle and target.has_secret(handle) and not target.has(handle)
    assert FileKeyStore(tmp_path / "t", PASS).decrypt(handle, sealed, b"record 7") == b"escrowed key bytes"

    with pytest.raises(TooFewSharesError):
        backup.restore(session, SYSTEM, made.manifest, made.inputs(2), FileKeyStore(tmp_path / "u", PASS))
    with pytest.raises(ConflictError):  # the label exists there now
        backup.restore(session, SYSTEM, made.manifest, made.inputs(1, 2), target)
    # a manifest that names another check value is refused (it is authenticated data)
    manifest["key"]["spki_sha256"] = "0" * 64
    made.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ManifestTamperedError):
        backup.restore(session, SYSTEM, made.manifest, made.inputs(1, 2), FileKeyStore(tmp_path / "v", PASS))
    assert not (tmp_path / "v").exists() or not list((tmp_path / "v").iterdir())
