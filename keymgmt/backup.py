"""Backup and restore of a CA key from the file key store, split M-of-N among custodians.

Backup (:meth:`KeyBackupService.create`):

1. The private key is read from its encrypted PKCS#8 file through the one narrow export
   :meth:`FileKeyStore.export_private_key_for_backup` (a key on a PKCS#11 token cannot be
   exported: the token refuses, and so does this module — the HSM's own backup applies).
2. It is encrypted ("wrapped") under a fresh random 256-bit *data key* with AES-256-GCM;
   the associated data is the manifest's canonical JSON (everything but the ciphertext),
   so a changed manifest field makes the key fail to unwrap.
3. The data key is split M-of-N with pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``.
   That implementation shares 16-byte secrets (it works in GF(2^128)), so the 32-byte key
   is shared as two 16-byte halves, each with its own independent random polynomial of
   degree M−1, evaluated at the same points 1..N: custodian *i* gets both values at point
   *i*. Any M shares give both halves by interpolation; M−1 shares of each half are
   uniformly random and independent of it, so they say nothing about either half.
4. Each share is encrypted for its custodian: scrypt (``cryptography``) turns the
   custodian's passphrase and a random salt into 64 bytes, the first 32 are an AES-256-GCM
   key and a SHA-256 of the last 32 is stored as a passphrase check (so a wrong passphrase
   and a modified file are told apart; guessing against the check costs the same scrypt
   as guessing against the GCM tag). The GCM associated data binds the share to the backup
   id, its index, M, N, the custodian's name, the KDF parameters and the key's SPKI SHA-256
   fingerprint.
5. The manifest (``manifest.json``) and one file per share (``share-<i>[-<name>].json``)
   are written into a new folder, each 0600 and never over an existing file.

Restore (:meth:`KeyBackupService.restore`) needs the manifest and at least M shares with
their passphrases: each share is checked (same backup, passphrase, integrity, agreement
with the manifest), the data key is recombined, the key unwrapped, its public key
fingerprint compared with the manifest's, and the key stored under a label that must not
exist in the target file key store.

Both write an audit record in the caller's transaction (never key material). Only the
system or a security administrator may run them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy.orm import Session

from govpki import audit
from govpki.clock import Clock
from govpki.config import KeyAlgorithm
from govpki.errors import ConflictError, ForbiddenError, InvalidError
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt._util import check_label, label_of, write_new_file
from keymgmt.events import BackupEvent
from keymgmt.filestore import FileKeyStore
from keymgmt.interfaces import KeyExportRefusedError, KeyStore, KeyStoreError, PublicKey
from keymgmt.models import KeyState
from keymgmt.pkcs11store import Pkcs11KeyStore
from keymgmt.policy import KeyPurpose
from keymgmt.services import KeyService

MANIFEST_FORMAT = "govpki-key-backup/1"
SHARE_FORMAT = "govpki-key-backup-share/1"
MANIFEST_NAME = "manifest.json"
SHARING = "shamir-gf128-2x16 (pycryptodome)"
CIPHER = "AES-256-GCM"

MIN_THRESHOLD = 2  # never one person alone
MAX_SHARES = 32
MIN_PASSPHRASE = 12
DEFAULT_SCRYPT_LOG2_N = 17  # 128 MiB, about half a second per share
_SCRYPT_R, _SCRYPT_P = 8, 1

_PURPOSE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- errors: each names the file it is about --------------------------------------------


class BackupFileError(InvalidError):
    """A manifest or share file that cannot be read or is not one of ours."""

    code = "keymgmt.backup_unreadable"


class WrongPassphraseError(InvalidError):
    code = "keymgmt.backup_wrong_passphrase"


class TooFewSharesError(InvalidError):
    code = "keymgmt.backup_too_few_shares"


class ShareTamperedError(InvalidError):
    code = "keymgmt.backup_share_tampered"


class ForeignShareError(InvalidError):
    code = "keymgmt.backup_foreign_share"


class DuplicateShareError(InvalidError):
    code = "keymgmt.backup_duplicate_share"


class ManifestTamperedError(InvalidError):
    code = "keymgmt.backup_manifest_tampered"


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Custodian:
    """A share holder: a name and the passphrase (read from their file) protecting the share."""

    name: str
    passphrase: bytes

    def __repr__(self) -> str:  # never the passphrase
        return f"Custodian({self.name!r})"


@dataclass(frozen=True)
class ShareInput:
    """One share file given to a restore, with its custodian's passphrase."""

    path: Path
    passphrase: bytes

    def __repr__(self) -> str:
        return f"ShareInput({str(self.path)!r})"


