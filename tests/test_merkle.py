"""Merkle tree properties: axon/merkle.py against RFC 6962 itself.

The oracle is a naive reference written straight from RFC 6962 section 2.1
(recursive MTH, PATH, PROOF/SUBPROOF), plus the Certificate Transparency test
vectors for its 8-leaf tree. Against it: roots, audit paths and consistency
proofs built from the stored hash array agree for every size; the array is
append-only and independent of how appends were batched; verifiers accept
every valid proof and reject any flipped bit, wrong index or size, and any
truncated or extended proof.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    TreeBuilder,
    append_leaves,
    consistency_indices,
    consistency_proof,
    frontier_indices,
    inclusion_indices,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_frontier,
    stored_hash_count,
    stored_hash_index,
    verify_consistency,
    verify_inclusion,
)

fast = settings(max_examples=60, deadline=None)

# The reference: RFC 6962 section 2.1, on leaf data, sharing no code with axon.merkle.


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n])."""
    n = len(d)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + d[0])
    k = ref_split(n)
    return _sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    n = len(d)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n])."""
    return ref_subproof(m, d, True)


# Test data: distinct events, so no two leaves (or subtrees) share a hash.

MAX_SIZE = 1100
EVENTS = [b'{"seq":%d,"kind":"log","data":{}}' % i for i in range(MAX_SIZE)]
LEAVES = [_sha256(b"\x00" + e) for e in EVENTS]


@functools.cache
def ref_root(size: int) -> bytes:
    return ref_mth(EVENTS[:size])


@functools.cache
def stored_array() -> list[bytes]:
    """The stored hash array of all MAX_SIZE events, appended one at a time."""
    array: list[bytes] = []
    frontier: list[bytes] = []
    for size, leaf in enumerate(LEAVES):
        new, frontier = append_leaves(size, frontier, [leaf])
        array += new
    return array


def read(indices: Sequence[int]) -> list[bytes]:
    array = stored_array()
    return [array[i] for i in indices]


def flip(h: bytes, bit: int) -> bytes:
    """``h`` with one bit inverted."""
    out = bytearray(h)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


sizes = st.integers(1, 300)
bits = st.integers(0, HASH_SIZE * 8 - 1)
random_hashes = st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE)


@st.composite
def leaf_in_tree(draw: st.DrawFn, min_size: int = 1) -> tuple[int, int]:
    size = draw(st.integers(min_size, 300))
    return draw(st.integers(0, size - 1)), size


@st.composite
def size_pairs(draw: st.DrawFn) -> tuple[int, int]:
    """0 < old < new: pairs with a non-empty consistency proof."""
    new = draw(st.integers(2, 300))
    return draw(st.integers(1, new - 1)), new


def proof_for(index: int, size: int) -> list[bytes]:
    return inclusion_proof(index, size, read(inclusion_indices(index, size)))


def cproof_for(old: int, new: int) -> list[bytes]:
    return consistency_proof(old, new, read(consistency_indices(old, new)))


# Known answers: the Certificate Transparency vectors (transparency-dev/merkle testonly).

CT_DATA = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
"""Root of the tree of the first ``i`` CT leaves, for i = 0..8."""

_CT_NODES = {
    (0, 0): "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    (0, 1): "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    (0, 2): "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    (0, 3): "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    (0, 4): "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    (0, 5): "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    (0, 6): "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    (0, 7): "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    (1, 0): "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    (1, 1): "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    (1, 2): "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    (1, 3): "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    (2, 0): "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    (2, 1): "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    (3, 0): "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
"""Hash of the perfect subtree (level, n) of the 8 CT leaves."""

CT_NODE = {key: bytes.fromhex(h) for key, h in _CT_NODES.items()}

# (level, n) of each stored hash of 8 leaves, in storage order (the module docstring's table).
LAYOUT_8 = [
    (0, 0), (0, 1), (1, 0),
    (0, 2), (0, 3), (1, 1), (2, 0),
    (0, 4), (0, 5), (1, 2),
    (0, 6), (0, 7), (1, 3), (2, 1), (3, 0),
]  # fmt: skip


def ct_array(size: int) -> list[bytes]:
    new, _ = append_leaves(0, [], [leaf_hash(d) for d in CT_DATA[:size]])
    return new


def test_ct_roots() -> None:
    """Every prefix of the CT leaves has its published root, by each way of computing it."""
    array = ct_array(8)
    for size in range(9):
        frontier = [array[i] for i in frontier_indices(size)]
        assert root_from_frontier(frontier) == CT_ROOTS[size]
        builder = TreeBuilder()
        for d in CT_DATA[:size]:
            builder.add(d)
        assert builder.root() == CT_ROOTS[size]
        assert ref_mth(CT_DATA[:size]) == CT_ROOTS[size]


def test_ct_stored_array_layout() -> None:
    """The stored array of the 8 CT leaves holds every perfect subtree once, in completion order."""
    assert ct_array(8) == [CT_NODE[key] for key in LAYOUT_8]
    for index, (level, n) in enumerate(LAYOUT_8):
        assert stored_hash_index(level, n) == index
    assert [stored_hash_count(s) for s in range(9)] == [0, 1, 3, 4, 7, 8, 10, 11, 15]


@pytest.mark.parametrize(
    ("index", "size", "expected"),
    [
        (0, 1, []),
        (0, 8, [CT_NODE[0, 1], CT_NODE[1, 1], CT_NODE[2, 1]]),
        (5, 8, [CT_NODE[0, 4], CT_NODE[1, 3], CT_NODE[2, 0]]),
        (2, 3, [CT_NODE[1, 0]]),
        (1, 5, [CT_NODE[0, 0], CT_NODE[1, 1], CT_NODE[0, 4]]),
    ],
)
def test_ct_inclusion_proofs(index: int, size: int, expected: list[bytes]) -> None:
    """The CT audit paths come out of the stored array and verify."""
    array = ct_array(size)
    proof = inclusion_proof(index, size, [array[i] for i in inclusion_indices(index, size)])
    assert proof == expected
    verify_inclusion(leaf_hash(CT_DATA[index]), index, size, proof, CT_ROOTS[size])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (1, 1, []),
        (1, 8, [CT_NODE[0, 1], CT_NODE[1, 1], CT_NODE[2, 1]]),
        (6, 8, [CT_NODE[1, 2], CT_NODE[1, 3], CT_NODE[2, 0]]),
        (2, 5, [CT_NODE[1, 1], CT_NODE[0, 4]]),
        (6, 7, [CT_NODE[1, 2], CT_NODE[0, 6], CT_NODE[2, 0]]),
    ],
)
def test_ct_consistency_proofs(old: int, new: int, expected: list[bytes]) -> None:
    """The CT consistency proofs come out of the stored array and verify."""
    array = ct_array(new)
    proof = consistency_proof(old, new, [array[i] for i in consistency_indices(old, new)])
    assert proof == expected
    verify_consistency(old, new, CT_ROOTS[old], CT_ROOTS[new], proof)


def test_leaf_and_node_hash_prefixes() -> None:
    """Leaves and nodes are SHA-256 with the 0x00 and 0x01 prefixes; the empty tree hashes ""."""
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == CT_ROOTS[0]
    assert leaf_hash(b"") == CT_ROOTS[1]
    assert node_hash(CT_NODE[0, 0], CT_NODE[0, 1]) == CT_ROOTS[2]


@fast
@given(st.binary(max_size=300), random_hashes, random_hashes)
def test_hash_functions(data: bytes, left: bytes, right: bytes) -> None:
    """leaf_hash and node_hash are exactly the RFC 6962 formulas on any input."""
    assert leaf_hash(data) == _sha256(b"\x00" + data)
    assert node_hash(left, right) == _sha256(b"\x01" + left + right)


# The stored array.


def test_stored_array_holds_every_perfect_subtree_once() -> None:
    """For every size, the array has stored_hash_count entries, each a perfect subtree's MTH."""
    array = stored_array()
    assert len(array) == stored_hash_count(MAX_SIZE)
    seen = set()
    for level in range(MAX_SIZE.bit_length()):
        width = 1 << level
        for n in range(MAX_SIZE // width):
            index = stored_hash_index(level, n)
            seen.add(index)
            # The subtree is stored by the time its last leaf is in, and not before.
            assert stored_hash_count((n + 1) * width - 1) <= index
            assert index < stored_hash_count((n + 1) * width)
            if level <= 3 or n < 4:
                assert array[index] == ref_mth(EVENTS[n * width : (n + 1) * width])
    assert seen == set(range(len(array)))


def test_stored_array_grows_only_at_the_end() -> None:
    """Appending to a tree of any size leaves the array of that size as a prefix."""
    full = stored_array()
    array: list[bytes] = []
    frontier: list[bytes] = []
    for size in range(300):
        assert array == full[: stored_hash_count(size)]
        assert frontier == read(frontier_indices(size))
        assert root_from_frontier(frontier) == ref_root(size)
        new, frontier = append_leaves(size, frontier, [LEAVES[size]])
        assert len(new) == stored_hash_count(size + 1) - stored_hash_count(size)
        array += new


@fast
@given(st.lists(st.integers(0, 40), max_size=16))
def test_batched_appends_give_the_same_array(batches: list[int]) -> None:
    """Appending in any batch split yields the same array, counts, frontiers and roots."""
    array: list[bytes] = []
    frontier: list[bytes] = []
    size = 0
    for k in batches:
        new, frontier = append_leaves(size, frontier, LEAVES[size : size + k])
        assert len(new) == stored_hash_count(size + k) - stored_hash_count(size)
        array += new
        size += k
        assert frontier == [array[i] for i in frontier_indices(size)]
        assert root_from_frontier(frontier) == ref_root(size)
    assert array == stored_array()[: stored_hash_count(size)]


@fast
@given(sizes)
def test_frontier_is_one_perfect_subtree_per_bit(size: int) -> None:
    """The frontier has one stored index per 1 bit of the size, largest subtree first."""
    indices = frontier_indices(size)
    assert len(indices) == size.bit_count()
    start = 0
    expected = []
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            expected.append(stored_hash_index(level, start >> level))
            start += 1 << level
    assert indices == expected


# Proofs against the reference.


def _check_inclusion(index: int, size: int) -> None:
    indices = inclusion_indices(index, size)
    assert len(set(indices)) == len(indices)
    assert all(i < stored_hash_count(size) for i in indices)
    proof = proof_for(index, size)
    assert proof == ref_path(index, EVENTS[:size])
    verify_inclusion(LEAVES[index], index, size, proof, ref_root(size))


def _check_consistency(old: int, new: int) -> None:
    indices = consistency_indices(old, new)
    assert len(set(indices)) == len(indices)
    assert all(i < stored_hash_count(new) for i in indices)
    proof = cproof_for(old, new)
    assert proof == ref_proof(old, EVENTS[:new])
    verify_consistency(old, new, ref_root(old), ref_root(new), proof)


@fast
@given(leaf_in_tree())
def test_inclusion_proofs_match_reference(leaf: tuple[int, int]) -> None:
    """Audit paths built from stored hashes equal RFC 6962 PATH and verify."""
    _check_inclusion(*leaf)


@fast
@given(size_pairs())
def test_consistency_proofs_match_reference(pair: tuple[int, int]) -> None:
    """Consistency proofs built from stored hashes equal RFC 6962 PROOF and verify."""
    _check_consistency(*pair)


@pytest.mark.parametrize("size", [511, 512, 513, 1000, 1024, 1025, MAX_SIZE])
def test_proofs_in_bigger_trees(size: int) -> None:
    """Proofs also match the reference around and beyond larger powers of two."""
    for other in sorted({1, 2, 3, 255, 256, 257, 511, 512, size // 2, size - 1, size}):
        if other < size:
            _check_inclusion(other, size)
        if other <= size:
            _check_consistency(other, size)


def test_equal_sizes_have_empty_consistency_proof() -> None:
    """A tree is consistent with itself through the empty proof."""
    for size in [1, 2, 7, 8, 300]:
        assert consistency_indices(size, size) == []
        assert consistency_proof(size, size, []) == []
        verify_consistency(size, size, ref_root(size), ref_root(size), [])


# Verifiers reject tampering.


def test_every_byte_of_small_proofs_matters() -> None:
    """For trees up to 16 leaves, a flipped bit in any byte of leaf, proof or root is caught."""
    for size in range(1, 17):
        root = ref_root(size)
        for index in range(size):
            proof = proof_for(index, size)
            for bit in range(0, HASH_SIZE * 8, 9):
                with pytest.raises(ProofError):
                    verify_inclusion(flip(LEAVES[index], bit), index, size, proof, root)
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[index], index, size, proof, flip(root, bit))
                for j in range(len(proof)):
                    bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
                    with pytest.raises(ProofError):
                        verify_inclusion(LEAVES[index], index, size, bad, root)
        for old in range(1, size):
            proof = cproof_for(old, size)
            for bit in range(0, HASH_SIZE * 8, 9):
                with pytest.raises(ProofError):
                    verify_consistency(old, size, flip(ref_root(old), bit), root, proof)
                with pytest.raises(ProofError):
                    verify_consistency(old, size, ref_root(old), flip(root, bit), proof)
                for j in range(len(proof)):
                    bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
                    with pytest.raises(ProofError):
                        verify_consistency(old, size, ref_root(old), root, bad)


@fast
@given(leaf_in_tree(), bits, st.data())
def test_inclusion_rejects_flipped_bit(
    leaf: tuple[int, int], bit: int, data: st.DataObject
) -> None:
    """Any single flipped bit in the leaf, the root or any proof hash fails verification."""
    index, size = leaf
    proof = proof_for(index, size)
    leaf_h, root = LEAVES[index], ref_root(size)
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    if target == -2:
        leaf_h = flip(leaf_h, bit)
    elif target == -1:
        root = flip(root, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_h, index, size, proof, root)


@fast
@given(leaf_in_tree(min_size=2), st.data())
def test_inclusion_rejects_wrong_index(leaf: tuple[int, int], data: st.DataObject) -> None:
    """A proof does not verify for another leaf index, in the tree or beyond it."""
    index, size = leaf
    other = data.draw(st.integers(0, size + 5).filter(lambda i: i != index), label="other")
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[index], other, size, proof_for(index, size), ref_root(size))


@fast
@given(leaf_in_tree(), st.data())
def test_inclusion_rejects_wrong_size(leaf: tuple[int, int], data: st.DataObject) -> None:
    """A proof does not verify against the (size, root) of another tree that holds the leaf."""
    index, size = leaf
    other = data.draw(st.integers(index + 1, 400).filter(lambda s: s != size), label="other")
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[index], index, other, proof_for(index, size), ref_root(other))


