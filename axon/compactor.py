"""The compactor: moves old events out of Redis into the archive, without losing any.

A finished task keeps its events in Redis for its tenant's retention window;
a running task with very many events keeps only its most recent ones. The
rest is rolled, per task, in this order:

1. take the task's compaction lock (one replica per task; a dead replica's
   lock expires after ``compact_lock_s``);
2. hash the range into the task's Merkle tree (``axon.tree``);
3. read the range from Redis, check that its chain continues the archived one,
   and write it as archive segments — exact event bytes, one per line,
   content-addressed, fsynced (``axon.archive``);
4. archive the tree chunks the range completes;
5. sign a checkpoint of the tree at the end of the range;
6. in one script, only if the lock is still ours and nobody moved the snapshot:
   store the new snapshot record and trim the range (and the archived chunks)
   from Redis.

Killed anywhere before 6, nothing changed in Redis and the next run writes the
same blobs again (same content, same names). Killed after 6, the work is done.
Readers (``Store.read``) find trimmed events through the snapshot record,
which the same script wrote, so a reader never sees a gap.

Work is found on the ``finished`` list workers add a task to when they let go
of it, on the in-flight set (long running tasks), and by ``sweep`` over the
tenants' task indexes for anything those missed.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import time
from typing import Any

import anyio
import msgspec

from axon import lua, merkle, metrics
from axon.archive import encode_segment
from axon.chain import GENESIS, ChainHead, ChainVerifier
from axon.errors import (
    ArchiveUnavailable,
    AxonError,
    CompactionBusy,
    StoreUnavailable,
    TaskNotFound,
)
from axon.receipts import Receipts
from axon.records import TERMINAL_STATES
from axon.settings import Settings
from axon.snapshots import (
    SEGMENT_MAX_BYTES,
    SEGMENT_MAX_EVENTS,
    Segment,
    Snapshot,
    Summary,
    encode_snapshot,
)
from axon.store import Store, now_ms, text_of
from axon.tree import TREE_CHUNK_HASHES, TaskTrees, chunk_of

_log = logging.getLogger("axon.compactor")

READ_PAGE = 4096
"""Events read from Redis per round trip while archiving."""

SWEEP_EVERY_S = 3600.0
"""How often ``run`` sweeps the tenant indexes for finished tasks the list missed."""


class TaskCompaction(msgspec.Struct, frozen=True, kw_only=True):
    """What compacting one task did."""

    task: str
    archived_from: int
    archived_to: int
    events: int
    bytes: int
    segments: int
    tree_chunks: int
    redis_bytes_freed: int
    finished: bool


class CompactionReport(msgspec.Struct, kw_only=True):
    """What one pass (``run_once``) did, for logs and ``axon compactor --once``."""

    tasks_compacted: int = 0
    events_archived: int = 0
    bytes_archived: int = 0
    redis_bytes_freed: int = 0
    skipped_locked: int = 0
    not_due: int = 0
    failed: int = 0
    seconds: float = 0.0


class CompactorStats(msgspec.Struct, frozen=True, kw_only=True):
    """Totals over every compactor replica (kept in Redis), plus this replica's passes."""

    tasks_compacted: int
    events_archived: int
    bytes_archived: int
    redis_bytes_freed: int
    passes: int
    archive: str


