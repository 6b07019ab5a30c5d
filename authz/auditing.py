"""Signed audit checkpoints and the full verification of the audit log.

A checkpoint is a signed statement "entry ``seq`` has hash ``head_hash``", made
with the audit-signing key (an EC P-256 key in the online key store, so it can
live in an HSM). Checkpoints are stored in ``audit_checkpoints`` and exported as
JSON lines to a file (and optionally syslog) outside the database. Someone who
can write the database can recompute the whole chain after editing or cutting
it; they cannot make a checkpoint signature, and they cannot reach the exported
copies, so the verification below still finds the change.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import logging
import logging.handlers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from govpki import audit
from govpki.audit import (
    AuditArchive,
    AuditCheckpoint,
    AuditEntry,
    AuditHead,
    AuditVerification,
    ChainReport,
    archive_anchor,
    verify_chain,
)
from govpki.clock import Clock
from govpki.errors import ForbiddenError, InvalidError
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt import statements
from keymgmt.interfaces import KeyStore
from keymgmt.models import KeyRecord
from keymgmt.policy import KeyPurpose, load_key_policy
from keymgmt.services import KeyService

log = logging.getLogger("govpki.audit")

CHECKPOINT_ACTION = "authz:audit:checkpoint"
KEY_STORE = "online"
_T_LOG = cast(Table, AuditEntry.__table__)


@dataclass(frozen=True)
class AuditSettings:
    checkpoint_interval: _dt.timedelta
    checkpoint_file: Path
    syslog: bool = False
    syslog_address: str | tuple[str, int] | None = None  # None: /dev/log if present, else localhost:514


@dataclass(frozen=True)
class VerificationReport:
    ok: bool
    entries: int
    head_seq: int
    checkpoints: int
    exported: int = 0
    first_bad_seq: int | None = None
    first_bad_checkpoint: int | None = None  # the checkpoint's seq
    reason: str | None = None

    @property
    def summary(self) -> str:
        if self.ok:
            extra = f", {self.exported} exported checkpoints match" if self.exported else ""
            return (
                f"audit chain OK: {self.entries} entries, head {self.head_seq}, "
                f"{self.checkpoints} checkpoints verified{extra}"
            )
        where = f"entry {self.first_bad_seq}" if self.first_bad_seq is not None else "the head"
        if self.first_bad_checkpoint is not None:
            where += f" (checkpoint at seq {self.first_bad_checkpoint})"
        return f"audit chain BROKEN at {where}: {self.reason}"


def key_id(public_der: bytes) -> str:
    return hashlib.sha256(public_der).hexdigest()


def signed_bytes(seq: int, head_hash: str, created_at: _dt.datetime, key_id: str) -> bytes:
    """The canonical bytes a checkpoint signature covers."""
    return audit.canonical_json(
        {"seq": seq, "head_hash": head_hash, "created_at": audit.timestamp(created_at), "key_id": key_id}
    ).encode("utf-8")


def archive_signed_bytes(
    *,
    first_seq: int,
    last_seq: int,
    first_prev_hash: str,
    last_hash: str,
    entries: int,
    file_sha256: str,
    created_at: _dt.datetime,
    key_id: str,
) -> bytes:
    """What an archive row's signature covers (see authz.archive)."""
    return audit.canonical_json(
        {
            "kind": "audit-archive",
            "first_seq": first_seq,
            "last_seq": last_seq,
            "first_prev_hash": first_prev_hash,
            "last_hash": last_hash,
            "entries": entries,
            "file_sha256": file_sha256,
            "created_at": audit.timestamp(created_at),
            "key_id": key_id,
        }
    ).encode("utf-8")


@dataclass
class ExportedChain:
    """What :func:`check_exported` found in exported entries and checkpoints."""

    entries: int = 0
    matched: int = 0  # entries flagged "matched" (evidence bundles)
    checkpoints: list[int] = field(default_factory=list)  # the seqs of the valid checkpoints
    last_seq: int = 0
    last_hash: str = audit.GENESIS_HASH
    problem: str | None = None


