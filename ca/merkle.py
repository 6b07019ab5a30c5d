"""Merkle tree hashing, proofs and proof verification exactly as RFC 9162 §2.1.

- leaf hash ``SHA-256(0x00 || d)``, interior node ``SHA-256(0x01 || left || right)``,
  the empty tree's hash ``SHA-256("")``; MTH splits ``n`` leaves at ``k``, the largest
  power of two smaller than ``n`` (§2.1.1);
- inclusion proof PATH(m, D[n]) (§2.1.3.1) and its verification (§2.1.3.2);
- consistency proof PROOF(m, D[n]) (§2.1.4.1) and its verification (§2.1.4.2).

Why not a library: the one maintained Python candidate, ``pymerkle`` (7.0), hashes
with the same prefixes but serialises proofs in its own format (a path that includes
the leaf, plus "rule" and "subset" bit lists) rather than the RFC's audit path and
consistency path, keeps the tree in its own in-memory or SQLite store (our leaves
live in ``tlog_entries`` on SQLite or PostgreSQL), and its README asks for a security
audit before use. These are a few small functions over a list of leaf hashes,
checked against the reference implementation's test vectors (tests/ca/test_merkle.py).

Cost: the root of ``n`` leaf hashes is O(n) with an O(log n) stack, streaming (leaf
hashes may come from a database cursor); a proof hashes each leaf of the range once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n`` > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """MTH of the leaves whose hashes ``hashes`` yields, in order (O(n), O(log n) memory).

    The stack holds the roots of the perfect subtrees of the leaves seen so far,
    largest first; folding it from the right gives the RFC 9162 tree (smaller
    subtrees hang on the right)."""
    stack: list[bytes] = []
    for count, h in enumerate(hashes, start=1):
        stack.append(h)
        merges = count
        while merges & 1 == 0:  # one merge per trailing zero bit of the new count
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            merges >>= 1
    if not stack:
        return EMPTY_ROOT
    root = stack[-1]
    for left in reversed(stack[:-1]):
        root = node_hash(left, root)
    return root


def roots_at(hashes: Iterable[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """The roots of the trees of the first ``size`` leaves for every size in ``sizes``
    that ``hashes`` reaches, in one O(n) pass (an audit checks every signed tree head)."""
    wanted = set(sizes)
    roots: dict[int, bytes] = {0: EMPTY_ROOT} if 0 in wanted else {}
    stack: list[bytes] = []
    for count, h in enumerate(hashes, start=1):
        stack.append(h)
        merges = count
        while merges & 1 == 0:
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            merges >>= 1
        if count in wanted:
            root = stack[-1]
            for left in reversed(stack[:-1]):
                root = node_hash(left, root)
            roots[count] = root
    return roots


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return hashes[lo]
    return root_from_leaf_hashes(hashes[i] for i in range(lo, hi))


def inclusion_proof(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) for the tree whose leaf hashes are ``hashes``, leaf's sibling first."""
    n = len(hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of size {n}")
    path: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(hashes, lo, lo + k))
            lo = lo + k
    path.reverse()  # built from the root down; the RFC lists it from the leaf up
    return path


def consistency_proof(first: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(first, D[n]) for the tree whose leaf hashes are ``hashes`` (0 < first <= n)."""
    n = len(hashes)
    if not 0 < first <= n:
        raise ValueError(f"first tree size {first} must be in 1..{n}")
    siblings: list[bytes] = []  # from the root down
    terminal: list[bytes] = []
    lo, hi, m, complete = 0, n, first, True
    while True:
        size = hi - lo
        if m == size:
            if not complete:
                terminal.append(_mth(hashes, lo, hi))
            break
        k = _split(size)
        if m <= k:
            siblings.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            siblings.append(_mth(hashes, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    # SUBPROOF puts the recursive part before the sibling: the deepest node comes first
    return terminal + siblings[::-1]


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2: the root ``path`` leads to from ``leaf`` at ``index``; None if malformed."""
    if not 0 <= index < size or len(leaf) != HASH_SIZE:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0 or len(p) != HASH_SIZE:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    return root_from_inclusion_proof(index, size, leaf, path) == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2, plus the trivial cases: an empty first tree is consistent with
    any tree (empty proof); equal sizes need equal roots and an empty proof."""
    if first < 0 or second < first:
        return False
    if first == 0:
        return not path
    if first == second:
        return not path and first_root == second_root
    if not path or any(len(p) != HASH_SIZE for p in path):
        return False
    nodes = list(path)
    if first & (first - 1) == 0:  # an exact power of two: the first tree is a node of the second
        nodes.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
