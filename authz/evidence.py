"""Signed evidence bundles of the audit log, verifiable offline.

For a filter (:class:`authz.console.AuditFilter`) the bundle holds the matching entries
and every entry between them — the contiguous chain from the first match up to the
next signed checkpoint at or after the last match (a chain can only be re-verified
over a contiguous range; ``matched`` flags the entries the filter found) — the
checkpoints inside that range (the last one closes it) and, for certificate events
(issuance, revocation, hold), the transparency-log leaves with their RFC 9162
inclusion proofs to a signed tree head, and that tree head.

One tar file (stdlib ``tarfile``) with:

- ``bundle.json``: canonical JSON (sorted keys, no spaces, UTF-8), format
  ``govpki-audit-evidence/1``;
- ``bundle.sig``: detached ECDSA (P-256, SHA-256, DER) signature over ``bundle.json``
  by the audit-signing key, the key that signs checkpoints and archives;
- ``signer.pub.pem``: that public key;
- ``README.txt``: how to check it (``openssl dgst -sha256 -verify signer.pub.pem
  -signature bundle.sig bundle.json`` and ``govpki audit verify-export``).

:func:`verify_bundle` checks a bundle without a database: the signature, every
entry's hash and link, each checkpoint's signature and that the entry at its seq has
the signed hash, that a checkpoint closes the range; the transparency part is checked
by a function the caller passes (``ca.evidence.verify_transparency``), since that
format belongs to the CA domain.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from authz.auditing import KEY_STORE, AuditCheckpointService, check_exported, key_id
from authz.console import AuditFilter, authorise_auditor, conditions
from authz.events import AuthzEvent
from govpki import audit
from govpki.audit import AuditArchive, AuditCheckpoint, AuditEntry, archive_anchor
from govpki.clock import Clock
from govpki.errors import ConflictError, InvalidError
from govpki.principal import Principal
from keymgmt import statements
from keymgmt.interfaces import KeyStore

FORMAT = "govpki-audit-evidence/1"
MAX_ENTRIES = 200_000
BUNDLE, SIGNATURE, PUBLIC_KEY, README = "bundle.json", "bundle.sig", "signer.pub.pem", "README.txt"
MEMBERS = (BUNDLE, SIGNATURE, PUBLIC_KEY, README)
MAX_MEMBER_BYTES = 2 * 1024 * 1024 * 1024

# certificate events and the transparency-log leaf kind that records them
CERTIFICATE_EVENTS = {
    "ca:certificate:issue": "issue",
    "ca:certificate:revoke": "revoke",
    "ca:certificate:hold": "revoke",
}

README_TEXT = """govpki audit evidence bundle ({format})

bundle.json     the audit entries (with their hashes), the signed checkpoints of the
                range and, for certificate events, transparency-log inclusion proofs
bundle.sig      ECDSA P-256 / SHA-256 signature (DER) over bundle.json
signer.pub.pem  the audit-signing public key (SHA-256 of its DER: {key_id})

Check the signature with plain OpenSSL:

    openssl dgst -sha256 -verify signer.pub.pem -signature bundle.sig bundle.json

Check everything (signature, every entry hash and link, checkpoints, inclusion proofs
and tree heads), offline:

    govpki audit verify-export THIS-FILE.tar [--public-key the-key-you-trust.pem]