@dataclass(frozen=True)
class BackupManifest:
    backup_id: str
    created_at: _dt.datetime
    label: str
    purpose: str
    algorithm: str
    spki_sha256: str
    threshold: int
    shares: int
    custodians: tuple[str, ...]  # custodian of share i is custodians[i - 1]


@dataclass(frozen=True)
class BackupResult:
    manifest: BackupManifest
    folder: Path
    manifest_path: Path
    share_paths: tuple[Path, ...]  # share i (custodian i) is share_paths[i - 1]


@dataclass(frozen=True)
class RestoreResult:
    manifest: BackupManifest
    handle: str
    used: tuple[tuple[int, str], ...]  # (index, custodian) of the shares that were combined


@dataclass(frozen=True)
class ShareSummary:
    """What a share file says about itself (nothing is decrypted)."""

    path: Path
    backup_id: str
    index: int
    custodian: str
    belongs: bool  # same backup id as the manifest


@dataclass(frozen=True)
class _Share:
    path: Path
    backup_id: str
    index: int
    threshold: int
    shares: int
    custodian: str
    spki_sha256: str
    kdf: dict[str, Any]
    salt: bytes
    check: bytes
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class _Manifest:
    public: BackupManifest
    header: dict[str, Any]  # the authenticated part (associated data of the wrapped key)
    nonce: bytes
    wrapped_key: bytes


# --- helpers -----------------------------------------------------------------------------


def spki_sha256(public_key: PublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_algorithm(public_key: PublicKey) -> KeyAlgorithm:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        names: dict[str, KeyAlgorithm] = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}
        if public_key.curve.name in names:
            return names[public_key.curve.name]
    elif isinstance(public_key, rsa.RSAPublicKey):
        sizes: dict[int, KeyAlgorithm] = {2048: "rsa-2048", 3072: "rsa-3072", 4096: "rsa-4096"}
        if public_key.key_size in sizes:
            return sizes[public_key.key_size]
    raise KeyStoreError("the key is not one of the supported algorithms (EC P-256/P-384, RSA 2048/3072/4096)")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _aad(value: dict[str, Any]) -> bytes:
    return audit.canonical_json(value).encode("utf-8")


def _timestamp(at: _dt.datetime) -> str:
    return audit.timestamp(at)


def _check_custodian_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise InvalidError("a custodian name must not be empty or start or end with spaces", field="custodians")
    if len(name) > 64 or _CONTROL.search(name) or "=" in name:
        raise InvalidError(
            f"custodian name {name!r}: at most 64 characters, no control characters and no '='", field="custodians"
        )
    return name


def _kdf(passphrase: bytes, salt: bytes, log2_n: int) -> tuple[bytes, bytes]:
    """The AES key for a share and the passphrase check value."""
    out = Scrypt(salt=salt, length=64, n=2**log2_n, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase)
    return out[:32], hashlib.sha256(out[32:]).digest()


_SHARE_HEADER = ("format", "backup_id", "index", "threshold", "shares", "custodian", "spki_sha256", "kdf")


def _share_header(share: _Share) -> dict[str, Any]:
    """The authenticated fields of a share (associated data of its encryption)."""
    return {
        "format": SHARE_FORMAT,
        "backup_id": share.backup_id,
        "index": share.index,
        "threshold": share.threshold,
        "shares": share.shares,
        "custodian": share.custodian,
        "spki_sha256": share.spki_sha256,
        "kdf": share.kdf,
    }


def _read_json(path: Path, what: str, field: str, error: type[BackupFileError] = BackupFileError) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist", field=field) from None
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror}", field=field) from None
    if len(data) > 1_000_000:
        raise error(f"{what} file {path} is too large to be a {what}", field=field)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise error(f"{what} file {path} is not JSON", field=field) from None
    if not isinstance(value, dict):
        raise error(f"{what} file {path} is not a {what}", field=field)
    return value


