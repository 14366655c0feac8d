"""RFC 6962 Merkle trees over a task's event log, stored as an append-only hash array.

The hash chain (``axon.chain``) proves that a log was not altered, but only to
someone who reads all of it. A Merkle tree over the same event bytes adds the
two proofs a transparency log offers: that one event is in the log (an
*inclusion* proof, O(log n) hashes) and that a later log extends an earlier
one (a *consistency* proof). Hashing is RFC 6962's: a leaf is
``SHA-256(0x00 || event bytes)``, a node ``SHA-256(0x01 || left || right)``,
the empty tree ``SHA-256("")``, and a tree of ``n`` leaves splits at the
largest power of two below ``n``. Proofs come out in the order RFC 6962 and
C2SP tlog-proof files use, and are checked with the algorithms of RFC 9162.

Storage: every *perfect* subtree (``2**level`` leaves starting at a multiple
of ``2**level``) has its hash stored exactly once, in the order the subtrees
are completed. Appending leaf ``n`` appends its leaf hash, then one node hash
for each trailing 1 bit of ``n`` (the subtrees it completes, lowest first).
For 8 leaves (``la:b`` is the subtree of leaves ``a`` to ``b - 1``)::

    index  0  1  2     3  4  5     6      7  8  9     10 11 12     13     14
    hash   l0 l1 l0:2  l2 l3 l2:4  l0:4   l4 l5 l4:6  l6 l7 l6:8   l4:8   l0:8

The array only ever grows at its end, so it can live in a Redis string that a
Lua script appends to, and in archive files that are concatenated. Any hash of
a tree of any past size, perfect or not, is a fold of a few stored hashes.

Nothing here does I/O. Callers read storage in batches, so every query has two
phases: ``*_indices`` says which stored hashes are needed, and the function of
the same name computes the result from the hashes read at those indices.
Producing a tree head is ``frontier_indices`` then ``root_from_frontier``;
appending needs only the previous frontier (``append_leaves``), no reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE: int = 32
"""Length in bytes of every hash: leaves, nodes, roots."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""Root of the tree with no leaves (RFC 6962: the hash of the empty string)."""

# Hashers primed with the RFC 6962 domain-separation prefix; ``.copy()`` of one
# is cheaper than building a new hasher and avoids concatenating the input.
_LEAF_HASHER = hashlib.sha256(b"\x00")
_NODE_HASHER = hashlib.sha256(b"\x01")


class ProofError(ValueError):
    """Raised when a proof does not verify; the message says which check failed."""


