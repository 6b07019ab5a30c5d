"""RFC 9162 hashing and proofs against the reference implementation's test vectors
(transparency-dev/merkle proof/verify_test.go, the certificate-transparency test tree)
and property tests on random trees."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca import merkle

LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, path): the reference lists 1-based leaf numbers; these are 0-based
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
HASHES = [merkle.leaf_hash(d) for d in LEAVES]


def _h(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_empty_tree_and_prefixes() -> None:
    assert merkle.root_from_leaf_hashes([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


@pytest.mark.parametrize("size", range(1, 9))
def test_known_roots(size: int) -> None:
    assert merkle.root_from_leaf_hashes(HASHES[:size]).hex() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    assert merkle.inclusion_proof(index, HASHES[:size]) == _h(path)
    root = bytes.fromhex(ROOTS[size - 1])
    assert merkle.verify_inclusion(index, size, HASHES[index], _h(path), root)
    if path:
        bad = _h(path)
        bad[0] = bytes([bad[0][0] ^ 8]) + bad[0][1:]
        assert not merkle.verify_inclusion(index, size, HASHES[index], bad, root)
        assert not merkle.verify_inclusion(index, size, HASHES[index], _h(path)[:-1], root)
        assert not merkle.verify_inclusion(index, size, HASHES[index], [*_h(path), root], root)
        assert not merkle.verify_inclusion(index ^ 2, size, HASHES[index], _h(path), root)
        assert not merkle.verify_inclusion(index, size * 2, HASHES[index], _h(path), root)


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_known_consistency_proofs(first: int, second: int, path: list[str]) -> None:
    assert merkle.consistency_proof(first, HASHES[:second]) == _h(path)
    r1, r2 = bytes.fromhex(ROOTS[first - 1]), bytes.fromhex(ROOTS[second - 1])
    assert merkle.verify_consistency(first, second, r1, r2, _h(path))
    if path:
        assert not merkle.verify_consistency(first, second, r2, r1, _h(path))
        assert not merkle.verify_consistency(first, second, r1, r2, [])
        assert not merkle.verify_consistency(first, second, r1, r2, _h(path)[:-1])
        assert not merkle.verify_consistency(first, second, r1, r2, [*_h(path), r1])
        assert not merkle.verify_consistency(first + 1, second, r1, r2, _h(path))
        bad = _h(path)
        bad[-1] = bytes([bad[-1][0] ^ 16]) + bad[-1][1:]
        assert not merkle.verify_consistency(first, second, r1, r2, bad)


def test_roots_at_every_size_in_one_pass() -> None:
    roots = merkle.roots_at(HASHES, range(0, 10))
    assert roots[0] == merkle.EMPTY_ROOT
    assert [roots[n].hex() for n in range(1, 9)] == ROOTS
    assert 9 not in roots


def test_trivial_consistency_cases() -> None:
    empty = merkle.EMPTY_ROOT
    assert merkle.verify_consistency(0, 5, empty, bytes.fromhex(ROOTS[4]), [])
    assert not merkle.verify_consistency(0, 5, empty, bytes.fromhex(ROOTS[4]), [empty])
    assert not merkle.verify_consistency(2, 1, empty, empty, [])
    assert not merkle.verify_consistency(3, 3, bytes.fromhex(ROOTS[2]), bytes.fromhex(ROOTS[1]), [])


def test_bad_proof_arguments() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_proof(3, HASHES[:3])
    with pytest.raises(ValueError):
        merkle.consistency_proof(0, HASHES[:3])
    assert not merkle.verify_inclusion(0, 0, HASHES[0], [], merkle.EMPTY_ROOT)


def _reference_mth(hashes: list[bytes]) -> bytes:
    """MTH written straight from RFC 9162 §2.1.1 (recursive)."""
    if not hashes:
        return merkle.EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return merkle.node_hash(_reference_mth(hashes[:k]), _reference_mth(hashes[k:]))


# distinct leaves: with two equal leaves a proof for one is also a proof for the other
trees = st.lists(st.binary(max_size=8), min_size=1, max_size=70, unique=True)


@settings(max_examples=150, deadline=None)
@given(trees, st.data())
def test_every_inclusion_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [merkle.leaf_hash(x) for x in leaves]
    root = merkle.root_from_leaf_hashes(hashes)
    assert root == _reference_mth(hashes)
    index = data.draw(st.integers(0, len(hashes) - 1))
    path = merkle.inclusion_proof(index, hashes)
    assert merkle.verify_inclusion(index, len(hashes), hashes[index], path, root)
    if path:  # tampering with any node, the index or the leaf breaks it
        at = data.draw(st.integers(0, len(path) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(path)
        bad[at] = bytes([bad[at][bit // 8] ^ (1 << (bit % 8)) if i == bit // 8 else b for i, b in enumerate(bad[at])])
        assert not merkle.verify_inclusion(index, len(hashes), hashes[index], bad, root)
        other = data.draw(st.integers(0, len(hashes) - 1).filter(lambda i: i != index))
        assert not merkle.verify_inclusion(other, len(hashes), hashes[index], path, root)
    assert not merkle.verify_inclusion(index, len(hashes), merkle.leaf_hash(b"not a leaf"), path, root)


@settings(max_examples=150, deadline=None)
@given(trees, st.data())
def test_every_consistency_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [merkle.leaf_hash(x) for x in leaves]
    second = len(hashes)
    first = data.draw(st.integers(1, second))
    r1 = merkle.root_from_leaf_hashes(hashes[:first])
    r2 = merkle.root_from_leaf_hashes(hashes)
    proof = merkle.consistency_proof(first, hashes)
    assert merkle.verify_consistency(first, second, r1, r2, proof)
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[at] = bytes([bad[at][0] ^ 1]) + bad[at][1:]
        assert not merkle.verify_consistency(first, second, r1, r2, bad)
        forged = merkle.root_from_leaf_hashes([*hashes[: first - 1], merkle.leaf_hash(b"forged")])
        assert not merkle.verify_consistency(first, second, forged, r2, proof)
