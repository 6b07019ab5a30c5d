"""``govpki backup create|restore|inspect``: CA key backup to M-of-N custodian shares.

Passphrases only ever come from files (``--custodian NAME=PASSFILE``,
``--share SHAREFILE=PASSFILE``), never from the command line.

The helpers of :mod:`web.cli` are imported inside the commands: ``web.cli`` imports this
module at its end, and ``python -m web.cli`` (the job loop, the OCSP server) would otherwise
import the two in a circle.
"""

from __future__ import annotations

from pathlib import Path

import click

from keymgmt.backup import Custodian, ShareInput, inspect_backup
from web.cli_common import ROW_ID


def _split(value: str, option: str, left: str) -> tuple[str, Path]:
    name, sep, file = value.partition("=")
    if not sep or not name or not file:
        raise click.BadParameter(f"{value!r} is not {left}=PASSFILE", param_hint=option)
    return name, Path(file)


def _read_passphrase(path: Path, option: str, whose: str) -> bytes:
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise click.BadParameter(
            f"{whose}: cannot read passphrase file {path}: {exc.strerror}", param_hint=option
        ) from None
    if not value:
        raise click.BadParameter(f"{whose}: passphrase file {path} is empty", param_hint=option)
    return value


@click.group(name="backup")
def backup() -> None:
    """Key backup (CA keys, the KMC storage key, the subscriber data key, the TOTP key…) to
    M-of-N custodian shares, and restore (file key store keys only)."""