def leaf_hash(data: bytes) -> bytes:
    """Hash one leaf: ``SHA-256(0x00 || data)``, where ``data`` is the event bytes."""
    h = _LEAF_HASHER.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash an interior node: ``SHA-256(0x01 || left || right)``.

    Both children must be ``HASH_SIZE`` bytes; this is not checked here, on the
    hot path, but at every public boundary that takes hashes from outside.
    """
    h = _NODE_HASHER.copy()
    h.update(left)
    h.update(right)
    return h.digest()


# Index arithmetic of the stored hash array.


def stored_hash_count(size: int) -> int:
    """Length of the stored hash array of a tree of ``size`` leaves.

    Leaf ``j`` adds ``1 + (trailing 1 bits of j)`` hashes; summed over
    ``j < size`` that is ``2 * size - popcount(size)``.
    """
    _check_size(size)
    return 2 * size - size.bit_count()


def stored_hash_index(level: int, n: int) -> int:
    """Index in the stored array of the perfect subtree at ``level`` numbered ``n``.

    That subtree covers leaves ``n * 2**level`` to ``(n + 1) * 2**level - 1``.
    It is stored when its last leaf ``m`` is appended: after the
    ``stored_hash_count(m)`` hashes before that leaf, after the leaf hash and
    the ``level - 1`` smaller subtrees that leaf completes first.
    """
    if level < 0 or n < 0:
        raise ValueError(f"level and subtree number must be >= 0, got level {level}, n {n}")
    last = ((n + 1) << level) - 1
    return 2 * last - last.bit_count() + level


def frontier_indices(size: int) -> list[int]:
    """Stored indices of the perfect subtrees that make up a tree of ``size`` leaves.

    One per 1 bit of ``size``, largest (leftmost) first; ``root_from_frontier``
    folds their hashes into the root, ``append_leaves`` extends them.
    """
    _check_size(size)
    return _range_indices(0, size)


def root_from_frontier(frontier: Sequence[bytes]) -> bytes:
    """RFC 6962 root (MTH) of a tree from the hashes at ``frontier_indices(size)``.

    Raises:
        ValueError: a hash is not ``HASH_SIZE`` bytes.
    """
    _check_hashes("frontier", frontier)
    if not frontier:
        return EMPTY_ROOT
    return _fold(frontier)


def append_leaves(
    size: int, frontier: Sequence[bytes], leaf_hashes: Sequence[bytes]
) -> tuple[list[bytes], list[bytes]]:
    """Append leaves to a tree of ``size`` leaves whose frontier hashes are known.

    Args:
        size: number of leaves already in the tree.
        frontier: the hashes at ``frontier_indices(size)``, in that order.
        leaf_hashes: the ``leaf_hash`` of each new leaf, in log order.

    Returns:
        The hashes to append to the stored array, in order (exactly
        ``stored_hash_count(size + k) - stored_hash_count(size)`` of them for
        ``k`` leaves), and the new frontier, for the tree of ``size + k`` leaves.

    Raises:
        ValueError: ``frontier`` does not have one hash per 1 bit of ``size``,
            or a hash is not ``HASH_SIZE`` bytes.
    """
    _check_size(size)
    if len(frontier) != size.bit_count():
        raise ValueError(
            f"a tree of size {size} has a frontier of {size.bit_count()} hashes, "
            f"got {len(frontier)}"
        )
    _check_hashes("frontier", frontier)
    stack = list(frontier)
    out: list[bytes] = []
    emit = out.append
    push = stack.append
    pop = stack.pop
    copy = _NODE_HASHER.copy
    n = size
    for h in leaf_hashes:
        if len(h) != HASH_SIZE:
            raise ValueError(
                f"leaf hash {n - size} is {len(h)} bytes, expected {HASH_SIZE}; nothing appended"
            )
        emit(h)
        # Leaf n completes one perfect subtree per trailing 1 bit of n.
        m = n
        while m & 1:
            node = copy()
            node.update(pop())
            node.update(h)
            h = node.digest()
            emit(h)
            m >>= 1
        push(h)
        n += 1
    return out, stack


# Inclusion proofs.


def inclusion_indices(index: int, size: int) -> list[int]:
    """Stored indices needed for the audit path of leaf ``index`` in a tree of ``size``.

    Ordered as the path is (leaf's sibling first); an element that is not a
    perfect subtree contributes the indices of the perfect subtrees composing it.
    No index appears twice.
    """
    return [i for lo, hi in _inclusion_ranges(index, size) for i in _range_indices(lo, hi)]


def inclusion_proof(index: int, size: int, hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 audit path ``PATH(index, D[size])``: leaf's sibling first, root's child last.

    Args:
        index: 0-based leaf index, ``< size``.
        size: tree size.
        hashes: the stored hashes at ``inclusion_indices(index, size)``, same order.

    Raises:
        ValueError: bad index or size, or ``hashes`` has the wrong count or length.
    """
    return _fold_ranges(_inclusion_ranges(index, size), hashes)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    The algorithm of RFC 9162 section 2.1.3.2. ``size`` is bound only through
    ``root``: take both from the same trusted source (a signed checkpoint).

    Args:
        leaf: the leaf HASH (``leaf_hash(event bytes)``).
        index: 0-based leaf index.
        size: tree size the proof is for.
        proof: the audit path, as from ``inclusion_proof``.
        root: the trusted root of the tree of ``size`` leaves.

    Raises:
        ProofError: the proof has the wrong shape or does not lead to ``root``.
    """
    _check_proof_hash("leaf hash", leaf)
    _check_proof_hash("root", root)
    for i, p in enumerate(proof):
        _check_proof_hash(f"proof[{i}]", p)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    expected = len(_inclusion_ranges(index, size))
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} must have "
            f"{expected} hashes, got {len(proof)}"
        )
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof is longer than the path of leaf {index}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof is shorter than the path of leaf {index}")
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} leads to root "
            f"{r.hex()}, not {root.hex()}"
        )


# Consistency proofs.


def consistency_indices(old: int, new: int) -> list[int]:
    """Stored indices needed for the consistency proof from size ``old`` to ``new``.

    Ordered as the proof is; ``[]`` when ``old == new``. No index appears twice.
    """
    return [i for lo, hi in _consistency_ranges(old, new) for i in _range_indices(lo, hi)]


def consistency_proof(old: int, new: int, hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 ``PROOF(old, D[new])`` (section 2.1.2); empty when ``old == new``.

    Args:
        old: earlier tree size, ``0 < old <= new``.
        new: later tree size.
        hashes: the stored hashes at ``consistency_indices(old, new)``, same order.

    Raises:
        ValueError: bad sizes, or ``hashes`` has the wrong count or length.
    """
    return _fold_ranges(_consistency_ranges(old, new), hashes)


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new`` leaves with ``new_root`` extends the one of ``old``.

    The algorithm of RFC 9162 section 2.1.4.2, plus its two degenerate cases:
    equal sizes need an empty proof and equal roots; from size 0 the proof is
    empty and ``old_root`` must be ``EMPTY_ROOT``.

    Raises:
        ProofError: the proof has the wrong shape or does not connect the two roots.
    """
    _check_proof_hash("old root", old_root)
    _check_proof_hash("new root", new_root)
    for i, p in enumerate(proof):
        _check_proof_hash(f"proof[{i}]", p)
    if not 0 <= old <= new:
        raise ProofError(f"no consistency between tree sizes {old} and {new}: need 0 <= old <= new")
    if old == new or old == 0:
        if proof:
            raise ProofError(
                f"consistency proof from size {old} to {new} must be empty, got {len(proof)} hashes"
            )
        if old == 0 and old_root != EMPTY_ROOT:
            raise ProofError(f"old root {old_root.hex()} is not the root of the empty tree")
        if old == new and old_root != new_root:
            raise ProofError(
                f"trees of the same size {old} have different roots "
                f"{old_root.hex()} and {new_root.hex()}"
            )
        return
    expected = len(_consistency_ranges(old, new))
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof from size {old} to {new} must have {expected} hashes, "
            f"got {len(proof)}"
        )
    path = list(proof)
    if old & (old - 1) == 0:
        # The old tree is a perfect subtree of the new one: its root is the seed.
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from size {old} to {new} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from size {old} to {new} is too short")
    if fr != old_root:
        raise ProofError(
            f"consistency proof leads to old root {fr.hex()} for size {old}, not {old_root.hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof leads to new root {sr.hex()} for size {new}, not {new_root.hex()}"
        )


# Streaming root computation.


class TreeBuilder:
    """Root of a tree built one leaf at a time, in O(log n) memory.

    For verifiers that read a log (an export, a stream) and compare the root
    with a signed checkpoint. Keeps the frontier: one hash per 1 bit of size.
    """

    __slots__ = ("_frontier", "_size")

    def __init__(self) -> None:
        self._frontier: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves added so far."""
        return self._size

    def add(self, data: bytes) -> None:
        """Add one leaf, given its DATA (the event bytes)."""
        # _push inlined: this runs once per event of a whole export.
        leaf = _LEAF_HASHER.copy()
        leaf.update(data)
        h = leaf.digest()
        frontier = self._frontier
        n = self._size
        while n & 1:
            node = _NODE_HASHER.copy()
            node.update(frontier.pop())
            node.update(h)
            h = node.digest()
            n >>= 1
        frontier.append(h)
        self._size += 1

    def add_hash(self, leaf: bytes) -> None:
        """Add one leaf, given its HASH.

        Raises:
            ValueError: ``leaf`` is not ``HASH_SIZE`` bytes.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf)} bytes, expected {HASH_SIZE}")
        self._push(leaf)

    def root(self) -> bytes:
        """Root of the leaves added so far; ``EMPTY_ROOT`` before the first."""
        if not self._frontier:
            return EMPTY_ROOT
        return _fold(self._frontier)

    def _push(self, h: bytes) -> None:
        frontier = self._frontier
        n = self._size
        while n & 1:
            node = _NODE_HASHER.copy()
            node.update(frontier.pop())
            node.update(h)
            h = node.digest()
            n >>= 1
        frontier.append(h)
        self._size += 1


# Helpers.


def _check_size(size: int) -> None:
    if size < 0:
        raise ValueError(f"tree size must be >= 0, got {size}")


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ValueError(f"{what}[{i}] is {len(h)} bytes, expected {HASH_SIZE}")


def _check_proof_hash(what: str, h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(f"{what} is {len(h)} bytes, expected {HASH_SIZE}")


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Hash of adjacent subtrees, largest first, joined right to left (RFC 6962 MTH)."""
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


def _range_indices(lo: int, hi: int) -> list[int]:
    """Stored indices of the perfect subtrees composing leaves ``lo`` to ``hi - 1``.

    Largest first. Every range used here is a subtree of an RFC 6962 tree, so
    ``lo`` is a multiple of each piece's width and each piece is stored.
    """
    indices = []
    width = hi - lo
    while width:
        level = width.bit_length() - 1
        indices.append(stored_hash_index(level, lo >> level))
        lo += 1 << level
        width -= 1 << level
    return indices


def _largest_power_of_two_below(n: int) -> int:
    """RFC 6962's split point ``k`` for a tree of ``n > 1`` leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form ``PATH(index, D[size])``, leaf's sibling first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    ranges = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _largest_power_of_two_below(hi - lo)
        if index < mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    ranges.reverse()
    return ranges


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form ``PROOF(old, D[new])``, in proof order."""
    if not 0 < old <= new:
        raise ValueError(f"consistency proofs need 0 < old <= new, got old {old}, new {new}")
    ranges = []
    lo, hi = 0, new
    # SUBPROOF's flag b: still on the left edge of the new tree, where the node
    # that ends at ``old`` is the old root itself, which the verifier already has.
    on_left_edge = True
    while hi != old:
        mid = lo + _largest_power_of_two_below(hi - lo)
        if old <= mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
            on_left_edge = False
    if not on_left_edge:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _fold_ranges(ranges: list[tuple[int, int]], hashes: Sequence[bytes]) -> list[bytes]:
    """One hash per range, each folded from its perfect subtrees' stored hashes."""
    counts = [(hi - lo).bit_count() for lo, hi in ranges]
    if len(hashes) != sum(counts):
        raise ValueError(f"expected {sum(counts)} stored hashes, got {len(hashes)}")
    _check_hashes("hashes", hashes)
    proof = []
    start = 0
    for count in counts:
        proof.append(_fold(hashes[start : start + count]))
        start += count
    return proof