Entries {first_seq}..{last_seq}; {matched} matched the filter {filter}.
Exported {created_at} by {actor}.
"""


class CertificateEvidence(Protocol):
    """Transparency-log evidence for certificate events (the CA domain provides it)."""

    def collect(self, session: Session, events: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
        """For (audit seq, leaf kind, serial) the leaves, inclusion proofs and tree heads."""
        ...


@dataclass(frozen=True)
class EvidenceBundle:
    data: bytes  # the tar file
    bundle_sha256: str  # of bundle.json (what the signature covers)
    first_seq: int
    last_seq: int
    entries: int
    matched: int
    key_id: str
    checkpoint: AuditCheckpoint | None  # signed for this export (to be exported to the checkpoint file after commit)


def _entry(entry: AuditEntry, matched: bool) -> dict[str, Any]:
    return {**audit.exported_entry(entry), "matched": matched}


def _tar(members: Sequence[tuple[str, bytes]], mtime: float) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(mtime)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class EvidenceService:
    def __init__(
        self,
        keystores: Mapping[str, KeyStore],
        clock: Clock,
        checkpoints: AuditCheckpointService,
        certificates: CertificateEvidence | None = None,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._keystores = keystores
        self._clock = clock
        self._checkpoints = checkpoints
        self._certificates = certificates
        self._max_entries = max_entries

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def _refuse_archived(self, session: Session, flt: AuditFilter) -> None:
        anchor, _ = archive_anchor(session)
        if anchor.seq == 0:
            return
        first_at = session.scalar(select(func.min(AuditEntry.at)).where(AuditEntry.seq > anchor.seq))
        if flt.since is not None and first_at is not None and flt.since >= first_at:
            return
        files = list(session.scalars(select(AuditArchive.file_name).order_by(AuditArchive.first_seq)))
        since = audit.timestamp(first_at) if first_at is not None else "now"
        raise InvalidError(
            f"entries 1..{anchor.seq} were archived (in {', '.join(files)}) and cannot be exported from the "
            f"database: give a start time at or after {since}, and check the archive with govpki audit verify-archive",
            field="since",
            code="audit.export_archived",
        )

    def export(self, session: Session, principal: Principal, flt: AuditFilter) -> EvidenceBundle:
        """Build and sign the bundle; audited as ``authz:audit:export`` (filter and SHA-256).
        Signs a checkpoint first when none closes the range yet. The caller commits."""
        authorise_auditor(principal, "export audit evidence")
        self._refuse_archived(session, flt)
        where = conditions(flt, session.get_bind().dialect.name)
        first, last, count = session.execute(
            select(func.min(AuditEntry.seq), func.max(AuditEntry.seq), func.count()).where(*where)
        ).one()
        if not count:
            raise InvalidError("no audit entry matches the filter", field="filter", code="audit.export_empty")
        close = session.scalar(select(func.min(AuditCheckpoint.seq)).where(AuditCheckpoint.seq >= last))
        size = (close if close is not None else last) - first + 1
        if size > self._max_entries:
            raise InvalidError(
                f"the filter spans {size} entries (from entry {first} to the checkpoint closing the range); at most "
                f"{self._max_entries} can be exported at once: narrow the time range",
                field="since",
                code="audit.export_too_large",
            )
        made: AuditCheckpoint | None = None
        if close is None:
            made = self._checkpoints.checkpoint(session, principal)
            if made is None or made.seq < last:
                raise ConflictError(
                    f"entry {last} is not covered by a signed checkpoint, and none can be signed until something "
                    "else is logged (the newest entry is a checkpoint's own); give an earlier end time",
                    field="filter",
                    code="audit.export_no_checkpoint",
                )
            close = made.seq
        return self._build(session, principal, flt, int(first), int(close), made)

    def _build(
        self,
        session: Session,
        principal: Principal,
        flt: AuditFilter,
        first: int,
        close: int,
        made: AuditCheckpoint | None,
    ) -> EvidenceBundle:
        where = conditions(flt, session.get_bind().dialect.name)
        matched = set(
            session.scalars(select(AuditEntry.seq).where(*where, AuditEntry.seq >= first, AuditEntry.seq <= close))
        )
        entries: list[dict[str, Any]] = []
        events: list[tuple[int, str, str]] = []
        first_prev = ""
        expected = first
        for entry in session.scalars(
            select(AuditEntry)
            .where(AuditEntry.seq >= first, AuditEntry.seq <= close)
            .order_by(AuditEntry.seq)
            .execution_options(yield_per=5000)
        ):
            if entry.seq != expected:
                raise ConflictError(f"audit entry {expected} is missing; run govpki audit verify", field="audit_log")
            if not entries:
                first_prev = entry.prev_hash
            hit = entry.seq in matched
            entries.append(_entry(entry, hit))
            kind = CERTIFICATE_EVENTS.get(entry.action)
            if hit and kind is not None and entry.object_type == "certificate":
                events.append((entry.seq, kind, entry.object_id))
            expected += 1
        if expected != close + 1:
            raise ConflictError(f"audit entry {expected} is missing; run govpki audit verify", field="audit_log")
        checkpoints = [
            json.loads(AuditCheckpointService.export_line(cp))
            for cp in session.scalars(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.seq >= first, AuditCheckpoint.seq <= close)
                .order_by(AuditCheckpoint.seq)
            )
        ]
        transparency: dict[str, Any] = {"leaves": [], "tree_heads": []}
        if events and self._certificates is not None:
            transparency = self._certificates.collect(session, events)

        store = self._keystores[KEY_STORE]
        # the current audit-signing key, as checkpoints and archives use (the key policy rotates it)
        handle, _new = self._checkpoints.signing_key(session, principal)
        public_der = statements.public_der(store.public_key(handle))
        signer = key_id(public_der)
        created_at = self._clock.now()
        document = {
            "format": FORMAT,
            "created_at": audit.timestamp(created_at),
            "created_by": principal.audit_name,
            "key_id": signer,
            "filter": flt.to_params(),
            "range": {"first_seq": first, "last_seq": close, "first_prev_hash": first_prev},
            "matched": len(matched),
            "entries": entries,
            "checkpoints": checkpoints,
            "transparency": transparency,
        }
        body = audit.canonical_json(document).encode("utf-8")
        signature = statements.sign_statement(store, handle, body)
        public_pem = serialization.load_der_public_key(public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = hashlib.sha256(body).hexdigest()
        readme = README_TEXT.format(
            format=FORMAT,
            key_id=signer,
            first_seq=first,
            last_seq=close,
            matched=len(matched),
            filter=json.dumps(flt.to_params(), ensure_ascii=False),
            created_at=audit.timestamp(created_at),
            actor=principal.audit_name,
        ).encode("utf-8")
        data = _tar(
            [(BUNDLE, body), (SIGNATURE, signature), (PUBLIC_KEY, public_pem), (README, readme)],
            created_at.timestamp(),
        )
        audit.record(
            session,
            principal,
            AuthzEvent.AUDIT_EXPORT.value,
            object_type="audit_export",
            object_id=digest,
            details={
                "filter": flt.to_params(),
                "first_seq": first,
                "last_seq": close,
                "entries": len(entries),
                "matched": len(matched),
                "certificate_proofs": len(transparency.get("leaves", [])),
                "bundle_sha256": digest,
                "tar_sha256": hashlib.sha256(data).hexdigest(),
                "key_id": signer,
            },
            clock=self._clock,
        )
        return EvidenceBundle(data, digest, first, close, len(entries), len(matched), signer, made)


# ----- offline verification ---------------------------------------------------------------


@dataclass
class EvidenceReport:
    ok: bool = False
    key_id: str = ""
    bundle_sha256: str = ""
    first_seq: int = 0
    last_seq: int = 0
    entries: int = 0
    matched: int = 0
    checkpoints: int = 0
    proofs: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.ok:
            return (
                f"evidence OK: entries {self.first_seq}..{self.last_seq} ({self.entries}, {self.matched} matched), "
                f"{self.checkpoints} checkpoints, {self.proofs} inclusion proofs"
            )
        return f"evidence BROKEN: {self.problems[0]}" if self.problems else "evidence BROKEN"


Check = Callable[[Mapping[str, Any]], tuple[int, list[str], list[str]]]
"""An extra check of the parsed bundle: (proofs checked, problems, notes)."""


def read_bundle(path: Path) -> dict[str, bytes]:
    """The members of a bundle tar file (only regular files, each at most 2 GiB)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar.getmembers():
                if member.name not in MEMBERS:
                    continue
                if not member.isfile() or member.size > MAX_MEMBER_BYTES:
                    raise InvalidError(f"{member.name} in the bundle is not a regular file", field="bundle")
                extracted = tar.extractfile(member)
                assert extracted is not None
                found[member.name] = extracted.read()
    except (OSError, tarfile.TarError) as exc:
        raise InvalidError(f"{path} is not a readable tar file ({exc})", field="bundle") from None
    return found