def check_exported(
    entries: Iterable[Mapping[str, Any]],
    checkpoints: Iterable[Mapping[str, Any]],
    *,
    first_seq: int,
    first_prev_hash: str,
) -> ExportedChain:
    """Offline check of a contiguous run of exported entries (:func:`govpki.audit.exported_entry`)
    starting at ``first_seq`` after ``first_prev_hash``, and of exported checkpoints
    (:meth:`AuditCheckpointService.export_line`) over it: gap-free, linked, each hash
    recomputed; each checkpoint's signature valid and its entry carrying the signed hash.
    Stops at the first problem. Malformed items raise ValueError/KeyError/TypeError."""
    found = ExportedChain(last_seq=first_seq - 1, last_hash=first_prev_hash)
    prev, expected = first_prev_hash, first_seq
    hashes: dict[int, str] = {}
    for e in entries:
        seq = int(e["seq"])
        if seq != expected:
            found.problem = f"entry {expected} is missing (the next is {seq})"
            return found
        if e["prev_hash"] != prev:
            found.problem = f"entry {seq}: prev_hash does not link to the previous entry"
            return found
        digest = audit.entry_hash(
            prev,
            seq=seq,
            at=audit.parse_timestamp(e["at"]),
            actor=e["actor"],
            action=e["action"],
            object_type=e["object_type"],
            object_id=e["object_id"],
            outcome=e["outcome"],
            details=e["details"],
        )
        if e["hash"] != digest:
            found.problem = f"entry {seq}: its content does not match its hash"
            return found
        hashes[seq] = prev = digest
        expected += 1
        found.entries += 1
        found.matched += 1 if e.get("matched") is True else 0
    found.last_seq, found.last_hash = expected - 1, prev
    for cp in checkpoints:
        seq = int(cp["seq"])
        public = base64.b64decode(cp["public_key"], validate=True)
        data = signed_bytes(seq, cp["head_hash"], audit.parse_timestamp(cp["created_at"]), key_id(public))
        if not statements.verify_statement(public, data, base64.b64decode(cp["signature"], validate=True)):
            found.problem = f"checkpoint {seq}: the signature is not valid"
            return found
        if hashes.get(seq) != cp["head_hash"]:
            found.problem = f"checkpoint {seq}: entry {seq} does not have the signed hash"
            return found
        found.checkpoints.append(seq)
    return found


