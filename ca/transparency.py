"""The issuance transparency log: every issued certificate and every revocation (a hold
is a revocation with reason certificateHold) is a leaf of an RFC 9162 Merkle tree,
appended in the same transaction as the change, after its audit entry. Signed tree
heads (STHs) are made on a schedule with a tlog-signing P-256 key in the online key
store. Proofs in the style of RFC 6962: inclusion by leaf hash, consistency between
two sizes. ``audit`` rebuilds the tree from the database and checks both directions:
every certificate is in the log, every log entry is in the database.

A leaf is canonical JSON (sorted keys, no spaces, UTF-8):
``{"kind":"issue","ca_id":2,"serial":"…","cert_sha256":"…","time":"…Z"}`` or
``{"kind":"revoke","ca_id":2,"serial":"…","reason":"keyCompromise","revoked_at":"…Z","time":"…Z"}``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, func, insert, select
from sqlalchemy.orm import Session

from ca import merkle
from ca.events import CaEvent
from ca.models import POSSIBLY_ISSUED, CertificateRecord, CertState, TlogEntry, TlogTreeHead
from govpki import audit
from govpki.clock import Clock
from govpki.errors import InvalidError, NotFoundError
from govpki.principal import Principal
from keymgmt import KeyStore, statements
from keymgmt.policy import KeyPurpose, load_key_policy
from keymgmt.services import KeyService

KEY_STORE = "online"
MAX_ENTRIES = 1000
ISSUE = "issue"
REVOKE = "revoke"
STH_VERSION = "govpki-tlog-sth/1"

_T = cast(Table, TlogEntry.__table__)
_NEXT_IDX = select(func.coalesce(func.max(_T.c.idx), -1) + 1)
_APPEND = insert(_T)


def _canonical(value: dict[str, Any]) -> bytes:
    return audit.canonical_json(value).encode("utf-8")


def issue_leaf(*, ca_id: int, serial: str, cert_sha256: str, at: _dt.datetime) -> bytes:
    return _canonical(
        {"kind": ISSUE, "ca_id": ca_id, "serial": serial, "cert_sha256": cert_sha256, "time": audit.timestamp(at)}
    )


def revoke_leaf(*, ca_id: int, serial: str, reason: str, revoked_at: _dt.datetime, at: _dt.datetime) -> bytes:
    return _canonical(
        {
            "kind": REVOKE,
            "ca_id": ca_id,
            "serial": serial,
            "reason": reason,
            "revoked_at": audit.timestamp(revoked_at),
            "time": audit.timestamp(at),
        }
    )


def sth_signed_data(tree_size: int, root_hash: str, timestamp: _dt.datetime) -> bytes:
    """What a tree head's signature covers (canonical JSON)."""
    return _canonical(
        {
            "version": STH_VERSION,
            "tree_size": tree_size,
            "root_hash": root_hash,
            "timestamp": audit.timestamp(timestamp),
        }
    )


def verify_tree_head(head: TlogTreeHead) -> str | None:
    """None when the head's signature and signed data are right, else what is wrong."""
    if head.signed_data != sth_signed_data(head.tree_size, head.root_hash, head.timestamp):
        return "signed data does not match the tree head's fields"
    if not statements.verify_statement(head.public_key_der, head.signed_data, head.signature):
        return "signature does not verify"
    return None


def parse_hash(text: str, name: str) -> str:
    """A SHA-256 hash given as hex or base64 (standard or URL-safe), as lower-case hex."""
    raw = text.strip()
    if len(raw) == 64:
        try:
            return bytes.fromhex(raw).hex()
        except ValueError:
            pass
    try:
        padded = raw + "=" * (-len(raw) % 4)
        value = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (ValueError, binascii.Error):
        value = b""
    if len(value) != merkle.HASH_SIZE:
        raise InvalidError("is not a SHA-256 hash (64 hex digits or 44 base64 characters)", field=name)
    return value.hex()