@fast
@given(leaf_in_tree(), random_hashes, st.data())
def test_inclusion_rejects_truncated_or_extended(
    leaf: tuple[int, int], extra: bytes, data: st.DataObject
) -> None:
    """Removing a hash from, or inserting one into, a valid proof fails verification."""
    index, size = leaf
    proof = proof_for(index, size)
    truncate = data.draw(st.booleans(), label="truncate")
    if proof and truncate:
        del proof[data.draw(st.integers(0, len(proof) - 1), label="at")]
    else:
        proof.insert(data.draw(st.integers(0, len(proof)), label="at"), extra)
    with pytest.raises(ProofError, match="must have"):
        verify_inclusion(LEAVES[index], index, size, proof, ref_root(size))


@fast
@given(size_pairs(), bits, st.data())
def test_consistency_rejects_flipped_bit(
    pair: tuple[int, int], bit: int, data: st.DataObject
) -> None:
    """Any single flipped bit in either root or any proof hash fails verification."""
    old, new = pair
    proof = cproof_for(old, new)
    old_root, new_root = ref_root(old), ref_root(new)
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    if target == -2:
        old_root = flip(old_root, bit)
    elif target == -1:
        new_root = flip(new_root, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(ProofError):
        verify_consistency(old, new, old_root, new_root, proof)


@fast
@given(size_pairs(), st.data())
def test_consistency_rejects_wrong_sizes(pair: tuple[int, int], data: st.DataObject) -> None:
    """A proof does not connect the (size, root) pairs of other trees of the same log."""
    old, new = pair
    proof = cproof_for(old, new)
    if data.draw(st.booleans(), label="change old"):
        old = data.draw(st.integers(0, new).filter(lambda s: s != old), label="old")
    else:
        new = data.draw(st.integers(old, 400).filter(lambda s: s != new), label="new")
    with pytest.raises(ProofError):
        verify_consistency(old, new, ref_root(old), ref_root(new), proof)


@fast
@given(size_pairs(), random_hashes, st.data())
def test_consistency_rejects_truncated_or_extended(
    pair: tuple[int, int], extra: bytes, data: st.DataObject
) -> None:
    """Removing a hash from, or inserting one into, a valid proof fails verification."""
    old, new = pair
    proof = cproof_for(old, new)
    if data.draw(st.booleans(), label="truncate"):
        del proof[data.draw(st.integers(0, len(proof) - 1), label="at")]
    else:
        proof.insert(data.draw(st.integers(0, len(proof)), label="at"), extra)
    with pytest.raises(ProofError, match="must have"):
        verify_consistency(old, new, ref_root(old), ref_root(new), proof)


@fast
@given(size_pairs())
def test_consistency_rejects_swapped_roots(pair: tuple[int, int]) -> None:
    """The old and new roots are not interchangeable."""
    old, new = pair
    with pytest.raises(ProofError):
        verify_consistency(old, new, ref_root(new), ref_root(old), cproof_for(old, new))


def test_consistency_degenerate_cases() -> None:
    """Equal sizes need equal roots and no proof; size 0 needs the empty root and no proof."""
    root5, root6 = ref_root(5), ref_root(6)
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 6, EMPTY_ROOT, root6, [])
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(5, 5, root5, root6, [])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(5, 5, root5, root5, [root5])
    with pytest.raises(ProofError, match="not the root of the empty tree"):
        verify_consistency(0, 6, root5, root6, [])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(0, 6, EMPTY_ROOT, root6, [root6])
    with pytest.raises(ProofError, match="old <= new"):
        verify_consistency(6, 5, root6, root5, cproof_for(5, 6))
    with pytest.raises(ProofError, match="must have 3 hashes, got 0"):
        verify_consistency(5, 6, root5, root6, [])