@backup.command(name="create")
@click.option("--ca", "ca_id", type=ROW_ID, help="Back up this CA's key (default: the active issuing CA).")
@click.option("--root", is_flag=True, help="Back up the active root CA's key (opens the root key store).")
@click.option(
    "--kmc-storage",
    is_flag=True,
    help="Back up the KMC storage key (the AES-256 key every escrowed key is sealed under; file store only).",
)
@click.option(
    "--subscriber-data-key",
    is_flag=True,
    help="Back up the active subscriber data key (AES-256: officials' ID numbers; file store only).",
)
@click.option(
    "--totp-key",
    is_flag=True,
    help="Back up the TOTP key (AES-256: staff TOTP secrets are sealed under it; file store only).",
)
@click.option(
    "--store",
    "store_name",
    type=click.Choice(["online", "root"]),
    help="With --label: back up another key of this key store.",
)
@click.option("--label", help="With --store: the key's label.")
@click.option("--purpose", help="With --store/--label: what the key is for, e.g. audit-signing.")
@click.option("--threshold", "-m", type=int, required=True, help="Shares needed to restore (M, at least 2).")
@click.option(
    "--custodian",
    "custodian_args",
    multiple=True,
    required=True,
    metavar="NAME=PASSFILE",
    help="A share holder and the file holding their passphrase; once per share (N).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A new (or empty) folder for the manifest and the share files.",
)
def backup_create(
    ca_id: int | None,
    root: bool,
    kmc_storage: bool,
    subscriber_data_key: bool,
    totp_key: bool,
    store_name: str | None,
    label: str | None,
    purpose: str | None,
    threshold: int,
    custodian_args: tuple[str, ...],
    out_dir: Path,
) -> None:
    """Wrap a key under a fresh data key, split the data key M-of-N, write one share per custodian."""
    from ca.models import CaKind
    from govpki.errors import GovpkiError
    from web.cli_common import cli_principal, fail, load_services, report_error

    if sum((ca_id is not None, root, kmc_storage, subscriber_data_key, totp_key, store_name is not None)) > 1:
        fail("give one of --ca, --root, --kmc-storage, --subscriber-data-key, --totp-key or --store/--label")
    if (store_name is None) != (label is None):
        fail("--store and --label go together")
    if store_name is not None and not purpose:
        fail("--store/--label needs --purpose (what the key is for)")
    custodians = []
    for value in custodian_args:
        name, file = _split(value, "--custodian", "NAME")
        custodians.append(Custodian(name, _read_passphrase(file, "--custodian", name)))

    services = load_services()
    with services.sessions() as session:
        try:
            if store_name is not None and label is not None and purpose is not None:
                store = services.keystores[store_name]
                handle = f"{store.kind}:{label}"
                what = purpose
            elif kmc_storage:
                storage = services.kmc.storage_key(session)
                store, handle, what = services.keystores[storage.key_store], storage.key_handle, "kmc-storage"
            elif subscriber_data_key:
                data_key = services.subscribers.active_data_key(session)
                store, handle, what = services.keystores[data_key.key_store], data_key.key_handle, "subscriber-data"
            elif totp_key:
                sealing = services.accounts.totp_key(session, cli_principal())
                store, handle, what = services.keystores[sealing.key_store], sealing.key_handle, "totp-sealing"
            else:
                if ca_id is not None:
                    ca = services.ca.find_ca(session, ca_id)
                else:
                    ca = services.ca.active_ca(session, CaKind.ROOT if root else CaKind.ISSUING)
                store, handle = services.keystores[ca.key_store], ca.key_handle
                what = f"{ca.kind}-ca"
            result = services.backup.create(
                session,
                cli_principal(),
                store,
                handle,
                purpose=what,
                threshold=threshold,
                custodians=custodians,
                out_dir=out_dir,
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    m = result.manifest
    click.echo(f"{'backup':12} {m.backup_id}")
    click.echo(f"{'key':12} {handle} ({m.purpose}, {m.algorithm})")
    click.echo(f"{'spki sha256':12} {m.spki_sha256}")
    click.echo(f"{'threshold':12} {m.threshold} of {m.shares}")
    click.echo(f"{'manifest':12} {result.manifest_path}")
    for index, (name, path) in enumerate(zip(m.custodians, result.share_paths, strict=True), start=1):
        click.echo(f"{f'share {index}':12} {name}: {path}")
    click.echo("Give each custodian their share file only; keep copies of the manifest with each share.", err=True)


@backup.command(name="restore")
@click.option(
    "--manifest",
    "manifest_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The backup's manifest.json.",
)
@click.option(
    "--share",
    "share_args",
    multiple=True,
    required=True,
    metavar="SHAREFILE=PASSFILE",
    help="A share file and the file holding its custodian's passphrase; at least M of them.",
)
@click.option(
    "--store", "store_name", type=click.Choice(["online", "root"]), help="Restore into this configured file key store."
)
@click.option(
    "--dir",
    "target_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Restore into the file key store in this folder (with --passphrase-file).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --dir: the passphrase file of that key store.",
)
@click.option("--label", help="Store the key under this label (default: the label in the manifest).")
def backup_restore(
    manifest_path: Path,
    share_args: tuple[str, ...],
    store_name: str | None,
    target_dir: Path | None,
    passphrase_file: Path | None,
    label: str | None,
) -> None:
    """Recombine the data key from M shares, unwrap and check the key, store it under a new label."""
    from govpki.errors import GovpkiError
    from keymgmt import FileKeyStore, KeyStore
    from web.cli_common import cli_principal, fail, load_services, report_error

    if (store_name is None) == (target_dir is None):
        fail("give either --store or --dir (with --passphrase-file)")
    if (target_dir is None) != (passphrase_file is None):
        fail("--dir and --passphrase-file go together")
    shares = []
    for value in share_args:
        file, pass_file = _split(value, "--share", "SHAREFILE")
        shares.append(ShareInput(Path(file), _read_passphrase(pass_file, "--share", str(file))))

    services = load_services()
    with services.sessions() as session:
        try:
            target: KeyStore
            if target_dir is not None and passphrase_file is not None:  # a store outside this instance: no record
                target = FileKeyStore(target_dir, _read_passphrase(passphrase_file, "--passphrase-file", "key store"))
            else:
                assert store_name is not None
                target = services.keystores[store_name]
            result = services.backup.restore(
                session, cli_principal(), manifest_path, shares, target, label=label, target_name=store_name
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    m = result.manifest
    click.echo(f"{'restored':12} {result.handle} ({m.purpose}, {m.algorithm})")
    click.echo(f"{'backup':12} {m.backup_id} of {m.created_at:%Y-%m-%d %H:%M:%SZ}")
    click.echo(f"{'spki sha256':12} {m.spki_sha256} (checked)")
    click.echo(f"{'shares':12} " + ", ".join(f"{i} ({name})" for i, name in result.used))


@backup.command(name="inspect")
@click.argument("manifest_path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("share_paths", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def backup_inspect(manifest_path: Path, share_paths: tuple[Path, ...]) -> None:
    """Show a backup's manifest and which backup each share file belongs to (decrypts nothing)."""
    from govpki.errors import GovpkiError
    from web.cli_common import fail, report_error

    try:
        manifest, shares = inspect_backup(manifest_path, share_paths)
    except GovpkiError as exc:
        report_error(exc)
    click.echo(f"{'backup':12} {manifest.backup_id}")
    click.echo(f"{'created':12} {manifest.created_at:%Y-%m-%d %H:%M:%SZ}")
    click.echo(f"{'key':12} {manifest.label} ({manifest.purpose}, {manifest.algorithm})")
    click.echo(f"{'spki sha256':12} {manifest.spki_sha256}")
    click.echo(f"{'threshold':12} {manifest.threshold} of {manifest.shares}")
    for index, name in enumerate(manifest.custodians, start=1):
        click.echo(f"{f'custodian {index}':12} {name}")
    foreign = [s for s in shares if not s.belongs]
    for s in shares:
        state = "belongs to this backup" if s.belongs else f"FROM ANOTHER BACKUP ({s.backup_id})"
        click.echo(f"{s.path}: share {s.index} of {s.custodian}, {state}")
    if foreign:
        fail(f"{len(foreign)} share file(s) do not belong to backup {manifest.backup_id}", code=1)