def _public_der(pem: bytes, name: str) -> bytes:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise InvalidError(f"{name} is not a PEM public key", field="public_key") from None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_bundle(path: Path, *, public_key_path: Path | None = None, checks: Sequence[Check] = ()) -> EvidenceReport:
    """Check a bundle offline. With ``public_key_path`` the signature must be by that key
    (the one you trust), else by the key in the bundle (its id is in the report)."""
    members = read_bundle(Path(path))
    report = EvidenceReport()
    missing = [name for name in (BUNDLE, SIGNATURE) if name not in members]
    if public_key_path is None and PUBLIC_KEY not in members:
        missing.append(PUBLIC_KEY)
    if missing:
        report.problems.append(f"the bundle lacks {', '.join(missing)}")
        return report
    if public_key_path is not None:
        try:
            pem = Path(public_key_path).read_bytes()
        except OSError as exc:
            raise InvalidError(f"cannot read {public_key_path}: {exc.strerror}", field="public_key") from None
        public_der = _public_der(pem, str(public_key_path))
    else:
        public_der = _public_der(members[PUBLIC_KEY], PUBLIC_KEY)
    body = members[BUNDLE]
    report.key_id = key_id(public_der)
    report.bundle_sha256 = hashlib.sha256(body).hexdigest()
    if not statements.verify_statement(public_der, body, members[SIGNATURE]):
        report.problems.append("the signature over bundle.json is not valid for the signer's key")
        return report
    try:
        document = json.loads(body)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"the format is not {FORMAT}")
        if document.get("key_id") != report.key_id:
            report.problems.append("bundle.json names another signing key than the one that signed it")
        _check_chain(document, report)
        for check in checks:
            proofs, problems, notes = check(document)
            report.proofs += proofs
            report.problems.extend(problems)
            report.notes.extend(notes)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        report.problems.append(f"bundle.json is not a govpki evidence bundle ({exc})")
    report.ok = not report.problems
    return report


