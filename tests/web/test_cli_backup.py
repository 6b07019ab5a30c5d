"""``govpki backup create|restore|inspect`` end to end: passphrases from files, the real
instance's CA keys, audit records, clear one-line errors."""

from __future__ import annotations

import datetime as dt
import json
import re
import stat
from pathlib import Path

from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select

from ca.models import CaKind
from govpki.audit import AuditEntry
from keymgmt import FileKeyStore
from keymgmt.interfaces import signature_hash
from web.cli import main
from web.container import Services

NAMES = ("alice", "bob", "carol")


def run(services: Services, *args: str) -> Result:
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def passphrase_files(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files = {}
    for name in (*NAMES, "store"):
        path = folder / f"{name}.pass"
        path.touch(mode=0o600)
        path.write_text(f"{name} has a long passphrase\n", encoding="utf-8")
        files[name] = path
    return files


def custodian_args(passes: dict[str, Path]) -> list[str]:
    args = []
    for name in NAMES:
        args += ["--custodian", f"{name}={passes[name]}"]
    return args


def create(services: Services, tmp_path: Path, passes: dict[str, Path], out: str, *extra: str) -> tuple[Path, str]:
    result = run(
        services, "backup", "create", *extra, "--threshold", "2", *custodian_args(passes), "--out", str(tmp_path / out)
    )
    assert result.exit_code == 0, result.output
    backup_id = re.search(r"^backup\s+(\S+)$", result.output, re.M)
    assert backup_id is not None, result.output
    return tmp_path / out, backup_id.group(1)


def actions(services: Services) -> list[tuple[str, dict[str, object]]]:
    with services.sessions() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.action.like("keymgmt:backup:%")).order_by(AuditEntry.seq))
        return [(r.action, json.loads(r.details)) for r in rows]


def test_backup_restore_inspect_end_to_end(services: Services, tmp_path: Path) -> None:
    passes = passphrase_files(tmp_path / "passes")
    folder, backup_id = create(services, tmp_path, passes, "issuing-backup")
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shares = {name: folder / f"share-{i}-{name}.json" for i, name in enumerate(NAMES, start=1)}
    manifest = folder / "manifest.json"

    shown = run(services, "backup", "inspect", str(manifest), str(shares["bob"]))
    assert shown.exit_code == 0, shown.output
    assert backup_id in shown.output and "2 of 3" in shown.output and "belongs to this backup" in shown.output

    target = tmp_path / "restored-keys"
    restored = run(
        services,
        "backup",
        "restore",
        "--manifest",
        str(manifest),
        "--share",
        f"{shares['carol']}={passes['carol']}",
        "--share",
        f"{shares['alice']}={passes['alice']}",
        "--dir",
        str(target),
        "--passphrase-file",
        str(passes["store"]),
    )
    assert restored.exit_code == 0, restored.output
    assert "(checked)" in restored.output and "1 (alice), 3 (carol)" in restored.output

    with services.sessions() as s:
        ca = services.ca.active_ca(s, CaKind.ISSUING)
    cert = x509.load_der_x509_certificate(ca.cert_der)
    signer = FileKeyStore(target, b"store has a long passphrase").signer(ca.key_handle)
    algorithm = signature_hash(signer.public_key())
    assert isinstance(algorithm, hashes.SHA256 | hashes.SHA384)
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=1))
        .sign(signer, algorithm)
    )
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]

    logged = actions(services)
    assert [a for a, _ in logged] == ["keymgmt:backup:create", "keymgmt:backup:restore"]
    assert all(d["backup_id"] == backup_id for _, d in logged)
    assert logged[0][1]["custodians"] == list(NAMES) and logged[1][1]["custodians"] == ["alice", "carol"]
    verified = run(services, "audit", "verify")
    assert verified.exit_code == 0, verified.output


