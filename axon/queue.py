"""The task queue: lanes, claiming, the in-flight set, retries, cancellation, dead letters.

All queue keys share one hash tag (see ``KeySpace.queue_tag``), so every queue
script is single-slot and runs on Redis Cluster; task keys live in their own
slots. Operations that touch both (claim, requeue, cancel) are ordered so that
a crash between the two halves leaves something the watchdog repairs:

* ``claim_batch`` pops ids and records them in the in-flight set in one step;
  the claim itself (the ``claimed`` event) follows on the task's keys. A worker
  that dies in between leaves a queued task in the in-flight set, which the
  watchdog puts back into its lane.
* Idle workers block on the signal stream (one entry per enqueue) from the
  last entry they saw, so an enqueue between "lanes empty" and "block" still
  wakes them: no polling, no lost wake-up.

Lane policy: strict priority by ``Settings.lanes`` order, except that every
``lane_fairness``-th claim of a worker tries the lanes lowest first. With the
default 8, a saturated ``high`` lane still lets ``low`` work through at about
1/8 of each worker's claims instead of starving it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from axon import lua
from axon.errors import (
    AppendRejected,
    InvalidArgument,
    InvalidTaskSpec,
    StaleHead,
    TaskNotFound,
    TaskTerminal,
)
from axon.keys import check_task_id, new_task_id
from axon.records import TaskRecord, TaskSpec, TaskState
from axon.store import CANCEL_REASON_MAX, Store, check_spec, now_ms, xread_entries
from axon.writer import EventWriter


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A task that failed for good, as recorded in the dead-letter stream."""

    id: str
    task_id: str
    tenant: str
    adapter: str
    lane: str
    reason: str
    attempts: int
    failed_ms: int


