"""Retention and archival of the audit log.

Entries older than the retention period (configurable, never below
:data:`MIN_RETENTION_DAYS`) are archived a segment at a time: a segment ends at a
signed checkpoint, so its last hash is one the audit-signing key vouched for. The
segment is first verified (the whole chain and every checkpoint: archival must
not launder an edit), then written to a signed archive file — JSON lines, with a
detached ECDSA signature over the file and the public key beside it, so plain
``openssl dgst -sha256 -verify key.pem -signature file.sig file.jsonl`` checks
it — and only then, in one transaction, recorded (``audit_archives``, signed),
audited (``authz:audit:archive``), removed from ``audit_log`` (the delete trigger
lets only archived entries go) and audited again (``authz:audit:remove``).

The newest archive row is the anchor the remaining chain verifies from
(:func:`govpki.audit.archive_anchor`).

File format (one JSON object per line, canonical JSON):

1. header: ``{"format": "govpki-audit-archive/1", "first_seq", "last_seq",
   "first_prev_hash", "last_hash", "entries", "created_at", "key_id"}``
2. one line per entry: ``{"entry": {seq, at, actor, action, object_type,
   object_id, outcome, details, prev_hash, hash}}``
3. one line per checkpoint inside the segment: ``{"checkpoint": <exported form>}``
"""

from __future__ import annotations

import binascii
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from authz.auditing import KEY_STORE, AuditCheckpointService, archive_signed_bytes, check_exported, key_id
from govpki import audit
from govpki.audit import AuditArchive, AuditCheckpoint, AuditEntry, archive_anchor
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, InvalidError
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt import statements
from keymgmt.interfaces import KeyStore

MIN_RETENTION_DAYS = 180
FORMAT = "govpki-audit-archive/1"
ARCHIVE_ACTION = "authz:audit:archive"
REMOVE_ACTION = "authz:audit:remove"
_T_LOG = cast(Table, AuditEntry.__table__)


@dataclass(frozen=True)
class RetentionSettings:
    retention: _dt.timedelta
    archive_dir: Path
    interval: _dt.timedelta = _dt.timedelta(hours=24)  # the job archives at most this often

    def __post_init__(self) -> None:
        if self.retention < _dt.timedelta(days=MIN_RETENTION_DAYS):
            raise InvalidError(
                f"audit retention cannot be below {MIN_RETENTION_DAYS} days", field="audit_retention_days"
            )


@dataclass(frozen=True)
class ArchiveResult:
    row: AuditArchive
    path: Path
    signature_path: Path
    public_key_path: Path