class _RaisingSyslog(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        raise  # noqa: PLE0704  (called inside logging's except block: re-raise the send error to export())


class AuditCheckpointService:
    def __init__(
        self,
        keystores: Mapping[str, KeyStore],
        clock: Clock,
        settings: AuditSettings,
        keys: KeyService | None = None,
    ) -> None:
        self._keystores = keystores
        self._clock = clock
        self._settings = settings
        self._keys = keys or KeyService(keystores, clock, load_key_policy())

    @property
    def settings(self) -> AuditSettings:
        return self._settings

    # -- checkpoints ---------------------------------------------------------------

    def latest(self, session: Session) -> AuditCheckpoint | None:
        return session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)).first()

    def due(self, session: Session) -> bool:
        last = self.latest(session)
        return last is None or self._clock.now() - last.created_at >= self._settings.checkpoint_interval

    def _authorise(self, principal: Principal, what: str = "sign audit checkpoints") -> None:
        if principal.kind is PrincipalKind.SYSTEM:
            return
        if not (principal.has(Role.SECURITY_AUDITOR) or principal.has(Role.SECURITY_ADMIN)):
            raise ForbiddenError(f"only the system, a security auditor or a security administrator may {what}")

    def signing_key(self, session: Session, principal: Principal) -> tuple[str, bool]:
        """The current audit-signing key (key policy: rotated with an overlap), or a new one."""
        record, new = self._keys.signing_key(session, principal, KeyPurpose.AUDIT_SIGNING)
        if record.store != KEY_STORE:
            raise InvalidError(f"audit-signing key {record.id} is not in the {KEY_STORE} key store", field="key")
        return record.handle, new

    def checkpoint(self, session: Session, principal: Principal) -> AuditCheckpoint | None:
        """Sign the current chain head; ``None`` when nothing was logged since the last
        checkpoint (its own entry aside). Writes an audit entry; the caller commits."""
        self._authorise(principal)
        head = session.get(AuditHead, 1, populate_existing=True)
        if head is None:
            raise RuntimeError("audit_head row is missing: the audit log cannot be written")
        seq, head_hash = head.seq, head.hash
        if seq == 0:
            return None
        last = self.latest(session)
        if last is not None:
            if seq <= last.seq:
                return None
            if seq == last.seq + 1:
                only = session.scalar(select(AuditEntry.action).where(AuditEntry.seq == seq))
                if only == CHECKPOINT_ACTION:
                    return None
        handle, new_key = self.signing_key(session, principal)
        if new_key:  # the new key's audit entry is covered by this checkpoint too
            head = session.get_one(AuditHead, 1, populate_existing=True)
            seq, head_hash = head.seq, head.hash
        store = self._keystores[KEY_STORE]
        public_der = statements.public_der(store.public_key(handle))
        created_at = self._clock.now()
        data = signed_bytes(seq, head_hash, created_at, key_id(public_der))
        signature = statements.sign_statement(store, handle, data)
        row = AuditCheckpoint(
            seq=seq,
            head_hash=head_hash,
            created_at=created_at,
            key_store=KEY_STORE,
            key_handle=handle,
            algorithm=statements.SIGNATURE_ALGORITHM,
            public_key_der=public_der,
            signed_data=data,
            signature=signature,
        )
        session.add(row)
        session.flush()
        self._keys.count_use(session, KEY_STORE, handle)
        audit.record(
            session,
            principal,
            CHECKPOINT_ACTION,
            object_type="audit_checkpoint",
            object_id=str(seq),
            details={"head_hash": head_hash, "key_handle": handle, "key_id": key_id(public_der), "new_key": new_key},
            clock=self._clock,
        )
        return row

    # -- export --------------------------------------------------------------------

    @staticmethod
    def export_line(checkpoint: AuditCheckpoint) -> str:
        return audit.canonical_json(
            {
                "seq": checkpoint.seq,
                "head_hash": checkpoint.head_hash,
                "created_at": audit.timestamp(checkpoint.created_at),
                "key_store": checkpoint.key_store,
                "key_handle": checkpoint.key_handle,
                "algorithm": checkpoint.algorithm,
                "public_key": base64.b64encode(checkpoint.public_key_der).decode("ascii"),
                "signature": base64.b64encode(checkpoint.signature).decode("ascii"),
            }
        )

    def export(self, checkpoint: AuditCheckpoint, path: Path | None = None, *, syslog: bool | None = None) -> list[str]:
        """Append the checkpoint as one JSON line to the checkpoint file (0600) and,
        if configured, send it to syslog. Returns where it went. A file that cannot
        be written raises (OSError); syslog that cannot be reached is a warning."""
        line = self.export_line(checkpoint)
        target = path or self._settings.checkpoint_file
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        written = [str(target)]
        if (self._settings.syslog if syslog is None else syslog) and self._to_syslog(line):
            written.append("syslog")
        return written

    def _to_syslog(self, line: str) -> bool:
        address = self._settings.syslog_address
        if address is None:
            address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler: _RaisingSyslog | None = None
        try:
            handler = _RaisingSyslog(address=address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
            handler.ident = "govpki: "
            handler.emit(logging.LogRecord("govpki.audit", logging.INFO, "", 0, f"audit checkpoint {line}", None, None))
        except OSError as exc:
            log.warning("audit checkpoint not sent to syslog (%s): %s", address, exc)
            return False
        finally:
            if handler is not None:
                handler.close()
        return True

    # -- verification --------------------------------------------------------------

    def verify(
        self, session: Session, principal: Principal, checkpoints_file: Path | None = None
    ) -> VerificationReport:
        """The whole chain, every checkpoint and (optionally) an exported checkpoint
        file. Adds an ``AuditVerification`` row for the run; the caller commits."""
        self._authorise(principal, "verify the audit log")
        started = self._clock.now()
        report = self.check(session, checkpoints_file)
        session.add(
            AuditVerification(
                started_at=started,
                finished_at=self._clock.now(),
                actor=principal.audit_name,
                entries=report.entries,
                checkpoints=report.checkpoints,
                ok=report.ok,
                first_bad_seq=report.first_bad_seq,
                reason=report.reason if report.ok else report.summary,
            )
        )
        session.flush()
        return report

    def latest_verification(self, session: Session) -> AuditVerification | None:
        return session.scalars(select(AuditVerification).order_by(AuditVerification.id.desc()).limit(1)).first()

    def check(self, session: Session, checkpoints_file: Path | None = None) -> VerificationReport:
        """What :meth:`verify` checks, without recording a run (archival checks first)."""
        chain = verify_chain(session)
        checkpoints = list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))
        archived = self._check_archives(session)
        if isinstance(archived, str):
            anchor, _ = archive_anchor(session)
            return VerificationReport(
                False, chain.entries, chain.head_seq, len(checkpoints), 0, anchor.seq + 1, None, archived
            )
        bad = self._check_checkpoints(session, chain, checkpoints, archived)
        exported = 0
        if bad is None and checkpoints_file is not None:
            exported, bad = self._check_export(session, chain, checkpoints, checkpoints_file, archived)
        # the chain's own break comes first unless a checkpoint points earlier
        chain_first = not chain.ok and (
            bad is None or bad[0] is None or (chain.first_bad_seq is not None and chain.first_bad_seq <= bad[0])
        )
        if chain_first:
            return VerificationReport(
                False,
                chain.entries,
                chain.head_seq,
                len(checkpoints),
                exported,
                chain.first_bad_seq,
                None,
                chain.reason,
            )
        if bad is not None:
            first_seq, cp_seq, reason = bad
            return VerificationReport(
                False, chain.entries, chain.head_seq, len(checkpoints), exported, first_seq, cp_seq, reason
            )
        return VerificationReport(True, chain.entries, chain.head_seq, len(checkpoints), exported)

    def _check_archives(self, session: Session) -> dict[int, str] | str:
        """The archived segments' last hashes by seq (their rows are the anchor the chain
        starts from), or why an archive row cannot be trusted (signature, fields, key)."""
        last_hashes: dict[int, str] = {}
        recorded = self._recorded_keys(session)
        for row in session.scalars(select(AuditArchive).order_by(AuditArchive.first_seq)):
            where = f"archive of entries {row.first_seq}..{row.last_seq}"
            data = archive_signed_bytes(
                first_seq=row.first_seq,
                last_seq=row.last_seq,
                first_prev_hash=row.first_prev_hash,
                last_hash=row.last_hash,
                entries=row.entries,
                file_sha256=row.file_sha256,
                created_at=row.created_at,
                key_id=key_id(row.public_key_der),
            )
            if data != row.signed_data:
                return f"{where}: its signed data does not match its fields"
            if not statements.verify_statement(row.public_key_der, data, row.signature):
                return f"{where}: its signature is not valid"
            untrusted = self.trusted_key(row.key_store, row.key_handle, row.public_key_der, recorded)
            if untrusted is not None:
                return f"{where}: {untrusted}"
            last_hashes[row.last_seq] = row.last_hash
        return last_hashes

    def _hashes_at(self, session: Session, seqs: Iterable[int]) -> dict[int, str]:
        wanted = sorted(set(seqs))
        found: dict[int, str] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            for seq, digest in session.execute(select(_T_LOG.c.seq, _T_LOG.c.hash).where(_T_LOG.c.seq.in_(chunk))):
                found[seq] = digest
        return found

    @staticmethod
    def _recorded_keys(session: Session) -> dict[str, str | None]:
        """handle → SPKI SHA-256 of every audit-signing key record in the online store."""
        rows = session.execute(
            select(KeyRecord.handle, KeyRecord.spki_sha256).where(
                KeyRecord.purpose == KeyPurpose.AUDIT_SIGNING.value, KeyRecord.store == KEY_STORE
            )
        )
        return {handle: spki for handle, spki in rows}

    def trusted_key(
        self, store_name: str, handle: str, public_der: bytes, recorded: Mapping[str, str | None] | None = None
    ) -> str | None:
        """None when the key is ours; else why not. A key no longer in the store (destroyed
        after retirement) is ours if its key record has this public key."""
        if store_name != KEY_STORE:  # never open another store (the root's is kept offline)
            return f"key store {store_name!r} does not hold audit-signing keys"
        store = self._keystores[KEY_STORE]
        if not store.has(handle):
            if recorded is not None and handle in recorded and recorded[handle] == key_id(public_der):
                return None
            return f"signing key {handle!r} is not in the {store_name} key store"
        if statements.public_der(store.public_key(handle)) != public_der:
            return "the public key is not the key store's audit-signing key"
        return None

    def _check_one(
        self,
        seq: int,
        head_hash: str,
        created_at: _dt.datetime,
        store_name: str,
        handle: str,
        public_der: bytes,
        signature: bytes,
        signed_data: bytes | None,
        chain: ChainReport,
        hashes: Mapping[int, str],
        previous_good: int,
        recorded: Mapping[str, str | None],
        archived: Mapping[int, str],
    ) -> tuple[int | None, int, str] | None:
        data = signed_bytes(seq, head_hash, created_at, key_id(public_der))
        if signed_data is not None and signed_data != data:
            return None, seq, "the checkpoint's signed data does not match its fields"
        if not statements.verify_statement(public_der, data, signature):
            return None, seq, "the checkpoint signature is not valid"
        untrusted = self.trusted_key(store_name, handle, public_der, recorded)
        if untrusted is not None:
            return None, seq, untrusted
        if seq > chain.head_seq and chain.ok:
            return (
                chain.head_seq + 1,
                seq,
                (
                    f"entries {chain.head_seq + 1}..{seq} are missing: the log was cut after {chain.head_seq} "
                    f"but checkpoint {seq} was signed"
                ),
            )
        actual = hashes.get(seq)
        if actual is None and archived and seq <= max(archived):
            # archived: the segment's signed last hash, or (inside a segment) its archive file holds it
            actual = archived.get(seq, head_hash)
        if actual is None:
            return seq, seq, f"entry {seq} covered by a checkpoint is missing"
        if actual != head_hash:
            return (
                previous_good + 1,
                seq,
                (
                    f"entry {seq} does not have the hash its checkpoint signed: the log was rewritten "
                    f"between entries {previous_good + 1} and {seq}"
                ),
            )
        return None

    def _check_checkpoints(
        self, session: Session, chain: ChainReport, checkpoints: list[AuditCheckpoint], archived: Mapping[int, str]
    ) -> tuple[int | None, int, str] | None:
        hashes = self._hashes_at(session, (c.seq for c in checkpoints))
        recorded = self._recorded_keys(session)
        good = 0
        for cp in checkpoints:
            bad = self._check_one(
                cp.seq,
                cp.head_hash,
                cp.created_at,
                cp.key_store,
                cp.key_handle,
                cp.public_key_der,
                cp.signature,
                cp.signed_data,
                chain,
                hashes,
                good,
                recorded,
                archived,
            )
            if bad is not None:
                return bad
            good = cp.seq
        return None

    def _check_export(
        self,
        session: Session,
        chain: ChainReport,
        checkpoints: list[AuditCheckpoint],
        path: Path,
        archived: Mapping[int, str],
    ) -> tuple[int, tuple[int | None, int, str] | None]:
        by_seq = {cp.seq: cp for cp in checkpoints}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidError(f"cannot read {path}: {exc.strerror}", field="checkpoints") from None
        parsed: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                parsed.append(
                    {
                        "seq": int(item["seq"]),
                        "head_hash": str(item["head_hash"]),
                        "created_at": _dt.datetime.strptime(item["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                            tzinfo=_dt.UTC
                        ),
                        "key_store": str(item["key_store"]),
                        "key_handle": str(item["key_handle"]),
                        "public_key": base64.b64decode(item["public_key"], validate=True),
                        "signature": base64.b64decode(item["signature"], validate=True),
                    }
                )
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise InvalidError(f"line {number} is not an exported checkpoint", field="checkpoints") from None
        parsed.sort(key=lambda i: i["seq"])
        hashes = self._hashes_at(session, (i["seq"] for i in parsed))
        recorded = self._recorded_keys(session)
        good = 0
        for item in parsed:
            bad = self._check_one(
                item["seq"],
                item["head_hash"],
                item["created_at"],
                item["key_store"],
                item["key_handle"],
                item["public_key"],
                item["signature"],
                None,
                chain,
                hashes,
                good,
                recorded,
                archived,
            )
            if bad is not None:
                return len(parsed), (bad[0], bad[1], f"exported checkpoint: {bad[2]}")
            stored = by_seq.get(item["seq"])
            if stored is None:
                return len(parsed), (None, item["seq"], "an exported checkpoint is missing from the database")
            if (stored.head_hash, stored.signature, stored.public_key_der) != (
                item["head_hash"],
                item["signature"],
                item["public_key"],
            ):
                return len(parsed), (None, item["seq"], "the exported checkpoint differs from the database's")
            good = item["seq"]
        return len(parsed), None


def checkpoint_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditCheckpoint)) or 0)