class Queue:
    """Lanes and the task lifecycle around them, on top of a ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.settings = store.settings
        self.keys = store.keys
        self._lane_keys = {lane: self.keys.lane(lane) for lane in self.settings.lanes}
        before, _, after = self.keys.task("\0").partition("\0")
        self._task_key_parts = [before, after]  # a task's record key around its id

    # -- submitting ---------------------------------------------------------------

    async def submit(self, spec: TaskSpec, *, task_id: str | None = None) -> TaskRecord:
        """Create a task and put it in its lane.

        Raises:
            InvalidTaskSpec: the spec is malformed or names a lane that does not exist.
        """
        if spec.lane not in self._lane_keys:
            raise InvalidTaskSpec(
                f"unknown lane {spec.lane!r}; lanes are {', '.join(self.settings.lanes)}",
                field="lane",
            )
        check_spec(spec)
        task_id = new_task_id() if task_id is None else check_task_id(task_id)
        if self.store.one_server:
            # One server: index, create and enqueue in one script, one round trip.
            return await self.store.create_task(
                spec, task_id=task_id, lane_key=self._lane_key(spec.lane)
            )
        # A cluster: the task's keys, the tenant index and the lanes live in different
        # slots, so three steps. Indexed before it exists, so no task is ever missing
        # from its tenant's listing; an entry whose task never came is skipped there
        # (and dropped). Queued only once it exists.
        await self.store.call(
            self.store.redis.zadd(self.keys.tenant_tasks(spec.tenant), {task_id: 0})
        )
        record = await self.store.create_task(spec, task_id=task_id)
        await self.enqueue(record.id, record.lane)
        return record

    async def enqueue(self, task_id: str, lane: str, *, front: bool = False) -> None:
        """Put ``task_id`` at the back (or front) of ``lane`` and wake idle workers."""
        await self.store.run_script(
            lua.ENQUEUE,
            [self._lane_key(lane), self.keys.signal()],
            [task_id, "front" if front else "back"],
        )

    def _lane_key(self, lane: str) -> str:
        # A lane removed from the configuration still drains into the lowest lane.
        return self._lane_keys.get(lane) or self._lane_keys[self.settings.lanes[-1]]

    # -- claiming -----------------------------------------------------------------

    def lane_order(self, claim_number: int) -> list[str]:
        """The order in which a worker's ``claim_number``-th claim tries the lanes."""
        lanes = list(self.settings.lanes)
        if self._reversed(claim_number):
            lanes.reverse()
        return lanes

    def _reversed(self, claim_number: int) -> bool:
        """Whether that claim scans the lanes lowest first (every ``lane_fairness``-th)."""
        fairness = self.settings.lane_fairness
        return fairness > 1 and claim_number % fairness == fairness - 1

    async def claim_batch(
        self, count: int, *, claim_number: int, deadline_ms: int
    ) -> list[tuple[str, str, TaskRecord | None]]:
        """Pop up to ``count`` task ids into the in-flight set in one script call.

        Claims are numbered from ``claim_number`` (the worker's count so far); those
        whose ``lane_order`` is reversed (every ``lane_fairness``-th) each take one
        id from the lowest non-empty lane, the rest go highest lane first. So a
        batch follows the same policy as that many single claims.

        Returns (task id, lane, record) triples, fairness claims first, then by
        priority. On a single server the script reads each record in the same
        step, which saves the worker a round trip per task; on a cluster (the
        records live in other slots), and for a task whose record is gone, the
        record is None: read it with ``Store.get_task``.
        """
        if count < 1:
            return []
        lanes = list(self.settings.lanes)
        reversed_ = sum(map(self._reversed, range(claim_number, claim_number + count)))
        keys = [self.keys.inflight(), *(self._lane_keys[lane] for lane in lanes)]
        args: list[Any] = [deadline_ms, count, reversed_]
        records = self.store.one_server
        if records:
            args += self._task_key_parts
        reply = await self.store.run_script(lua.CLAIM_NEXT, keys, args)
        if not records:
            return [
                (_str(reply[i]), lanes[int(reply[i + 1]) - 1], None)
                for i in range(0, len(reply or ()), 2)
            ]
        out: list[tuple[str, str, TaskRecord | None]] = []
        for i in range(0, len(reply or ()), 3):
            task_id, fields = _str(reply[i]), reply[i + 2]
            record = None
            if fields:
                if isinstance(fields, list):  # a script's HGETALL: [field, value, ...]
                    fields = dict(zip(fields[::2], fields[1::2], strict=True))
                record = TaskRecord.from_hash(task_id, fields)
            out.append((task_id, lanes[int(reply[i + 1]) - 1], record))
        return out

    async def signal_cursor(self) -> bytes:
        """The id of the newest wake-up signal (``0-0`` if none): where to block from."""
        rows = await self.store.call(self.store.redis.xrevrange(self.keys.signal(), count=1))
        return bytes(rows[0][0]) if rows else b"0-0"

    async def wait_for_work(self, cursor: bytes, *, timeout_ms: int) -> bytes:
        """Block until a task is enqueued after ``cursor`` (or timeout); returns the new cursor."""
        reply = await self.store.call(
            self.store.blocking.xread(
                {self.keys.signal(): cursor}, count=1000, block=max(timeout_ms, 1)
            )
        )
        entries = xread_entries(reply)
        return bytes(entries[-1][0]) if entries else cursor

    # -- in flight ------------------------------------------------------------------

    async def extend(self, task_id: str, deadline_ms: int) -> None:
        """Move an in-flight task's deadline (after a claim or a heartbeat)."""
        await self.store.call(
            self.store.redis.zadd(self.keys.inflight(), {task_id: deadline_ms}, xx=True)
        )

    async def release(self, task_id: str) -> None:
        """Forget an in-flight task (it finished, or it is not ours to track) and list it
        for the compactor, in one step on the queue's slot."""
        await self.store.run_script(
            lua.RELEASE, [self.keys.inflight(), self.keys.finished()], [task_id, now_ms()]
        )

    async def requeue(self, task_id: str, lane: str, *, front: bool = False) -> bool:
        """Move an in-flight task back into its lane; False if it was not in flight."""
        reply = await self.store.run_script(
            lua.REQUEUE,
            [self.keys.inflight(), self._lane_key(lane), self.keys.signal()],
            [task_id, "front" if front else "back"],
        )
        return bool(reply)

    async def schedule_retry(self, task_id: str, lane: str, *, due_ms: int) -> None:
        """Move an in-flight task to the delayed set until ``due_ms``."""
        await self.store.run_script(
            lua.SCHEDULE_RETRY,
            [self.keys.inflight(), self.keys.delayed()],
            [task_id, f"{lane}|{task_id}", due_ms],
        )

    async def expired(self, *, now: int, limit: int = 100) -> list[str]:
        """In-flight task ids whose deadline passed."""
        rows = await self.store.call(
            self.store.redis.zrangebyscore(self.keys.inflight(), "-inf", now, start=0, num=limit)
        )
        return [r.decode() if isinstance(r, bytes) else str(r) for r in rows]

    async def promote_due(self, *, now: int) -> int:
        """Move retries whose backoff passed into their lanes; returns how many."""
        lanes = list(self.settings.lanes)
        keys = [self.keys.delayed(), self.keys.signal(), *(self._lane_keys[x] for x in lanes)]
        return int(await self.store.run_script(lua.PROMOTE_DUE, keys, [now, *lanes]))

    async def depth(self) -> dict[str, int]:
        """Tasks waiting per lane, plus ``inflight`` and ``delayed`` counts."""
        redis = self.store.redis
        out = {
            lane: int(await self.store.call(redis.llen(k))) for lane, k in self._lane_keys.items()
        }
        out["inflight"] = int(await self.store.call(redis.zcard(self.keys.inflight())))
        out["delayed"] = int(await self.store.call(redis.zcard(self.keys.delayed())))
        return out

    # -- cancelling -----------------------------------------------------------------

    async def cancel(self, task_id: str, *, reason: str = "cancel requested") -> TaskState:
        """Cancel a task: a queued one at once, a running one by signalling its worker.

        Returns the state the task is in after the call: ``canceled`` for a task
        that never ran, ``running`` for one whose worker was told to stop (it
        writes ``canceled`` once the work is gone). Idempotent.

        Raises:
            TaskNotFound: no such task.
            TaskTerminal: the task already finished (``details["state"]`` says how).
            StaleHead: the task kept changing under the call (a conflict; retry).
        """
        check_task_id(task_id)
        for _ in range(8):
            record = await self.store.get_task(task_id)
            if record.state.terminal:
                raise TaskTerminal(
                    f"task {task_id} already {record.state.value}",
                    task_id=task_id,
                    state=record.state.value,
                )
            if record.state is TaskState.RUNNING:
                await self.store.request_cancel(task_id, reason=reason)
                await self.store.call(self.store.redis.publish(self.keys.cancel_channel(), task_id))
                return TaskState.RUNNING
            writer = EventWriter(self.store, task_id, epoch=record.epoch)
            try:
                reason = reason[:CANCEL_REASON_MAX]
                await writer.finish(
                    TaskState.CANCELED,
                    {"reason": reason, "ran": False},
                    fields={"cancel_reason": reason},
                )
            except AppendRejected:
                continue  # claimed (or cancelled) meanwhile: look again
            await self.store.run_script(
                lua.UNQUEUE,
                [self._lane_key(record.lane), self.keys.delayed(), self.keys.inflight()],
                [task_id, f"{record.lane}|{task_id}"],
            )
            return TaskState.CANCELED
        raise StaleHead(
            f"task {task_id} kept changing state while being cancelled; try again",
            task_id=task_id,
        )

    # -- dead letters ---------------------------------------------------------------

    async def dead_letter(self, record: TaskRecord, *, reason: str) -> None:
        """Record a task that failed for good in the dead-letter stream."""
        fields: dict[Any, Any] = {
            "task_id": record.id,
            "tenant": record.tenant,
            "adapter": record.adapter,
            "lane": record.lane,
            "reason": reason[:2000],
            "attempts": record.attempt,
            "failed_ms": now_ms(),
        }
        await self.store.call(
            self.store.redis.xadd(self.keys.dlq(), fields, maxlen=100_000, approximate=True)
        )

    async def dead_letters(self, *, count: int = 100, after: str = "-") -> list[DeadLetter]:
        """Dead letters, oldest first, starting after entry id ``after``.

        Raises:
            InvalidArgument: ``after`` is not an entry id, or ``count`` is not 1..10000.
        """
        if after != "-":
            _check_entry_id(after)
        if not 1 <= count <= 10_000:
            raise InvalidArgument("count must be between 1 and 10000", count=count)
        start = after if after == "-" else f"({after}"
        rows = await self.store.call(self.store.redis.xrange(self.keys.dlq(), start, "+", count))
        return [_dead_letter(entry_id, fields) for entry_id, fields in rows]

    async def replay(self, entry_id: str) -> TaskRecord:
        """Submit a dead letter's task again as a new task, then drop the dead letter.

        The new task has the same tenant, adapter, args, lane and policy, and
        ``metadata["replay_of"]`` naming the failed task.

        Raises:
            InvalidArgument: ``entry_id`` is not an entry id.
            TaskNotFound: no such dead letter, or its task no longer exists.
        """
        _check_entry_id(entry_id)
        rows = await self.store.call(
            self.store.redis.xrange(self.keys.dlq(), entry_id, entry_id, 1)
        )
        if not rows:
            raise TaskNotFound(f"no dead letter {entry_id}", entry_id=entry_id)
        letter = _dead_letter(*rows[0])
        old = await self.store.get_task(letter.task_id)
        spec = TaskSpec(
            tenant=old.tenant,
            adapter=old.adapter,
            args=old.args,
            lane=old.lane if old.lane in self._lane_keys else self.settings.lanes[-1],
            name=old.name,
            metadata={**old.metadata, "replay_of": old.id},
            timeout_s=old.timeout_s,
            max_attempts=old.max_attempts,
            retry_backoff_s=old.retry_backoff_s,
            retry_backoff_max_s=old.retry_backoff_max_s,
        )
        record = await self.submit(spec)
        await self.store.call(self.store.redis.xdel(self.keys.dlq(), entry_id))
        return record


_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _check_entry_id(entry_id: str) -> None:
    if not isinstance(entry_id, str) or _ENTRY_ID.fullmatch(entry_id) is None:
        raise InvalidArgument(
            f"{str(entry_id)[:40]!r} is not a dead-letter entry id (like 1763769600123-0)"
        )


def _dead_letter(entry_id: Any, fields: Any) -> DeadLetter:
    if isinstance(fields, list):  # raw reply: [k, v, k, v, ...]
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    f = {_str(k): _str(v) for k, v in fields.items()}
    return DeadLetter(
        id=_str(entry_id),
        task_id=f.get("task_id", ""),
        tenant=f.get("tenant", ""),
        adapter=f.get("adapter", ""),
        lane=f.get("lane", ""),
        reason=f.get("reason", ""),
        attempts=int(f.get("attempts", "0") or 0),
        failed_ms=int(f.get("failed_ms", "0") or 0),
    )


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
