"""Each task's Merkle tree, kept in Redis as it grows, so roots and proofs are cheap.

The tree's stored hashes (``axon.merkle``: every perfect subtree once, in
append order) live in chunk strings of ``TREE_CHUNK_HASHES`` hashes next to
the task's other keys, and the number of leaves hashed so far in the task's
``merkle`` hash. The tree is extended lazily — when a checkpoint, a proof or
the compactor needs it — by reading only the events it has not seen, hashing
them with the tree's frontier and appending the new hashes in one script. So
the append path pays nothing, each event is hashed into the tree once, and a
root or a proof costs O(log n) hash reads (one pipelined round trip).

Chunks the compactor archived (listed in the task's snapshot) are read from
the archive instead; the archive read path caches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from axon import lua, merkle
from axon.errors import ArchiveUnavailable, EventNotFound, StoreUnavailable
from axon.store import Store

TREE_CHUNK_HASHES = 4096
"""Stored hashes per chunk string (128 KiB); also the unit the compactor archives."""

EXTEND_BATCH = 4096
"""Most events hashed into the tree per script call."""


def chunk_of(index: int) -> int:
    """The chunk holding stored hash ``index``."""
    return index // TREE_CHUNK_HASHES


class TaskTrees:
    """Read and extend the stored Merkle trees of tasks."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys

    async def size(self, task_id: str) -> int:
        """How many leaves (events) the stored tree of the task holds."""
        raw = await self.store.call(self.store.redis.hget(self.keys.merkle(task_id), "size"))
        return int(raw) if raw else 0

    async def read_hashes(self, task_id: str, indices: Sequence[int]) -> list[bytes]:
        """The stored hashes at ``indices``, from Redis or (archived chunks) the archive.

        Raises:
            ArchiveUnavailable: an archived chunk cannot be read.
            StoreUnavailable: a hash is neither in Redis nor archived (a tree that
                was never extended that far: a bug in the caller).
        """
        if not indices:
            return []
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for index in indices:
                offset = (index % TREE_CHUNK_HASHES) * merkle.HASH_SIZE
                pipe.getrange(
                    self.keys.tree_chunk(task_id, chunk_of(index)),
                    offset,
                    offset + merkle.HASH_SIZE - 1,
                )
            replies: list[Any] = await self.store.call(pipe.execute())
        hashes = [bytes(r) if r else b"" for r in replies]
        missing = [i for i, h in enumerate(hashes) if len(h) != merkle.HASH_SIZE]
        if missing:
            snapshot = await self.store.snapshot(task_id)
            archived = snapshot.tree_chunks if snapshot is not None else []
            for position in missing:
                index = indices[position]
                chunk = chunk_of(index)
                if chunk >= len(archived):
                    raise StoreUnavailable(
                        f"tree hash {index} of task {task_id} is neither in Redis nor archived",
                        task_id=task_id,
                        index=index,
                    )
                blob = await self.store.archive.get(archived[chunk])
                offset = (index % TREE_CHUNK_HASHES) * merkle.HASH_SIZE
                value = blob[offset : offset + merkle.HASH_SIZE]
                if len(value) != merkle.HASH_SIZE:
                    raise ArchiveUnavailable(
                        f"archived tree chunk {archived[chunk]} is too short for hash {index}",
                        ref=archived[chunk],
                    )
                hashes[position] = value
        return hashes

    async def extend_to(self, task_id: str, target: int) -> int:
        """Hash events into the stored tree until it holds ``target`` leaves.

        ``target`` must not exceed the task's head. Safe to run concurrently
        from several processes: each batch lands only on the size it started from.

        Raises:
            EventNotFound: fewer than ``target`` events exist.
        """
        size = await self.size(task_id)
        frontier: list[bytes] | None = None
        while size < target:
            if frontier is None:
                frontier = await self.read_hashes(task_id, merkle.frontier_indices(size))
            raws = await self.store.read_raw(
                task_id, after_seq=size, limit=min(EXTEND_BATCH, target - size)
            )
            if not raws:
                raise EventNotFound(
                    f"task {task_id} has {size} events, not {target}",
                    task_id=task_id,
                    head_seq=size,
                )
            leaves = [merkle.leaf_hash(raw) for raw in raws]
            added, new_frontier = merkle.append_leaves(size, frontier, leaves)
            new_size = size + len(raws)
            keys, args = self._writes(task_id, merkle.stored_hash_count(size), added)
            reply = await self.store.run_script(
                lua.TREE_EXTEND,
                [self.keys.merkle(task_id), *keys],
                [size, new_size, *args],
            )
            status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            if status == "ok":
                size, frontier = new_size, new_frontier
            else:  # another process extended it meanwhile: continue from its size
                size, frontier = int(reply[1]), None
        return size

    def _writes(
        self, task_id: str, first_index: int, hashes: Sequence[bytes]
    ) -> tuple[list[str], list[Any]]:
        """Split hashes starting at stored index ``first_index`` into per-chunk SETRANGEs."""
        keys: list[str] = []
        args: list[Any] = []
        index = first_index
        position = 0
        while position < len(hashes):
            chunk = chunk_of(index)
            room = (chunk + 1) * TREE_CHUNK_HASHES - index
            part = hashes[position : position + room]
            keys.append(self.keys.tree_chunk(task_id, chunk))
            args += [(index % TREE_CHUNK_HASHES) * merkle.HASH_SIZE, b"".join(part)]
            index += len(part)
            position += len(part)
        return keys, args

    async def root(self, task_id: str, size: int) -> bytes:
        """The root of the task's first ``size`` events (the tree must hold them)."""
        frontier = await self.read_hashes(task_id, merkle.frontier_indices(size))
        return merkle.root_from_frontier(frontier)

    async def inclusion(self, task_id: str, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` (seq ``index + 1``) in the tree of ``size``."""
        hashes = await self.read_hashes(task_id, merkle.inclusion_indices(index, size))
        return merkle.inclusion_proof(index, size, hashes)

    async def consistency(self, task_id: str, old: int, new: int) -> list[bytes]:
        """The RFC 6962 consistency proof from the tree of ``old`` to that of ``new`` leaves."""
        hashes = await self.read_hashes(task_id, merkle.consistency_indices(old, new))
        return merkle.consistency_proof(old, new, hashes)