@dataclass(frozen=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    leaf_hash: str
    root_hash: str
    audit_path: list[str]


@dataclass(frozen=True)
class ConsistencyProof:
    first: int
    second: int
    first_root: str
    second_root: str
    consistency: list[str]


@dataclass
class AuditReport:
    entries: int = 0
    tree_heads: int = 0
    certificates: int = 0
    root_hash: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class TransparencyLog:
    def __init__(
        self,
        keystores: Mapping[str, KeyStore],
        clock: Clock,
        sth_interval: _dt.timedelta,
        keys: KeyService | None = None,
    ) -> None:
        self._keystores = keystores
        self._clock = clock
        self._sth_interval = sth_interval
        self._keys = keys or KeyService(keystores, clock, load_key_policy())

    def _store(self) -> KeyStore:
        return self._keystores[KEY_STORE]

    def due(self, session: Session) -> bool:
        """A tree head is due when there is none or the newest is ``sth_interval`` old."""
        latest = self.latest_head(session)
        return latest is None or self._clock.now() - latest.timestamp >= self._sth_interval

    # ----- appending -------------------------------------------------------

    def append(self, target: Session | Connection, kind: str, ca_id: int, serial: str, leaf: bytes) -> int:
        """Append a leaf in the caller's transaction, after its audit entry (whose head-row
        lock serialises appenders, so ``max(idx) + 1`` is safe). Returns the leaf index."""
        if kind not in (ISSUE, REVOKE):
            raise ValueError(f"unknown transparency log entry kind {kind!r}")
        conn = target.connection() if isinstance(target, Session) else target
        idx = int(conn.execute(_NEXT_IDX).scalar_one())
        conn.execute(
            _APPEND,
            {
                "idx": idx,
                "kind": kind,
                "ca_id": ca_id,
                "serial": serial,
                "leaf": leaf,
                "leaf_hash": merkle.leaf_hash(leaf).hex(),
                "created_at": self._clock.now(),
            },
        )
        return idx

    def append_issue(self, target: Session | Connection, *, ca_id: int, serial: str, cert_sha256: str) -> int:
        leaf = issue_leaf(ca_id=ca_id, serial=serial, cert_sha256=cert_sha256, at=self._clock.now())
        return self.append(target, ISSUE, ca_id, serial, leaf)

    def append_revoke(self, session: Session, record: CertificateRecord) -> int:
        assert record.revocation_reason is not None and record.revoked_at is not None
        leaf = revoke_leaf(
            ca_id=record.ca_id,
            serial=record.serial,
            reason=record.revocation_reason,
            revoked_at=record.revoked_at,
            at=self._clock.now(),
        )
        return self.append(session, REVOKE, record.ca_id, record.serial, leaf)

    # ----- reading ---------------------------------------------------------

    @staticmethod
    def size(session: Session) -> int:
        return int(session.execute(select(func.count()).select_from(_T)).scalar_one())

    @staticmethod
    def _hashes(session: Session, size: int, batch: int = 10000) -> Iterator[bytes]:
        """The leaf hashes of leaves 0..size-1, streamed in index order."""
        start = 0
        while start < size:
            rows = session.execute(
                select(_T.c.idx, _T.c.leaf_hash)
                .where(_T.c.idx >= start, _T.c.idx < min(size, start + batch))
                .order_by(_T.c.idx)
            ).all()
            for idx, leaf_hash in rows:
                if idx != start:
                    raise NotFoundError(f"transparency log leaf {start} is missing", field="tree_size")
                yield bytes.fromhex(leaf_hash)
                start += 1
            if not rows:
                raise NotFoundError(f"transparency log leaf {start} is missing", field="tree_size")

    def root(self, session: Session, size: int) -> bytes:
        return merkle.root_from_leaf_hashes(self._hashes(session, size))

    @staticmethod
    def latest_head(session: Session) -> TlogTreeHead | None:
        return session.scalars(select(TlogTreeHead).order_by(TlogTreeHead.tree_size.desc()).limit(1)).first()

    def _check_size(self, session: Session, size: int, name: str) -> None:
        current = self.size(session)
        if size < 0 or size > current:
            raise InvalidError(f"must be between 0 and the log's size, {current}", field=name)

    def inclusion_proof(self, session: Session, leaf_hash_hex: str, tree_size: int) -> InclusionProof:
        wanted = parse_hash(leaf_hash_hex, "hash")
        self._check_size(session, tree_size, "tree_size")
        idx = session.execute(
            select(func.min(_T.c.idx)).where(_T.c.leaf_hash == wanted, _T.c.idx < tree_size)
        ).scalar_one_or_none()
        if idx is None:
            raise NotFoundError(f"no leaf with hash {wanted} in the first {tree_size} leaves", field="hash")
        hashes = list(self._hashes(session, tree_size))
        path = merkle.inclusion_proof(idx, hashes)
        return InclusionProof(
            idx, tree_size, wanted, merkle.root_from_leaf_hashes(hashes).hex(), [p.hex() for p in path]
        )

    def consistency_proof(self, session: Session, first: int, second: int) -> ConsistencyProof:
        self._check_size(session, second, "second")
        if first < 0 or first > second:
            raise InvalidError(f"must be between 0 and second ({second})", field="first")
        hashes = list(self._hashes(session, second))
        proof = merkle.consistency_proof(first, hashes) if 0 < first < second else []
        return ConsistencyProof(
            first,
            second,
            merkle.root_from_leaf_hashes(hashes[:first]).hex(),
            merkle.root_from_leaf_hashes(hashes).hex(),
            [p.hex() for p in proof],
        )

    def entries(self, session: Session, start: int, end: int) -> Sequence[TlogEntry]:
        """Leaves ``start``..``end`` inclusive (RFC 6962 get-entries), at most MAX_ENTRIES."""
        if start < 0:
            raise InvalidError("must be 0 or more", field="start")
        if end < start:
            raise InvalidError("must not be less than start", field="end")
        end = min(end, start + MAX_ENTRIES - 1)
        return session.scalars(
            select(TlogEntry).where(TlogEntry.idx >= start, TlogEntry.idx <= end).order_by(TlogEntry.idx)
        ).all()

    # ----- signing ---------------------------------------------------------

    def sign_tree_head(self, session: Session, principal: Principal) -> TlogTreeHead | None:
        """Sign a tree head for the current size; None if the newest head already has it."""
        size = self.size(session)
        latest = self.latest_head(session)
        if latest is not None and latest.tree_size == size:
            return None
        if latest is None and size == 0:
            return None
        key, _new = self._keys.signing_key(session, principal, KeyPurpose.TLOG_SIGNING)
        if key.store != KEY_STORE:
            raise InvalidError(f"tlog-signing key {key.id} is not in the {KEY_STORE} key store", field="key")
        store, handle = self._store(), key.handle
        root_hash = self.root(session, size).hex()
        now = self._clock.now()
        signed = sth_signed_data(size, root_hash, now)
        head = TlogTreeHead(
            tree_size=size,
            root_hash=root_hash,
            timestamp=now,
            key_store=KEY_STORE,
            key_handle=handle,
            algorithm=statements.SIGNATURE_ALGORITHM,
            public_key_der=statements.public_der(store.public_key(handle)),
            signed_data=signed,
            signature=statements.sign_statement(store, handle, signed),
        )
        session.add(head)
        session.flush()
        self._keys.count_use(session, KEY_STORE, handle)
        audit.record(
            session,
            principal,
            CaEvent.TLOG_SIGN_HEAD.value,
            object_type="tlog_tree_head",
            object_id=str(size),
            details={"tree_size": size, "root_hash": root_hash, "key_handle": handle},
            clock=self._clock,
        )
        return head

    # ----- auditing --------------------------------------------------------

    def audit(self, session: Session) -> AuditReport:
        """Rebuild the tree from ``tlog_entries`` and check it against every tree head and
        every certificate record, in both directions; list every discrepancy."""
        report = AuditReport()
        heads = {h.tree_size: h for h in session.scalars(select(TlogTreeHead).order_by(TlogTreeHead.tree_size))}
        report.tree_heads = len(heads)
        issued: dict[str, list[dict[str, Any]]] = {}
        revoked: dict[str, list[dict[str, Any]]] = {}
        expected = 0
        hashes: list[bytes] = []
        for entry in session.execute(select(TlogEntry).order_by(TlogEntry.idx)).scalars():
            if entry.idx != expected:
                report.problems.append(f"log entry {expected} is missing (the next one is {entry.idx})")
                expected = entry.idx
            computed = merkle.leaf_hash(entry.leaf)
            if computed.hex() != entry.leaf_hash:
                report.problems.append(f"log entry {entry.idx}: leaf_hash does not match its leaf")
            hashes.append(computed)
            try:
                content = json.loads(entry.leaf)
            except ValueError:
                report.problems.append(f"log entry {entry.idx}: leaf is not JSON")
                content = {}
            if (content.get("kind"), content.get("ca_id"), content.get("serial")) != (
                entry.kind,
                entry.ca_id,
                entry.serial,
            ):
                report.problems.append(f"log entry {entry.idx}: kind, CA or serial differ from its leaf")
            content["_idx"] = entry.idx
            (issued if entry.kind == ISSUE else revoked).setdefault(entry.serial, []).append(content)
            expected += 1
        report.entries = len(hashes)
        report.root_hash = merkle.root_from_leaf_hashes(hashes).hex()
        roots = merkle.roots_at(hashes, heads)  # one pass for every head
        for size, head in heads.items():
            problem = verify_tree_head(head)
            if problem:
                report.problems.append(f"tree head {size}: {problem}")
            if size > len(hashes):
                report.problems.append(f"tree head {size}: the log has only {len(hashes)} entries")
            elif roots[size].hex() != head.root_hash:
                report.problems.append(f"tree head {size}: root hash differs from the rebuilt tree")
        records = {
            r.serial: r
            for r in session.scalars(select(CertificateRecord).where(CertificateRecord.state.in_(POSSIBLY_ISSUED)))
        }
        report.certificates = len(records)
        for serial, record in records.items():
            if record.state == CertState.ISSUED.value:
                leaves = issued.get(serial, [])
                if not leaves:
                    report.problems.append(f"certificate {serial} is issued but has no issue entry in the log")
                elif not any(
                    leaf.get("cert_sha256") == record.fingerprint_sha256 and leaf.get("ca_id") == record.ca_id
                    for leaf in leaves
                ):
                    report.problems.append(f"certificate {serial}: its issue entry names a different certificate")
            if record.revocation_reason is not None:
                assert record.revoked_at is not None
                want = (record.revocation_reason, audit.timestamp(record.revoked_at))
                if not any((leaf.get("reason"), leaf.get("revoked_at")) == want for leaf in revoked.get(serial, [])):
                    report.problems.append(
                        f"certificate {serial} is revoked ({record.revocation_reason}) but has no matching "
                        "revoke entry in the log"
                    )
        for kind, by_serial in ((ISSUE, issued), (REVOKE, revoked)):
            for serial, leaves in by_serial.items():
                found = records.get(serial)
                for leaf in leaves:
                    if found is None:
                        report.problems.append(f"log entry {leaf['_idx']} ({kind} {serial}): no such certificate")
                    elif kind == ISSUE and leaf.get("cert_sha256") != found.fingerprint_sha256:
                        report.problems.append(
                            f"log entry {leaf['_idx']} (issue {serial}): fingerprint differs from the certificate"
                        )
        return report