def _field(doc: dict[str, Any], name: str, kind: type, path: Path, what: str, field: str) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BackupFileError(f"{what} file {path}: field {name!r} is missing or not a {kind.__name__}", field=field)
    return value


def _bytes(doc: dict[str, Any], name: str, path: Path, what: str, field: str) -> bytes:
    text = _field(doc, name, str, path, what, field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BackupFileError(f"{what} file {path}: field {name!r} is not base64", field=field) from None


def _load_manifest(path: Path) -> _Manifest:
    what, field = "manifest", "manifest"
    doc = _read_json(path, what, field)
    if doc.get("format") != MANIFEST_FORMAT:
        raise BackupFileError(f"{path} is not a govpki key backup manifest ({MANIFEST_FORMAT})", field=field)
    header = {k: doc[k] for k in doc if k not in ("wrap", "wrapped_key")}  # what the wrapped key authenticates
    key = _field(doc, "key", dict, path, what, field)
    custodians = _field(doc, "custodians", list, path, what, field)
    threshold = _field(doc, "threshold", int, path, what, field)
    shares = _field(doc, "shares", int, path, what, field)
    names: list[str] = []
    for i, c in enumerate(custodians, start=1):
        if not isinstance(c, dict) or c.get("index") != i or not isinstance(c.get("name"), str):
            raise BackupFileError(f"manifest file {path}: custodian entry {i} is malformed", field=field)
        names.append(c["name"])
    wrap = _field(doc, "wrap", dict, path, what, field)
    if wrap.get("cipher") != CIPHER:
        raise BackupFileError(f"manifest file {path}: the key is not wrapped with {CIPHER}", field=field)
    created_text = _field(doc, "created_at", str, path, what, field)
    try:
        created = _dt.datetime.fromisoformat(created_text.replace("Z", "+00:00"))
    except ValueError:
        raise BackupFileError(f"manifest file {path}: field 'created_at' is not a time", field=field) from None
    if created.tzinfo is None:
        raise BackupFileError(f"manifest file {path}: field 'created_at' has no time zone", field=field)
    if not MIN_THRESHOLD <= threshold <= shares <= MAX_SHARES or len(names) != shares:
        raise ManifestTamperedError(
            f"manifest file {path}: {threshold} of {shares} shares with {len(names)} custodians is not a valid backup",
            field=field,
        )
    public = BackupManifest(
        backup_id=_field(doc, "backup_id", str, path, what, field),
        created_at=created.astimezone(_dt.UTC),
        label=_field(key, "label", str, path, what, field),
        purpose=_field(key, "purpose", str, path, what, field),
        algorithm=_field(key, "algorithm", str, path, what, field),
        spki_sha256=_field(key, "spki_sha256", str, path, what, field),
        threshold=threshold,
        shares=shares,
        custodians=tuple(names),
    )
    nonce, wrapped = _bytes(wrap, "nonce", path, what, field), _bytes(doc, "wrapped_key", path, what, field)
    return _Manifest(public, header, nonce, wrapped)


def _load_share(path: Path) -> _Share:
    what, field = "share", "shares"
    doc = _read_json(path, what, field)
    if doc.get("format") != SHARE_FORMAT:
        raise BackupFileError(f"{path} is not a govpki key backup share ({SHARE_FORMAT})", field=field)
    kdf = _field(doc, "kdf", dict, path, what, field)
    log2_n = kdf.get("log2_n")
    if (
        kdf.get("name") != "scrypt"
        or not isinstance(log2_n, int)
        or not 10 <= log2_n <= 22
        or kdf.get("r") != _SCRYPT_R
        or kdf.get("p") != _SCRYPT_P
    ):
        raise ShareTamperedError(f"share file {path}: unsupported key-derivation parameters", field=field)
    return _Share(
        path=Path(path),
        backup_id=_field(doc, "backup_id", str, path, what, field),
        index=_field(doc, "index", int, path, what, field),
        threshold=_field(doc, "threshold", int, path, what, field),
        shares=_field(doc, "shares", int, path, what, field),
        custodian=_field(doc, "custodian", str, path, what, field),
        spki_sha256=_field(doc, "spki_sha256", str, path, what, field),
        kdf=kdf,
        salt=_bytes(kdf, "salt", path, what, field),
        check=_bytes(doc, "check", path, what, field),
        nonce=_bytes(doc, "nonce", path, what, field),
        ciphertext=_bytes(doc, "ciphertext", path, what, field),
    )


def _decrypt_share(share: _Share, passphrase: bytes) -> bytes:
    key, check = _kdf(passphrase, share.salt, share.kdf["log2_n"])
    if not hmac.compare_digest(check, share.check):
        raise WrongPassphraseError(
            f"share file {share.path}: wrong passphrase for custodian {share.custodian!r}", field="shares"
        )
    try:
        value = AESGCM(key).decrypt(share.nonce, share.ciphertext, _aad(_share_header(share)))
    except InvalidTag:
        raise ShareTamperedError(
            f"share file {share.path}: the share does not authenticate (the file was modified)", field="shares"
        ) from None
    if len(value) != 32:
        raise ShareTamperedError(f"share file {share.path}: the share has the wrong length", field="shares")
    return value


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _require_admin(principal: Principal, what: str) -> None:
    if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
        raise ForbiddenError(f"only a security administrator may {what}")


def inspect_backup(manifest_path: Path, share_paths: Sequence[Path] = ()) -> tuple[BackupManifest, list[ShareSummary]]:
    """Read a manifest and what share files say about themselves; decrypts nothing, needs no
    passphrase and writes nothing (a custodian can check their file belongs to a backup)."""
    manifest = _load_manifest(Path(manifest_path)).public
    summaries = []
    for path in share_paths:
        share = _load_share(Path(path))
        belongs = share.backup_id == manifest.backup_id
        summaries.append(ShareSummary(share.path, share.backup_id, share.index, share.custodian, belongs))
    return manifest, summaries


# --- the service -------------------------------------------------------------------------


SECRET_ALGORITHM = "aes-256"


def secret_check_value(secret: bytes) -> str:
    """What a backup of a secret key records in place of a public-key fingerprint: the
    SHA-256 of a fixed prefix and the key (256 random bits: it tells nothing of the key)."""
    return hashlib.sha256(b"govpki-backup-secret-check\0" + secret).hexdigest()


def _restored_public_key(payload: bytes, manifest: BackupManifest, manifest_path: Path) -> PublicKey | None:
    """The unwrapped key must be the one the manifest names; its public key (``None`` for a
    secret key)."""
    wrong = ManifestTamperedError(
        f"manifest file {manifest_path}: the restored key is not the key the manifest names "
        f"(fingerprint {manifest.spki_sha256})",
        field="manifest",
    )
    if manifest.algorithm == SECRET_ALGORITHM:
        if len(payload) != 32 or secret_check_value(payload) != manifest.spki_sha256:
            raise wrong
        return None
    try:
        key = serialization.load_der_private_key(payload, password=None)
    except (ValueError, TypeError):
        raise ManifestTamperedError(
            f"manifest file {manifest_path}: the unwrapped key is not a private key", field="manifest"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) or (
        spki_sha256(key.public_key()) != manifest.spki_sha256 or key_algorithm(key.public_key()) != manifest.algorithm
    ):
        raise wrong
    return key.public_key()


_CA_PURPOSES = {"root-ca": KeyPurpose.ROOT, "issuing-ca": KeyPurpose.ISSUING_CA}


def _record_purpose(purpose: str) -> KeyPurpose | None:
    """The key-record purpose a backup's free-form purpose names, if any."""
    if purpose in _CA_PURPOSES:
        return _CA_PURPOSES[purpose]
    try:
        return KeyPurpose(purpose.replace("-", "_"))
    except ValueError:
        return None


class KeyBackupService:
    """M-of-N backup and restore of file-store keys. ``scrypt_log2_n`` sets the cost of new
    shares (restores read it from each share file)."""

    def __init__(
        self, clock: Clock, *, scrypt_log2_n: int = DEFAULT_SCRYPT_LOG2_N, keys: KeyService | None = None
    ) -> None:
        if not 14 <= scrypt_log2_n <= 22:
            raise InvalidError("scrypt cost (log2 N) must be between 14 and 22", field="scrypt_log2_n")
        self.clock = clock
        self.scrypt_log2_n = scrypt_log2_n
        self._keys = keys  # records a key restored into a configured key store (pre-active)

    # -- backup --

    def create(
        self,
        session: Session,
        principal: Principal,
        store: KeyStore,
        handle: str,
        *,
        purpose: str,
        threshold: int,
        custodians: Sequence[Custodian],
        out_dir: Path,
    ) -> BackupResult:
        """Back up the key ``handle`` of ``store`` into the new folder ``out_dir``: a manifest
        and one share per custodian, ``threshold`` of which restore the key. Audited."""
        _require_admin(principal, "back up a key")
        if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
            raise InvalidError("a key purpose is 1 to 32 characters of a-z 0-9 _ - (e.g. issuing-ca)", field="purpose")
        self._check_custodians(threshold, custodians)
        out_dir = Path(out_dir)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise ConflictError(f"{out_dir} exists and is not an empty folder; give a new folder", field="out_dir")

        algorithm: str
        if isinstance(store, FileKeyStore) and store.has_secret(handle) and not store.has(handle):
            # a secret (AES-256) key, e.g. the KMC storage key: no public key, a check value instead
            payload = store.export_secret_for_backup(handle)
            algorithm, fingerprint = SECRET_ALGORITHM, secret_check_value(payload)
        else:
            payload = self._export(store, handle)
            key = serialization.load_der_private_key(payload, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                raise KeyStoreError(f"key {handle!r} is not an EC or RSA key")
            public = key.public_key()
            if public != store.public_key(handle):
                raise KeyStoreError(f"key {handle!r}: the exported key does not match the store's public key")
            algorithm, fingerprint = key_algorithm(public), spki_sha256(public)
        label = label_of(handle, store.kind)
        now = self.clock.now()
        backup_id = str(uuid.uuid4())
        n = len(custodians)

        header: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "backup_id": backup_id,
            "created_at": _timestamp(now),
            "key": {"label": label, "purpose": purpose, "algorithm": algorithm, "spki_sha256": fingerprint},
            "threshold": threshold,
            "shares": n,
            "custodians": [{"index": i, "name": c.name} for i, c in enumerate(custodians, start=1)],
            "sharing": SHARING,
        }
        data_key = AESGCM.generate_key(bit_length=256)
        wrap_nonce = secrets.token_bytes(12)
        wrapped = AESGCM(data_key).encrypt(wrap_nonce, payload, _aad(header))
        manifest_doc = {**header, "wrap": {"cipher": CIPHER, "nonce": _b64(wrap_nonce)}, "wrapped_key": _b64(wrapped)}

        first = Shamir.split(threshold, n, data_key[:16])
        second = Shamir.split(threshold, n, data_key[16:])
        share_docs: list[tuple[str, bytes]] = []
        for (index, low), (index2, high), custodian in zip(first, second, custodians, strict=True):
            assert index == index2
            salt = secrets.token_bytes(16)
            kdf = {"name": "scrypt", "salt": _b64(salt), "log2_n": self.scrypt_log2_n, "r": _SCRYPT_R, "p": _SCRYPT_P}
            doc: dict[str, Any] = {
                "format": SHARE_FORMAT,
                "backup_id": backup_id,
                "index": index,
                "threshold": threshold,
                "shares": n,
                "custodian": custodian.name,
                "spki_sha256": fingerprint,
                "kdf": kdf,
            }
            share_key, check = _kdf(custodian.passphrase, salt, self.scrypt_log2_n)
            nonce = secrets.token_bytes(12)
            ciphertext = AESGCM(share_key).encrypt(nonce, low + high, _aad({k: doc[k] for k in _SHARE_HEADER}))
            doc.update(check=_b64(check), cipher=CIPHER, nonce=_b64(nonce), ciphertext=_b64(ciphertext))
            safe = f"-{custodian.name}" if _SAFE_NAME.fullmatch(custodian.name) else ""
            share_docs.append((f"share-{index}{safe}.json", _json_bytes(doc)))

        manifest = BackupManifest(
            backup_id=backup_id,
            created_at=now,
            label=label,
            purpose=purpose,
            algorithm=algorithm,
            spki_sha256=fingerprint,
            threshold=threshold,
            shares=n,
            custodians=tuple(c.name for c in custodians),
        )
        audit.record(
            session,
            principal,
            BackupEvent.CREATE,
            object_type="key",
            object_id=handle,
            details={
                "backup_id": backup_id,
                "purpose": purpose,
                "algorithm": manifest.algorithm,
                "spki_sha256": fingerprint,
                "threshold": threshold,
                "shares": n,
                "custodians": list(manifest.custodians),
                "folder": str(out_dir),
            },
            clock=self.clock,
        )
        # Written after the audit entry: a failure here rolls the entry back with it.
        paths = self._write(out_dir, [*share_docs, (MANIFEST_NAME, _json_bytes(manifest_doc))])
        return BackupResult(manifest, out_dir, paths[-1], tuple(paths[:-1]))

    @staticmethod
    def _check_custodians(threshold: int, custodians: Sequence[Custodian]) -> None:
        n = len(custodians)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < MIN_THRESHOLD:
            raise InvalidError(
                f"the threshold M must be at least {MIN_THRESHOLD}: no one person may restore a CA key alone",
                field="threshold",
            )
        if n > MAX_SHARES:
            raise InvalidError(f"at most {MAX_SHARES} custodians", field="custodians")
        if threshold > n:
            raise InvalidError(
                f"the threshold M ({threshold}) is more than the number of custodians N ({n})", field="threshold"
            )
        seen: dict[str, str] = {}
        passphrases: dict[bytes, str] = {}
        for c in custodians:
            name = _check_custodian_name(c.name)
            if name in seen:
                raise InvalidError(f"custodian {name!r} is named twice", field="custodians")
            seen[name] = name
            if len(c.passphrase) < MIN_PASSPHRASE:
                raise InvalidError(
                    f"custodian {name!r}: the passphrase must be at least {MIN_PASSPHRASE} characters",
                    field="custodians",
                )
            other = passphrases.get(c.passphrase)
            if other is not None:
                raise InvalidError(
                    f"custodians {other!r} and {name!r} have the same passphrase; each must choose their own",
                    field="custodians",
                )
            passphrases[c.passphrase] = name

    @staticmethod
    def _export(store: KeyStore, handle: str) -> bytes:
        if isinstance(store, FileKeyStore):
            return store.export_private_key_for_backup(handle)
        if isinstance(store, Pkcs11KeyStore):
            with contextlib.suppress(KeyExportRefusedError):
                store.export_private_key(handle)  # the token refuses (or, if it would not, this raises)
            raise KeyExportRefusedError(
                f"key {handle!r} is on a PKCS#11 token and cannot be exported (sensitive, not extractable): "
                "back it up with the HSM's own backup procedure",
                field="handle",
            )
        raise KeyExportRefusedError(f"keys of a {store.kind!r} key store cannot be backed up here", field="handle")

    @staticmethod
    def _write(out_dir: Path, files: list[tuple[str, bytes]]) -> list[Path]:
        written: list[Path] = []
        try:
            out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, data in files:
                path = out_dir / name
                write_new_file(path, data)
                written.append(path)
        except FileExistsError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            raise ConflictError(f"{exc.filename or out_dir} exists; nothing was overwritten", field="out_dir") from None
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            raise KeyStoreError(f"cannot write the backup into {out_dir}: {exc.strerror}", field="out_dir") from None
        return written

    # -- restore --

    def restore(
        self,
        session: Session,
        principal: Principal,
        manifest_path: Path,
        shares: Sequence[ShareInput],
        target: KeyStore,
        *,
        label: str | None = None,
        target_name: str | None = None,
    ) -> RestoreResult:
        """Recombine the data key from at least M shares, unwrap the key, check it is the key
        the manifest names, and store it in ``target`` (a file key store) under ``label``
        (default: the manifest's). Nothing is written unless every check passes. Audited.
        ``target_name``: the configured key store ``target`` is (``online``, ``root``); the
        restored key then gets a pre-active key record (it signs nothing until put to use)."""
        _require_admin(principal, "restore a key from a backup")
        if not isinstance(target, FileKeyStore):
            raise InvalidError(
                "a backup is restored into a file key store (an HSM key is restored by the HSM's own procedure)",
                field="target",
            )
        loaded = _load_manifest(Path(manifest_path))
        manifest = loaded.public
        label = check_label(label if label is not None else manifest.label)
        handle = f"{target.kind}:{label}"
        if target.has(handle) or target.has_secret(handle):
            raise ConflictError(
                f"the target key store already holds a key labelled {label!r}; nothing is overwritten", field="label"
            )
        if not shares:
            raise TooFewSharesError(
                f"backup {manifest.backup_id} needs {manifest.threshold} of its {manifest.shares} shares; none given",
                field="shares",
            )

        parsed = [(_load_share(s.path), s.passphrase) for s in shares]
        by_index: dict[int, Path] = {}
        for share, _ in parsed:
            if share.backup_id != manifest.backup_id:
                raise ForeignShareError(
                    f"share file {share.path} belongs to backup {share.backup_id}, not {manifest.backup_id}",
                    field="shares",
                )
            if share.index in by_index:
                raise DuplicateShareError(
                    f"share files {by_index[share.index]} and {share.path} are both share {share.index}; "
                    "give different custodians' shares",
                    field="shares",
                )
            by_index[share.index] = share.path

        values: list[tuple[int, bytes]] = []
        for share, passphrase in parsed:
            values.append((share.index, _decrypt_share(share, passphrase)))
            # The share's fields are authenticated now; the manifest must agree with them.
            expected = manifest.custodians[share.index - 1] if 1 <= share.index <= manifest.shares else None
            if (
                share.threshold != manifest.threshold
                or share.shares != manifest.shares
                or share.spki_sha256 != manifest.spki_sha256
                or share.custodian != expected
            ):
                raise ManifestTamperedError(
                    f"manifest file {manifest_path} disagrees with the authenticated share {share.path} "
                    "(threshold, shares, custodian or key fingerprint): the manifest was altered",
                    field="manifest",
                )
        if len(values) < manifest.threshold:
            raise TooFewSharesError(
                f"backup {manifest.backup_id} needs {manifest.threshold} of its {manifest.shares} shares; "
                f"{len(values)} given, nothing restored",
                field="shares",
            )

        data_key = Shamir.combine([(i, v[:16]) for i, v in values]) + Shamir.combine([(i, v[16:]) for i, v in values])
        try:
            payload = AESGCM(data_key).decrypt(loaded.nonce, loaded.wrapped_key, _aad(loaded.header))
        except InvalidTag:
            raise ManifestTamperedError(
                f"manifest file {manifest_path}: the key does not unwrap with the data key from these shares "
                "(the manifest was altered, or a custodian's share was forged)",
                field="manifest",
            ) from None
        public = _restored_public_key(payload, manifest, manifest_path)
        purpose = _record_purpose(manifest.purpose)
        recorded = None
        if self._keys is not None and target_name is not None and purpose is not None:
            # A key put back where it was lost (same store and label) keeps its record.
            recorded = self._keys.by_handle(session, target_name, handle)
            if recorded is not None and (
                recorded.purpose != purpose.value
                or (recorded.spki_sha256 is not None and recorded.spki_sha256 != manifest.spki_sha256)
            ):
                raise ConflictError(
                    f"key record {recorded.id} names {target_name}/{handle} as another key "
                    f"({recorded.purpose}); restore under another label",
                    field="label",
                )

        used = tuple(sorted((share.index, share.custodian) for share, _ in parsed))
        audit.record(
            session,
            principal,
            BackupEvent.RESTORE,
            object_type="key",
            object_id=handle,
            details={
                "backup_id": manifest.backup_id,
                "purpose": manifest.purpose,
                "algorithm": manifest.algorithm,
                "spki_sha256": manifest.spki_sha256,
                "threshold": manifest.threshold,
                "shares": manifest.shares,
                "custodians": [name for _, name in used],
                "key_store": str(target.directory),
                "key_record": None if recorded is None else recorded.id,
            },
            clock=self.clock,
        )
        if self._keys is not None and target_name is not None and purpose is not None and recorded is None:
            self._keys.register(
                session,
                principal,
                purpose=purpose,
                store=target_name,
                handle=handle,
                algorithm=manifest.algorithm,
                public_key=public,
                state=KeyState.PRE_ACTIVE,
                description=f"restored from backup {manifest.backup_id}",
            )
        # Stored after the audit entry: a failure here rolls the entry back with it.
        if public is None:
            imported = target.import_secret_from_backup(label, payload)
        else:
            imported = target.import_private_key_from_backup(label, payload)
        assert imported == handle
        return RestoreResult(manifest, handle, used)