def _check_chain(document: Mapping[str, Any], report: EvidenceReport) -> None:
    span = document["range"]
    report.first_seq, report.last_seq = int(span["first_seq"]), int(span["last_seq"])
    chain = check_exported(
        document["entries"],
        document["checkpoints"],
        first_seq=report.first_seq,
        first_prev_hash=str(span["first_prev_hash"]),
    )
    report.entries, report.matched, report.checkpoints = chain.entries, chain.matched, len(chain.checkpoints)
    if chain.problem is not None:
        report.problems.append(chain.problem)
        return
    if chain.last_seq != report.last_seq:
        report.problems.append(f"the entries end at {chain.last_seq}, the range says {report.last_seq}")
        return
    if report.matched != int(document["matched"]):
        report.problems.append(
            f"{report.matched} entries are flagged as matched, the bundle says {document['matched']}"
        )
    if report.last_seq not in chain.checkpoints:
        report.problems.append(f"no signed checkpoint closes the range at entry {report.last_seq}")


__all__ = [
    "CERTIFICATE_EVENTS",
    "FORMAT",
    "MAX_ENTRIES",
    "CertificateEvidence",
    "EvidenceBundle",
    "EvidenceReport",
    "EvidenceService",
    "read_bundle",
    "verify_bundle",
]