def test_cli_refusals_are_one_clear_line(services: Services, tmp_path: Path) -> None:
    passes = passphrase_files(tmp_path / "passes")
    folder, _ = create(services, tmp_path, passes, "b")
    manifest = str(folder / "manifest.json")
    alice, bob = folder / "share-1-alice.json", folder / "share-2-bob.json"
    target = ["--dir", str(tmp_path / "t"), "--passphrase-file", str(passes["store"])]

    one = run(services, "backup", "restore", "--manifest", manifest, "--share", f"{alice}={passes['alice']}", *target)
    assert one.exit_code == 2 and "needs 2 of its 3 shares; 1 given" in one.output, one.output

    wrong = run(
        services,
        "backup",
        "restore",
        "--manifest",
        manifest,
        "--share",
        f"{alice}={passes['alice']}",
        "--share",
        f"{bob}={passes['carol']}",
        *target,
    )
    assert wrong.exit_code == 2 and f"{bob}: wrong passphrase" in wrong.output, wrong.output
    assert "Traceback" not in wrong.output

    # The configured online store already holds the issuing CA key: never overwritten.
    both = ["--share", f"{alice}={passes['alice']}", "--share", f"{bob}={passes['bob']}"]
    clash = run(services, "backup", "restore", "--manifest", manifest, *both, "--store", "online")
    assert clash.exit_code == 2 and "already holds a key labelled" in clash.output, clash.output
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
    assert [a for a, _ in actions(services)] == ["keymgmt:backup:create"]

    other, other_id = create(services, tmp_path, passes, "other")
    foreign = run(services, "backup", "inspect", manifest, str(alice), str(other / "share-2-bob.json"))
    assert foreign.exit_code == 1 and f"FROM ANOTHER BACKUP ({other_id})" in foreign.output

    no_file = run(
        services, "backup", "create", "--threshold", "2", "--custodian", "alice", "--out", str(tmp_path / "x")
    )
    assert no_file.exit_code == 2 and "NAME=PASSFILE" in no_file.output
    missing = run(
        services,
        "backup",
        "create",
        "--threshold",
        "2",
        "--custodian",
        f"alice={tmp_path / 'missing.pass'}",
        "--custodian",
        f"bob={passes['bob']}",
        "--out",
        str(tmp_path / "x"),
    )
    assert missing.exit_code == 2 and "cannot read passphrase file" in missing.output
    lone = run(
        services,
        "backup",
        "create",
        "--threshold",
        "1",
        "--custodian",
        f"alice={passes['alice']}",
        "--out",
        str(tmp_path / "x"),
    )
    assert lone.exit_code == 2 and "threshold: the threshold M must be at least 2" in lone.output
    assert not (tmp_path / "x").exists()


def test_root_key_and_other_keys(services: Services, tmp_path: Path) -> None:
    passes = passphrase_files(tmp_path / "passes")
    create(services, tmp_path, passes, "root", "--root")
    with services.sessions() as s:
        root = services.ca.active_ca(s, CaKind.ROOT)
    by_ca = actions(services)[-1][1]
    assert by_ca["purpose"] == "root-ca"
    label = root.key_handle.split(":", 1)[1]
    create(services, tmp_path, passes, "by-label", "--store", "root", "--label", label, "--purpose", "root-ca")
    by_label = actions(services)[-1][1]
    assert by_label["spki_sha256"] == by_ca["spki_sha256"] and by_label["backup_id"] != by_ca["backup_id"]
    needs_purpose = run(
        services,
        "backup",
        "create",
        "--store",
        "root",
        "--label",
        label,
        "--threshold",
        "2",
        *custodian_args(passes),
        "--out",
        str(tmp_path / "x"),
    )
    assert needs_purpose.exit_code == 2 and "needs --purpose" in needs_purpose.output
    assert not (tmp_path / "x").exists()


def test_the_kmc_storage_key_is_backed_up_and_restored(services: Services, tmp_path: Path) -> None:
    assert run(services, "kmc", "init").exit_code == 0
    passes = passphrase_files(tmp_path / "passes")
    folder, backup_id = create(services, tmp_path, passes, "kmc-backup", "--kmc-storage")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"]["purpose"] == "kmc-storage" and manifest["key"]["algorithm"] == "aes-256"
    with services.sessions() as s:
        storage = services.kmc.storage_key(s)
    target = tmp_path / "restored"
    restored = run(
        services,
        "backup",
        "restore",
        "--manifest",
        str(folder / "manifest.json"),
        "--share",
        f"{folder / 'share-2-bob.json'}={passes['bob']}",
        "--share",
        f"{folder / 'share-3-carol.json'}={passes['carol']}",
        "--dir",
        str(target),
        "--passphrase-file",
        str(passes["store"]),
    )
    assert restored.exit_code == 0, restored.output
    original = services.keystores[storage.key_store]
    sealed = original.encrypt(storage.key_handle, b"x", b"aad")  # type: ignore[attr-defined]
    copy = FileKeyStore(target, b"store has a long passphrase")
    assert copy.decrypt(storage.key_handle, sealed, b"aad") == b"x"
    assert [a for a, _ in actions(services)] == ["keymgmt:backup:create", "keymgmt:backup:restore"]
    assert all(d["backup_id"] == backup_id for _, d in actions(services))
    both = run(
        services, "backup", "create", "--kmc-storage", "--root", "-m", "2", *custodian_args(passes), "--out", "x"
    )
    assert both.exit_code == 2 and "one of --ca, --root, --kmc-storage" in both.output