def test_verifiers_reject_malformed_input() -> None:
    """Wrong-length hashes and impossible indices are ProofErrors saying what is wrong."""
    proof = proof_for(5, 8)
    root = ref_root(8)
    assert issubclass(ProofError, ValueError)
    with pytest.raises(ProofError, match="leaf index 8 is not in a tree of size 8"):
        verify_inclusion(LEAVES[5], 8, 8, proof, root)
    with pytest.raises(ProofError, match="leaf index -1"):
        verify_inclusion(LEAVES[5], -1, 8, proof, root)
    with pytest.raises(ProofError, match="size 0"):
        verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match=r"proof\[1\] is 31 bytes"):
        verify_inclusion(LEAVES[5], 5, 8, [proof[0], proof[1][:31], proof[2]], root)
    with pytest.raises(ProofError, match="leaf hash is 33 bytes"):
        verify_inclusion(LEAVES[5] + b"\x00", 5, 8, proof, root)
    with pytest.raises(ProofError, match="root is 0 bytes"):
        verify_inclusion(LEAVES[5], 5, 8, proof, b"")
    with pytest.raises(ProofError, match="leads to root"):
        verify_inclusion(LEAVES[4], 5, 8, proof, root)
    cproof = cproof_for(5, 8)
    with pytest.raises(ProofError, match="old root is 31 bytes"):
        verify_consistency(5, 8, ref_root(5)[:31], root, cproof)
    with pytest.raises(ProofError, match=r"proof\[0\] is 0 bytes"):
        verify_consistency(5, 8, ref_root(5), root, [b"", *cproof[1:]])