@dataclass
class ArchiveFileReport:
    ok: bool
    path: Path
    first_seq: int = 0
    last_seq: int = 0
    entries: int = 0
    checkpoints: int = 0
    key_id: str = ""
    file_sha256: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.ok:
            return (
                f"archive OK: entries {self.first_seq}..{self.last_seq} ({self.entries}), "
                f"{self.checkpoints} checkpoints, signed by key {self.key_id[:16]}…"
            )
        return f"archive BROKEN ({self.path.name}): " + "; ".join(self.problems)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600), fsynced, through a temporary file beside it."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class AuditArchiveService:
    def __init__(
        self,
        keystores: Mapping[str, KeyStore],
        clock: Clock,
        settings: RetentionSettings,
        checkpoints: AuditCheckpointService,
    ) -> None:
        self._keystores = keystores
        self._clock = clock
        self._settings = settings
        self._checkpoints = checkpoints

    @property
    def settings(self) -> RetentionSettings:
        return self._settings

    def _authorise(self, principal: Principal) -> None:
        if principal.kind is PrincipalKind.SYSTEM or principal.has(Role.SECURITY_AUDITOR):
            return
        raise ForbiddenError("only the system or a security auditor may archive the audit log")

    def latest(self, session: Session) -> AuditArchive | None:
        return session.scalars(select(AuditArchive).order_by(AuditArchive.last_seq.desc()).limit(1)).first()

    def due(self, session: Session) -> bool:
        last = self.latest(session)
        return last is None or self._clock.now() - last.created_at >= self._settings.interval

    def eligible(self, session: Session) -> tuple[int, int, str] | None:
        """The next segment to archive: from the entry after the anchor up to the newest
        checkpoint whose entry is older than the retention period, and the anchor's hash
        (the segment's first prev_hash); ``None`` if there is none."""
        anchor, broken = archive_anchor(session)
        if broken is not None:
            raise ConflictError(f"the archive rows are inconsistent: {broken}", field="audit_archives")
        cutoff = self._clock.now() - self._settings.retention
        last = session.scalar(
            select(AuditCheckpoint.seq)
            .join(AuditEntry, AuditEntry.seq == AuditCheckpoint.seq)
            .where(AuditCheckpoint.seq > anchor.seq, AuditEntry.at < cutoff)
            .order_by(AuditCheckpoint.seq.desc())
            .limit(1)
        )
        return None if last is None else (anchor.seq + 1, int(last), anchor.hash)

    def archive(self, session: Session, principal: Principal) -> ArchiveResult | None:
        """Archive the eligible segment and remove it from the log; ``None`` if nothing is
        old enough. Refuses (ConflictError) when the log does not verify. The caller commits."""
        self._authorise(principal)
        segment = self.eligible(session)
        if segment is None:
            return None
        report = self._checkpoints.check(session)
        if not report.ok:
            raise ConflictError(
                f"the audit log does not verify, so it is not archived: {report.summary}", field="audit_log"
            )
        first, last, first_prev = segment
        checkpoint = session.scalar(select(AuditCheckpoint).where(AuditCheckpoint.seq == last))
        assert checkpoint is not None
        store = self._keystores[KEY_STORE]
        # the current audit-signing key (key policy), as for checkpoints
        handle, _new = self._checkpoints.signing_key(session, principal)
        public_der = statements.public_der(store.public_key(handle))
        signing_key_id = key_id(public_der)
        created_at = self._clock.now()

        body, count, last_hash = self._file_body(session, first_prev, first, last, created_at, signing_key_id)
        if count != last - first + 1 or last_hash != checkpoint.head_hash:  # verified above; be explicit anyway
            raise ConflictError("the segment to archive is not complete", field="audit_log")
        folder = self._settings.archive_dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stem = f"audit-{first:012d}-{last:012d}"
        path, sig_path, pub_path = folder / f"{stem}.jsonl", folder / f"{stem}.sig", folder / f"{stem}.pub.pem"
        signature = statements.sign_statement(store, handle, body)
        public_pem = serialization.load_der_public_key(public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_private(path, body)
        write_private(sig_path, signature)
        write_private(pub_path, public_pem)

        file_sha256 = hashlib.sha256(body).hexdigest()
        data = archive_signed_bytes(
            first_seq=first,
            last_seq=last,
            first_prev_hash=first_prev,
            last_hash=last_hash,
            entries=count,
            file_sha256=file_sha256,
            created_at=created_at,
            key_id=signing_key_id,
        )
        row = AuditArchive(
            first_seq=first,
            last_seq=last,
            first_prev_hash=first_prev,
            last_hash=last_hash,
            entries=count,
            created_at=created_at,
            file_name=path.name,
            file_sha256=file_sha256,
            key_store=KEY_STORE,
            key_handle=handle,
            public_key_der=public_der,
            signed_data=data,
            signature=statements.sign_statement(store, handle, data),
        )
        session.add(row)
        session.flush()
        details = {"first_seq": first, "last_seq": last, "entries": count, "last_hash": last_hash}
        audit.record(
            session,
            principal,
            ARCHIVE_ACTION,
            object_type="audit_archive",
            object_id=str(row.id),
            details={**details, "file": path.name, "file_sha256": file_sha256, "key_id": signing_key_id},
            clock=self._clock,
        )
        removed = session.execute(delete(_T_LOG).where(_T_LOG.c.seq >= first, _T_LOG.c.seq <= last))
        audit.record(
            session,
            principal,
            REMOVE_ACTION,
            object_type="audit_archive",
            object_id=str(row.id),
            details={**details, "removed": removed.rowcount},  # type: ignore[attr-defined]
            clock=self._clock,
        )
        return ArchiveResult(row, path, sig_path, pub_path)

    def _file_body(
        self, session: Session, first_prev: str, first: int, last: int, created_at: _dt.datetime, signer_id: str
    ) -> tuple[bytes, int, str]:
        lines: list[str] = []
        count = 0
        last_hash = first_prev
        for entry in session.scalars(
            select(AuditEntry)
            .where(AuditEntry.seq >= first, AuditEntry.seq <= last)
            .order_by(AuditEntry.seq)
            .execution_options(yield_per=5000)
        ):
            lines.append(audit.canonical_json({"entry": audit.exported_entry(entry)}))
            count += 1
            last_hash = entry.hash
        for cp in session.scalars(
            select(AuditCheckpoint)
            .where(AuditCheckpoint.seq >= first, AuditCheckpoint.seq <= last)
            .order_by(AuditCheckpoint.seq)
        ):
            lines.append(audit.canonical_json({"checkpoint": json.loads(AuditCheckpointService.export_line(cp))}))
        header = audit.canonical_json(
            {
                "format": FORMAT,
                "first_seq": first,
                "last_seq": last,
                "first_prev_hash": first_prev,
                "last_hash": last_hash,
                "entries": count,
                "created_at": audit.timestamp(created_at),
                "key_id": signer_id,
            }
        )
        return ("\n".join([header, *lines]) + "\n").encode("utf-8"), count, last_hash

    def find_row(self, session: Session, first_seq: int, last_seq: int) -> AuditArchive | None:
        return session.scalars(
            select(AuditArchive).where(AuditArchive.first_seq == first_seq, AuditArchive.last_seq == last_seq)
        ).first()


def _lines(data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if line.strip():
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError(f"line {number} is not an object")
            yield number, value


def verify_archive_file(
    path: Path, *, signature_path: Path | None = None, public_key_path: Path | None = None
) -> ArchiveFileReport:
    """Check an archive file offline: the detached signature (by the key beside it or
    the one given), the header, every entry's hash and link, and every checkpoint's
    signature and hash. Needs no database; the caller decides whether it trusts the key
    (its id is in the report)."""
    path = Path(path)
    report = ArchiveFileReport(ok=False, path=path)
    stem = path.name.removesuffix(".jsonl")
    sig_path = signature_path or path.with_name(f"{stem}.sig")
    pub_path = public_key_path or path.with_name(f"{stem}.pub.pem")
    try:
        body = path.read_bytes()
        signature = sig_path.read_bytes()
        public_pem = pub_path.read_bytes()
    except OSError as exc:
        raise InvalidError(f"cannot read {exc.filename}: {exc.strerror}", field="archive") from None
    report.file_sha256 = hashlib.sha256(body).hexdigest()
    try:
        public_der = serialization.load_pem_public_key(public_pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except ValueError:
        raise InvalidError(f"{pub_path.name} is not a PEM public key", field="public_key") from None
    report.key_id = key_id(public_der)
    if not statements.verify_statement(public_der, body, signature):
        report.problems.append("the file's signature is not valid for this key")
    try:
        _check_body(body, report)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        report.problems.append(f"the file is not a govpki audit archive ({exc})")
    report.ok = not report.problems
    return report


def _check_body(body: bytes, report: ArchiveFileReport) -> None:
    lines = list(_lines(body))
    if not lines or lines[0][1].get("format") != FORMAT:
        raise ValueError(f"the first line does not say format {FORMAT}")
    header = lines[0][1]
    report.first_seq, report.last_seq = int(header["first_seq"]), int(header["last_seq"])
    if header.get("key_id") != report.key_id:
        report.problems.append("the header names another signing key")
    entries: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    for number, item in lines[1:]:
        if "entry" in item:
            entries.append(item["entry"])
        elif "checkpoint" in item:
            checkpoints.append(item["checkpoint"])
        else:
            raise ValueError(f"line {number} is neither an entry nor a checkpoint")
    chain = check_exported(
        entries, checkpoints, first_seq=report.first_seq, first_prev_hash=str(header["first_prev_hash"])
    )
    report.entries, report.checkpoints = chain.entries, len(chain.checkpoints)
    if chain.problem is not None:
        report.problems.append(chain.problem)
    elif chain.last_seq != report.last_seq or report.entries != int(header["entries"]):
        report.problems.append(f"the file ends at entry {chain.last_seq}, the header says {report.last_seq}")
    elif chain.last_hash != header["last_hash"]:
        report.problems.append("the last entry's hash is not the header's")


__all__ = [
    "MIN_RETENTION_DAYS",
    "ArchiveFileReport",
    "ArchiveResult",
    "AuditArchiveService",
    "RetentionSettings",
    "verify_archive_file",
]