class Compactor:
    """Compacts tasks of one deployment; run several replicas safely.

    Args:
        store: the store (its archive is where segments go).
        receipts: signs the snapshot checkpoints; needs a signing key.
        settings: retention and thresholds (``compact_*``).
        clock: unix ms now (tests move time instead of sleeping).
    """

    def __init__(
        self,
        store: Store,
        receipts: Receipts,
        *,
        settings: Settings,
        clock: Any = now_ms,
    ) -> None:
        self.store = store
        self.receipts = receipts
        self.settings = settings
        self.keys = store.keys
        self.trees = TaskTrees(store)
        self.clock = clock
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self._passes = 0

    # -- the service ----------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Compact every ``compact_interval_s`` until cancelled; sweep now and hourly."""
        metrics.set_component("compactor")
        task_status.started()
        last_sweep = -SWEEP_EVERY_S
        while True:
            try:
                if time.monotonic() - last_sweep >= SWEEP_EVERY_S:
                    await self.sweep()
                    last_sweep = time.monotonic()
                report = await self.run_once()
                if report.tasks_compacted or report.failed:
                    _log.info("compaction pass: %s", msgspec.json.encode(report).decode())
            except AxonError as exc:
                _log.warning("compaction pass failed: %s: %s", exc.code, exc.message)
            await anyio.sleep(self.settings.compact_interval_s)

    async def run_once(self, *, limit: int = 1000) -> CompactionReport:
        """One pass: finished tasks whose retention ran out, then long running tasks."""
        started = time.monotonic()
        report = CompactionReport()
        for task_id, score in await self._due_finished(limit):
            await self._finished_entry(task_id, score, report)
        for task_id in await self._long_running(limit):
            await self._compact_into(task_id, report)
        self._passes += 1
        report.seconds = round(time.monotonic() - started, 3)
        metrics.observe_compaction(report)
        return report

    async def statistics(self) -> CompactorStats:
        """Totals across replicas: tasks compacted, events archived, Redis memory freed."""
        raw = await self.store.call(self.store.redis.hgetall(self.keys.compactor_stats()))
        totals = {text_of(k): int(v) for k, v in raw.items()}
        return CompactorStats(
            tasks_compacted=totals.get("tasks_compacted", 0),
            events_archived=totals.get("events_archived", 0),
            bytes_archived=totals.get("bytes_archived", 0),
            redis_bytes_freed=totals.get("redis_bytes_freed", 0),
            passes=self._passes,
            archive=self.store.archive.describe(),
        )

    async def sweep(self, *, page: int = 500) -> int:
        """List every finished, not fully archived task the ``finished`` list lacks.

        Covers a worker that died between finishing a task and letting go of it,
        and tasks finished before the compactor existed. Returns how many it listed.
        """
        redis = self.store.redis
        listed = 0
        pattern = f"{self.keys.prefix}:tenant:*:tasks"
        async for index in redis.scan_iter(match=pattern, count=page):
            cursor = 0
            while True:
                cursor, rows = await self.store.call(redis.zscan(index, cursor, count=page))
                ids = [text_of(member) for member, _ in rows]
                if ids:
                    listed += await self._list_finished(ids)
                if int(cursor) == 0:
                    break
        return listed

    async def _list_finished(self, ids: list[str]) -> int:
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(
                    self.keys.task(task_id), ["state", "head_seq", "archived_to", "finished_ms"]
                )
            rows = await self.store.call(pipe.execute())
        due: dict[str, int] = {}
        for task_id, (state, head, archived, finished) in zip(ids, rows, strict=True):
            if state is None or text_of(state) not in TERMINAL_STATES:
                continue
            if int(archived or 0) < int(head or 0):
                due[task_id] = int(finished or 0)
        if due:
            await self.store.call(self.store.redis.zadd(self.keys.finished(), due, nx=True))
        return len(due)

    # -- choosing work ----------------------------------------------------------

    def _min_retention_ms(self) -> int:
        seconds = [self.settings.compact_retention_s]
        seconds += [s for _, s in self.settings.compact_tenant_retention]
        return int(min(seconds) * 1000)

    async def _due_finished(self, limit: int) -> list[tuple[str, int]]:
        cutoff = self.clock() - self._min_retention_ms()
        rows = await self.store.call(
            self.store.redis.zrangebyscore(
                self.keys.finished(), "-inf", cutoff, start=0, num=limit, withscores=True
            )
        )
        return [(text_of(member), int(score)) for member, score in rows]

    async def _long_running(self, limit: int) -> list[str]:
        ids = [
            text_of(m)
            for m in await self.store.call(
                self.store.redis.zrange(self.keys.inflight(), 0, limit - 1)
            )
        ]
        if not ids:
            return []
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(self.keys.task(task_id), ["head_seq", "archived_to"])
            rows = await self.store.call(pipe.execute())
        limit_events = self.settings.compact_live_max_events
        return [
            task_id
            for task_id, (head, archived) in zip(ids, rows, strict=True)
            if int(head or 0) - int(archived or 0) > limit_events
        ]

    async def _finished_entry(self, task_id: str, score: int, report: CompactionReport) -> None:
        try:
            record = await self.store.get_task(task_id)
        except TaskNotFound:
            await self._unlist(task_id, score, None)
            return
        if record.state not in TERMINAL_STATES:
            await self._unlist(task_id, score, None)  # a hand-back; its next release re-lists it
            return
        due_ms = (record.finished_ms or score) + int(
            self.settings.retention_s(record.tenant) * 1000
        )
        if due_ms > self.clock():
            report.not_due += 1
            await self._unlist(task_id, score, due_ms - self._min_retention_ms())
            return
        done = await self._compact_into(task_id, report)
        if done:
            await self._unlist(task_id, score, None)

    async def _unlist(self, task_id: str, score: int, new_score: int | None) -> None:
        await self.store.run_script(
            lua.UNFINISHED,
            [self.keys.finished()],
            [task_id, score, "" if new_score is None else new_score],
        )

    async def _compact_into(self, task_id: str, report: CompactionReport) -> bool:
        """Compact ``task_id`` and count it in ``report``; True once nothing is left to do."""
        try:
            result = await self.compact_task(task_id)
        except CompactionBusy:
            report.skipped_locked += 1
            return False
        except AxonError as exc:
            report.failed += 1
            _log.warning("compacting task %s failed: %s: %s", task_id, exc.code, exc.message)
            return False
        if result is not None:
            report.tasks_compacted += 1
            report.events_archived += result.events
            report.bytes_archived += result.bytes
            report.redis_bytes_freed += result.redis_bytes_freed
        return True

    # -- compacting one task -----------------------------------------------------

    async def compact_task(self, task_id: str, *, force: bool = False) -> TaskCompaction | None:
        """Compact one task now, if it is due (``force``: ignore the retention window).

        A finished task is archived to its head; a running one beyond
        ``compact_live_max_events`` events in Redis down to its last
        ``compact_live_keep_events``. Returns None when there was nothing to do.

        Raises:
            TaskNotFound: no such task.
            ReceiptsUnavailable: no signing key (snapshots carry a signed checkpoint).
            ArchiveUnavailable: the archive refused a write; nothing was trimmed.
        """
        self.receipts.origin(task_id)  # fail before any work without a signing key
        token = f"{self.owner}:{secrets.token_hex(4)}"
        lock = self.keys.compact_lock(task_id)
        acquired = await self.store.call(
            self.store.redis.set(lock, token, nx=True, px=int(self.settings.compact_lock_s * 1000))
        )
        if not acquired:
            raise CompactionBusy(
                f"another compactor replica is compacting task {task_id}", task_id=task_id
            )
        try:
            return await self._compact_locked(task_id, token, force=force)
        finally:
            # The commit script deletes the lock; after a failure, free it if still ours.
            with anyio.CancelScope(shield=True):
                try:
                    if text_of(await self.store.redis.get(lock) or b"") == token:
                        await self.store.redis.delete(lock)
                except Exception:  # the lock's TTL frees it anyway
                    _log.debug("could not release compaction lock of %s", task_id)

    async def _compact_locked(
        self, task_id: str, token: str, *, force: bool
    ) -> TaskCompaction | None:
        record = await self.store.get_task(task_id)
        raw_archived = await self.store.call(
            self.store.redis.hget(self.keys.task(task_id), "archived_to")
        )
        archived_to = int(raw_archived or 0)
        head = record.head_seq
        finished = record.state in TERMINAL_STATES
        if finished:
            retention_ms = int(self.settings.retention_s(record.tenant) * 1000)
            if not force and (record.finished_ms or 0) + retention_ms > self.clock():
                return None
            target = head
        else:
            if not force and head - archived_to <= self.settings.compact_live_max_events:
                return None
            target = head - self.settings.compact_live_keep_events
        if target <= archived_to:
            return None
        previous = await self.store.snapshot(task_id)
        start = (
            GENESIS
            if previous is None
            else ChainHead(seq=previous.archived_to, hash=previous.head_hash)
        )
        if start.seq != archived_to:
            raise ArchiveUnavailable(
                f"task {task_id}: the record says {archived_to} events are archived, "
                f"the snapshot {start.seq}",
                task_id=task_id,
            )

        await self.trees.extend_to(task_id, target)
        segments, summary, chain_head = await self._archive_events(
            task_id, start, target, previous.summary if previous else Summary(), finished
        )
        tree_count = merkle.stored_hash_count(target)
        chunks = list(previous.tree_chunks) if previous else []
        new_chunk_refs = await self._archive_tree(task_id, len(chunks), tree_count, finished)
        chunks += new_chunk_refs
        checkpoint = await self.receipts.checkpoint(task_id, size=target)
        snapshot = Snapshot(
            task=task_id,
            archived_to=target,
            head_hash=chain_head.hash,
            root=base64.b64encode(checkpoint.root).decode(),
            checkpoint=checkpoint.note,
            segments=[*(previous.segments if previous else []), *segments],
            tree_chunks=chunks,
            summary=summary,
            compacted_ms=self.clock(),
        )
        deleted_chunks = [
            self.keys.tree_chunk(task_id, c)
            for c in range(len(chunks) - len(new_chunk_refs), len(chunks))
        ]
        drop_stream = finished and target == head
        freed_keys = [self.keys.events(task_id), *deleted_chunks]
        before = await self._memory(freed_keys)
        reply = await self.store.run_script(
            lua.COMPACT_COMMIT,
            [
                self.keys.task(task_id),
                self.keys.events(task_id),
                self.keys.snapshot(task_id),
                self.keys.compact_lock(task_id),
                *deleted_chunks,
            ],
            [token, archived_to, target, encode_snapshot(snapshot), "1" if drop_stream else "0"],
        )
        status = text_of(reply[0])
        if status != "ok":  # our lock expired, or another replica committed first
            raise CompactionBusy(
                f"task {task_id} was compacted by another replica meanwhile ({status})",
                task_id=task_id,
            )
        freed = max(0, before - await self._memory(freed_keys))
        events = target - archived_to
        nbytes = sum(s.bytes for s in segments)
        await self._count(events=events, nbytes=nbytes, freed=freed)
        return TaskCompaction(
            task=task_id,
            archived_from=archived_to + 1,
            archived_to=target,
            events=events,
            bytes=nbytes,
            segments=len(segments),
            tree_chunks=len(new_chunk_refs),
            redis_bytes_freed=freed,
            finished=drop_stream,
        )

    async def _archive_events(
        self, task_id: str, start: ChainHead, target: int, summary: Summary, finished: bool
    ) -> tuple[list[Segment], Summary, ChainHead]:
        """Write events ``start.seq + 1 .. target`` as segments; verify their chain."""
        verifier = ChainVerifier(task=task_id, start=start)
        kinds = dict(summary.kinds)
        outcome = summary.outcome
        total_bytes = summary.bytes
        segments: list[Segment] = []
        pending: list[bytes] = []
        pending_bytes = 0
        first = start.seq + 1
        seq = start.seq

        async def flush() -> None:
            nonlocal pending, pending_bytes, first
            if not pending:
                return
            ref = await self.store.archive.put(encode_segment(pending))
            segments.append(
                Segment(first=first, last=first + len(pending) - 1, ref=ref, bytes=pending_bytes)
            )
            first += len(pending)
            pending, pending_bytes = [], 0

        while seq < target:
            page = await self.store.read(task_id, after_seq=seq, limit=min(READ_PAGE, target - seq))
            for event in page:
                verifier.feed(event.raw)
                kind = event.kind
                kinds[kind] = kinds.get(kind, 0) + 1
                if finished and event.seq == target and kind in TERMINAL_STATES:
                    outcome = kind
                if pending and (
                    len(pending) >= SEGMENT_MAX_EVENTS
                    or pending_bytes + len(event.raw) > SEGMENT_MAX_BYTES
                ):
                    await flush()
                pending.append(event.raw)
                pending_bytes += len(event.raw)
                total_bytes += len(event.raw)
            seq = page[-1].seq
        await flush()
        new_summary = Summary(
            events=summary.events + (target - start.seq),
            bytes=total_bytes,
            kinds=kinds,
            outcome=outcome,
        )
        return segments, new_summary, verifier.head

    async def _archive_tree(
        self, task_id: str, first_chunk: int, tree_count: int, finished: bool
    ) -> list[str]:
        """Archive tree chunks ``first_chunk ..`` that the first ``tree_count`` hashes fill
        (a finished task's last, partial chunk too: its tree never grows again)."""
        full = tree_count // TREE_CHUNK_HASHES
        last = chunk_of(tree_count - 1) + 1 if finished and tree_count else full
        refs: list[str] = []
        for chunk in range(first_chunk, last):
            blob = await self.store.call(self.store.redis.get(self.keys.tree_chunk(task_id, chunk)))
            expected = min(TREE_CHUNK_HASHES, tree_count - chunk * TREE_CHUNK_HASHES)
            if blob is None or len(blob) < expected * merkle.HASH_SIZE:
                raise StoreUnavailable(
                    f"tree chunk {chunk} of task {task_id} is incomplete", task_id=task_id
                )
            refs.append(await self.store.archive.put(bytes(blob[: expected * merkle.HASH_SIZE])))
        return refs

    async def _memory(self, keys: list[str]) -> int:
        """Bytes Redis uses for ``keys`` (one task's: one slot, one pipelined round trip)."""
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            used = await self.store.call(pipe.execute())
        return sum(int(u or 0) for u in used)

    async def _count(self, *, events: int, nbytes: int, freed: int) -> None:
        key = self.keys.compactor_stats()
        async with self.store.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "tasks_compacted", 1)
            pipe.hincrby(key, "events_archived", events)
            pipe.hincrby(key, "bytes_archived", nbytes)
            pipe.hincrby(key, "redis_bytes_freed", freed)
            await self.store.call(pipe.execute())
