"""The watchdog: takes over tasks whose worker stopped renewing its lease.

Any worker may run it, all of them do; each takeover happens once because
the reclaim is one append-script call guarded by the lease deadline and the
epoch (the first watchdog raises the epoch, so every other attempt — and the
old worker — is fenced), and the move back into a lane happens only for the
caller that removes the id from the in-flight set.

For each in-flight task whose deadline passed:

* running, lease expired, attempts left → ``reclaimed`` event, state queued,
  epoch + 1, back into its lane (the next claim continues the same log);
* running, lease expired, attempts exhausted → ``failed`` and a dead letter;
* running, lease expired, cancel requested → ``canceled``;
* queued (popped by a worker that died before claiming) → back into its lane;
* running with a renewed lease → the in-flight deadline catches up;
* finished or gone → dropped from the in-flight set.

It also moves retries whose backoff has passed into their lanes.
"""

from __future__ import annotations

import msgspec

from axon import metrics
from axon.errors import AppendRejected, TaskNotFound
from axon.queue import Queue
from axon.records import TaskState
from axon.writer import EventWriter


class WatchdogStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Takeovers this watchdog won."""

    reclaimed: int
    failed: int
    canceled: int
    requeued_unclaimed: int
    promoted: int


class Watchdog:
    """Sweeps the in-flight set and the delayed set."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.store = queue.store
        self._reclaimed = self._failed = self._canceled = self._requeued = self._promoted = 0

    def statistics(self) -> WatchdogStatistics:
        """Counters of takeovers won by this watchdog."""
        return WatchdogStatistics(
            reclaimed=self._reclaimed,
            failed=self._failed,
            canceled=self._canceled,
            requeued_unclaimed=self._requeued,
            promoted=self._promoted,
        )

    async def sweep(self, *, now: int) -> None:
        """One pass: expired leases, then due retries."""
        for task_id in await self.queue.expired(now=now):
            await self._take_over(task_id, now)
        self._promoted += await self.queue.promote_due(now=now)

    async def _take_over(self, task_id: str, now: int) -> None:
        try:
            record = await self.store.get_task(task_id)
        except TaskNotFound:
            await self.queue.release(task_id)
            return
        if record.state.terminal:
            await self.queue.release(task_id)
            return
        if record.state is TaskState.QUEUED:
            if await self.queue.requeue(task_id, record.lane):
                self._requeued += 1
            return
        deadline = record.lease_deadline_ms or 0
        if deadline >= now:
            await self.queue.extend(task_id, deadline)  # renewed; the set lagged behind
            return
        writer = EventWriter(self.store, task_id, epoch=record.epoch)
        info = {
            "reason": "lease expired",
            "worker": record.lease_owner,
            "attempt": record.attempt,
            "lease_deadline_ms": deadline,
        }
        clear = {"lease_owner": "", "lease_deadline_ms": ""}
        try:
            if record.cancel_requested:  # its worker died before it could honour the cancel
                await writer.finish(
                    TaskState.CANCELED,
                    {**info, "reason": "cancel requested; the worker's lease expired"},
                    lease_expired_before=now,
                )
                self._canceled += 1
                metrics.LEASES_RECLAIMED.labels(outcome="canceled").inc()
                await self.queue.release(task_id)
                return
            if record.attempt >= record.max_attempts:
                await writer.finish(
                    TaskState.FAILED,
                    {**info, "error": "lease expired and no attempts left"},
                    lease_expired_before=now,
                )
            else:
                await writer.transition(
                    TaskState.QUEUED,
                    "reclaimed",
                    info,
                    new_epoch=record.epoch + 1,
                    fields=clear,
                    lease_expired_before=now,
                )
        except AppendRejected:
            return  # renewed, finished or taken over by another watchdog meanwhile
        if record.attempt >= record.max_attempts:
            self._failed += 1
            metrics.LEASES_RECLAIMED.labels(outcome="failed").inc()
            final = await self.store.get_task(task_id)
            await self.queue.dead_letter(final, reason="lease expired and no attempts left")
            await self.queue.release(task_id)
        else:
            self._reclaimed += 1
            metrics.LEASES_RECLAIMED.labels(outcome="requeued").inc()
            await self.queue.requeue(task_id, record.lane)
