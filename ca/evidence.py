"""The CA domain's part of the security centre: transparency-log evidence for audit
bundles (leaves, RFC 9162 inclusion proofs, signed tree heads) and the offline check of
it, and the certificate statistics the auditors' console draws.

Bundle section ``transparency`` (see ``authz.evidence``):
``{"tree_heads": [{tree_size, root_hash, timestamp, key_handle, public_key, signature}],
"leaves": [{seq, kind, serial, leaf_index, leaf, leaf_hash, tree_size, audit_path}]}`` —
``leaf`` is the exact leaf text hashed as ``SHA-256(0x00 || leaf)``, ``seq`` the audit
entry it proves, ``tree_size`` the signed tree head the proof leads to (``null`` when no
signed tree head covers the leaf yet), ``audit_path`` the RFC 9162 PATH in hex.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ca import merkle
from ca.models import CertificateRecord, CertState, TlogEntry, TlogTreeHead
from ca.services import can_read
from ca.transparency import sth_signed_data
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ForbiddenError
from govpki.principal import Principal, PrincipalKind, Role
from govpki.sqltime import bucket
from keymgmt import statements

CACHE_MIN_LEAVES = 256  # subtree roots of at least this many leaves are kept between proofs


class _Proofs:
    """RFC 9162 PATH(m, D[n]) for many leaves of one tree: the roots of large subtrees are
    computed once and shared (the same nodes as ``merkle.inclusion_proof``, which rebuilds
    them per proof), so k proofs over n leaves cost O(n + k·log n·256), not O(k·n)."""

    def __init__(self, hashes: Sequence[bytes]) -> None:
        self._hashes = hashes
        self._cache: dict[tuple[int, int], bytes] = {}

    def _mth(self, lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return self._hashes[lo]
        key = (lo, hi)
        found = self._cache.get(key)
        if found is not None:
            return found
        if hi - lo < CACHE_MIN_LEAVES:
            return merkle.root_from_leaf_hashes(self._hashes[lo:hi])
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        root = merkle.node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))
        self._cache[key] = root
        return root

    def path(self, index: int) -> list[bytes]:
        path: list[bytes] = []
        lo, hi = 0, len(self._hashes)
        while hi - lo > 1:
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            if index < lo + k:
                path.append(self._mth(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._mth(lo, lo + k))
                lo = lo + k
        path.reverse()
        return path


class TlogEvidence:
    """Implements ``authz.evidence.CertificateEvidence`` over the transparency log."""

    def collect(self, session: Session, events: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
        head = session.scalars(select(TlogTreeHead).order_by(TlogTreeHead.tree_size.desc()).limit(1)).first()
        serials = sorted({serial for _seq, _kind, serial in events})
        by_key: dict[tuple[str, str], list[TlogEntry]] = {}
        for i in range(0, len(serials), 500):
            for entry in session.scalars(
                select(TlogEntry).where(TlogEntry.serial.in_(serials[i : i + 500])).order_by(TlogEntry.idx)
            ):
                by_key.setdefault((entry.serial, entry.kind), []).append(entry)
        proofs: _Proofs | None = None
        leaves: list[dict[str, Any]] = []
        used_head = False
        for seq, kind, serial in events:
            for entry in by_key.get((serial, kind), []):
                item: dict[str, Any] = {
                    "seq": seq,
                    "kind": kind,
                    "serial": serial,
                    "leaf_index": entry.idx,
                    "leaf": entry.leaf.decode("utf-8"),
                    "leaf_hash": entry.leaf_hash,
                    "tree_size": None,
                    "audit_path": [],
                }
                if head is not None and entry.idx < head.tree_size:
                    if proofs is None:
                        proofs = _Proofs(
                            [
                                bytes.fromhex(h)
                                for h in session.scalars(
                                    select(TlogEntry.leaf_hash)
                                    .where(TlogEntry.idx < head.tree_size)
                                    .order_by(TlogEntry.idx)
                                )
                            ]
                        )
                    item["tree_size"] = head.tree_size
                    item["audit_path"] = [p.hex() for p in proofs.path(entry.idx)]
                    used_head = True
                leaves.append(item)
        heads = []
        if used_head and head is not None:
            heads.append(
                {
                    "tree_size": head.tree_size,
                    "root_hash": head.root_hash,
                    "timestamp": audit.timestamp(head.timestamp),
                    "key_handle": head.key_handle,
                    "public_key": base64.b64encode(head.public_key_der).decode("ascii"),
                    "signature": base64.b64encode(head.signature).decode("ascii"),
                }
            )
        return {"leaves": leaves, "tree_heads": heads}


def verify_transparency(document: Mapping[str, Any]) -> tuple[int, list[str], list[str]]:
    """Offline check of a bundle's ``transparency`` section: every tree head's signature,
    every leaf's hash and content (kind and serial of its audit entry) and its inclusion
    proof to the tree head's root. Returns (proofs checked, problems, notes)."""
    section = document.get("transparency") or {}
    problems: list[str] = []
    notes: list[str] = []
    roots: dict[int, bytes] = {}
    try:
        for th in section.get("tree_heads", []):
            size = int(th["tree_size"])
            stamp = _dt.datetime.strptime(th["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.UTC)
            data = sth_signed_data(size, th["root_hash"], stamp)
            public = base64.b64decode(th["public_key"], validate=True)
            if not statements.verify_statement(public, data, base64.b64decode(th["signature"], validate=True)):
                problems.append(f"tree head {size}: the signature is not valid")
                continue
            roots[size] = bytes.fromhex(th["root_hash"])
        entries = {int(e["seq"]): e for e in document.get("entries", [])}
        proofs = 0
        for leaf in section.get("leaves", []):
            seq, index = int(leaf["seq"]), int(leaf["leaf_index"])
            where = f"transparency leaf {index} (audit entry {seq})"
            text = str(leaf["leaf"]).encode("utf-8")
            digest = merkle.leaf_hash(text)
            if digest.hex() != leaf["leaf_hash"]:
                problems.append(f"{where}: the leaf does not match its hash")
                continue
            content = json.loads(text)
            entry = entries.get(seq)
            if entry is None or content.get("serial") != entry["object_id"] or content.get("kind") != leaf["kind"]:
                problems.append(f"{where}: the leaf is not about the certificate of its audit entry")
                continue
            if leaf["tree_size"] is None:
                notes.append(f"{where}: no signed tree head covered it when the bundle was made")
                continue
            size = int(leaf["tree_size"])
            root = roots.get(size)
            if root is None:
                problems.append(f"{where}: the bundle has no valid tree head of size {size}")
                continue
            path = [bytes.fromhex(p) for p in leaf["audit_path"]]
            if not merkle.verify_inclusion(index, size, digest, path, root):
                problems.append(f"{where}: the inclusion proof does not lead to the signed root of tree head {size}")
                continue
            proofs += 1
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        problems.append(f"the transparency section is malformed ({exc})")
        return 0, problems, notes
    return proofs, problems, notes


# ----- statistics for the auditors' console -----------------------------------------------

PENDING_STATES = (CertState.RESERVED.value, CertState.APPROVED.value)
AGE_BUCKETS: tuple[tuple[str, _dt.timedelta | None], ...] = (
    ("< 1 h", _dt.timedelta(hours=1)),
    ("1–24 h", _dt.timedelta(hours=24)),
    ("1–7 d", _dt.timedelta(days=7)),
    ("> 7 d", None),
)


@dataclass(frozen=True)
class DayCounts:
    group: str  # a prefecture code ("—" for certificates without one)
    days: list[tuple[str, int, int]]  # (YYYY-MM-DD, issued, revoked), oldest first

    @property
    def issued(self) -> int:
        return sum(d[1] for d in self.days)

    @property
    def revoked(self) -> int:
        return sum(d[2] for d in self.days)


class CertificateStats:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @staticmethod
    def _authorise(principal: Principal) -> None:
        if principal.kind is PrincipalKind.SYSTEM or principal.has(Role.SECURITY_AUDITOR) or can_read(principal):
            return
        raise ForbiddenError("your role may not read certificate records", field="role")

    def per_day(self, session: Session, principal: Principal, days: int = 14) -> list[DayCounts]:
        """Issued and revoked (revocations and holds) certificates per prefecture per day (UTC),
        for the last ``days`` days; groups with nothing in them are left out."""
        self._authorise(principal)
        dialect = session.get_bind().dialect.name
        today = self._clock.now().astimezone(_dt.UTC).date()
        start_day = today - _dt.timedelta(days=days - 1)
        start = _dt.datetime.combine(start_day, _dt.time(), tzinfo=_dt.UTC)
        group = CertificateRecord.prefecture_code
        counts: dict[str, dict[str, list[int]]] = {}
        for column, slot in ((CertificateRecord.issued_at, 0), (CertificateRecord.revoked_at, 1)):
            day = bucket(column, "day", dialect)
            query = select(group, day, func.count()).where(column >= start).group_by(group, day)
            for name, label, count in session.execute(query):
                key = str(name) if name is not None else "—"
                counts.setdefault(key, {}).setdefault(str(label), [0, 0])[slot] += int(count)
        labels = [(start_day + _dt.timedelta(days=i)).isoformat() for i in range(days)]
        return [
            DayCounts(name, [(label, *by_day.get(label, [0, 0])) for label in labels])  # type: ignore[misc]
            for name, by_day in sorted(counts.items())
        ]

    def pending_by_age(self, session: Session, principal: Principal) -> list[tuple[str, int]]:
        """Certificate requests still waiting (reserved or approved, not issued) by age."""
        self._authorise(principal)
        now = self._clock.now()
        out: list[tuple[str, int]] = []
        newer_than: _dt.timedelta | None = _dt.timedelta(0)
        for label, limit in AGE_BUCKETS:
            query = select(func.count()).where(CertificateRecord.state.in_(PENDING_STATES))
            assert newer_than is not None
            query = query.where(CertificateRecord.created_at <= now - newer_than)
            if limit is not None:
                query = query.where(CertificateRecord.created_at > now - limit)
            out.append((label, int(session.scalar(query) or 0)))
            newer_than = limit
        return out


__all__ = ["CertificateStats", "DayCounts", "TlogEvidence", "verify_transparency"]