# Argument validation of the generators.


def test_generators_reject_bad_arguments() -> None:
    """Out-of-range indices and sizes, wrong hash counts and lengths are ValueErrors."""
    with pytest.raises(ValueError, match="leaf index 5 is not in a tree of size 5"):
        inclusion_indices(5, 5)
    with pytest.raises(ValueError, match="leaf index -1"):
        inclusion_indices(-1, 5)
    with pytest.raises(ValueError, match="size 0"):
        inclusion_proof(0, 0, [])
    with pytest.raises(ValueError, match="expected 3 stored hashes, got 2"):
        inclusion_proof(1, 5, read(inclusion_indices(1, 5))[:2])
    with pytest.raises(ValueError, match=r"hashes\[0\] is 3 bytes"):
        inclusion_proof(1, 5, [b"abc", *read(inclusion_indices(1, 5))[1:]])
    with pytest.raises(ValueError, match="0 < old <= new, got old 0"):
        consistency_indices(0, 5)
    with pytest.raises(ValueError, match="got old 6, new 5"):
        consistency_proof(6, 5, [])
    with pytest.raises(ValueError, match="expected 2 stored hashes, got 3"):
        consistency_proof(2, 5, [*read(consistency_indices(2, 5)), LEAVES[0]])
    with pytest.raises(ValueError, match="tree size must be >= 0"):
        stored_hash_count(-1)
    with pytest.raises(ValueError, match="tree size must be >= 0"):
        frontier_indices(-1)
    with pytest.raises(ValueError, match="level and subtree number"):
        stored_hash_index(-1, 0)
    with pytest.raises(ValueError, match=r"frontier\[0\] is 31 bytes"):
        root_from_frontier([LEAVES[0][:31]])
    assert root_from_frontier([]) == EMPTY_ROOT


def test_append_rejects_bad_frontier_or_leaf() -> None:
    """append_leaves checks the frontier's shape and every leaf hash's length."""
    frontier = read(frontier_indices(5))
    with pytest.raises(ValueError, match="size 5 has a frontier of 2 hashes, got 1"):
        append_leaves(5, frontier[:1], [LEAVES[5]])
    with pytest.raises(ValueError, match=r"frontier\[1\] is 0 bytes"):
        append_leaves(5, [frontier[0], b""], [LEAVES[5]])
    with pytest.raises(ValueError, match="leaf hash 1 is 5 bytes"):
        append_leaves(5, frontier, [LEAVES[5], b"event"])
    with pytest.raises(ValueError, match="tree size must be >= 0"):
        append_leaves(-1, [], [])
    assert append_leaves(5, frontier, []) == ([], frontier)


# TreeBuilder.


@fast
@given(st.lists(st.binary(max_size=40), max_size=70))
def test_tree_builder_matches_reference(events: list[bytes]) -> None:
    """After every leaf, by data or by hash, the builder's root is the reference MTH."""
    by_data, by_hash = TreeBuilder(), TreeBuilder()
    assert by_data.root() == EMPTY_ROOT
    for i, event in enumerate(events):
        by_data.add(event)
        by_hash.add_hash(leaf_hash(event))
        assert by_data.size == by_hash.size == i + 1
        assert by_data.root() == by_hash.root() == ref_mth(events[: i + 1])


def test_tree_builder_agrees_with_stored_array() -> None:
    """Streaming all events gives the root folded from the stored frontier."""
    builder = TreeBuilder()
    for event in EVENTS:
        builder.add(event)
    assert builder.size == MAX_SIZE
    assert builder.root() == root_from_frontier(read(frontier_indices(MAX_SIZE)))
    assert builder.root() == ref_root(MAX_SIZE)


def test_tree_builder_rejects_bad_leaf_hash() -> None:
    """add_hash takes only HASH_SIZE-byte hashes and leaves the tree unchanged otherwise."""
    builder = TreeBuilder()
    with pytest.raises(ValueError, match="leaf hash is 31 bytes"):
        builder.add_hash(LEAVES[0][:31])
    assert builder.size == 0
    assert builder.root() == EMPTY_ROOT
