"""The worker: claims tasks from the lanes and runs them through adapters.

One ``Worker`` is an anyio service. Its task group owns:

* the claim loops, one per claim group — while the group's slots are free,
  ``claim_batch`` for all of them (priority lanes, see ``axon.queue``); when the
  lanes are empty, block on the signal stream (no polling). Each claimed task
  runs in its own child task. A slot is free again once the adapter returned, so
  the next claim shares a round trip with the outcome's append;
* the heartbeat loop — renews the lease of every running task; a task whose
  lease is gone (reclaimed by a watchdog) is stopped at once, writing nothing;
* the watchdog loop — reclaims expired leases and promotes due retries
  (``axon.watchdog``); every worker runs it, scripts make each takeover
  happen once;
* the cancel listener — Pub/Sub on the cancel channel, so a cancel request
  reaches the worker running the task within milliseconds (the heartbeat also
  reports the cancel flag, as a fallback).

Claim groups: the concurrency is split into ``worker_claim_groups`` groups
(2 by default), each with its own slots and auto-pipeline channel
(``axon.autopipeline``). Runs claimed together move together — claim, append
``claimed``, append the outcome — and with a single group the worker and Redis
take turns: the worker waits while Redis runs the scripts, and Redis idles while
the worker builds the next round trip. With two, one group's round trip is at
Redis while the worker serves the other's, which is worth about a fifth more
no-op throughput on two cores (``bench/README.md``).

A run ends in exactly one of: the adapter's outcome (``succeeded``, ``failed``
or a retry), ``canceled``, ``timed_out``, a hand-back to the queue on
shutdown, or nothing at all when the lease was lost (the new holder owns the
task). ``stop()`` drains: no new claims, running tasks get
``shutdown_grace_s`` to finish, the rest are handed back at the front of
their lane.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import socket
import time
from typing import Any

import anyio
import anyio.abc
import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from axon import logs, lua, metrics, tracing
from axon.adapters.base import AdapterError, Outcome
from axon.adapters.registry import AdapterRegistry
from axon.autopipeline import use_channel
from axon.chain import ChainHead
from axon.connection import node_client
from axon.context import RunContext
from axon.errors import AppendRejected, AxonError, InvalidEvent
from axon.queue import Queue
from axon.records import TaskRecord, TaskState
from axon.store import now_ms
from axon.watchdog import Watchdog
from axon.writer import EventWriter

_logger = logging.getLogger("axon.worker")


class StopReason(enum.Enum):
    """Why the worker stopped a run before the adapter finished."""

    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"


class WorkerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker has done so far."""

    running: int
    claimed: int
    completed: int
    failed: int
    canceled: int
    timed_out: int
    retried: int
    handed_back: int
    lease_lost: int
    reclaimed: int


class _Run:
    """One running task in this worker."""

    __slots__ = ("ctx", "record", "scope", "stop_reason", "stopped_at", "writer")

    def __init__(self, record: TaskRecord, writer: EventWriter, ctx: RunContext) -> None:
        self.record = record
        self.writer = writer
        self.ctx = ctx
        self.scope = anyio.CancelScope()
        self.stop_reason: StopReason | None = None
        self.stopped_at: float | None = None

    def stop(self, reason: StopReason, grace_s: float) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped_at = time.monotonic()
            self.ctx.stop_grace_s = grace_s
        self.scope.cancel()


class _Group:
    """A claim group: its share of the slots, its claim loop's numbering and wait."""

    __slots__ = ("claims", "index", "slots", "wait_scope")

    def __init__(self, index: int, size: int) -> None:
        self.index = index
        self.slots = anyio.Semaphore(size)  # adapters running (or being claimed)
        self.claims = 0  # claims made, for the lane order (``Queue.lane_order``)
        self.wait_scope = anyio.CancelScope()  # the idle wait, which stop() interrupts


class Worker:
    """Claims and runs tasks until stopped.

    Args:
        queue: the queue (and through it the store and settings).
        adapters: adapters by name; ``AdapterRegistry.default(settings)`` by default.
        worker_id: a name for leases and logs; host:pid:random by default.
        concurrency: tasks run at once; ``settings.worker_concurrency`` by default.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        adapters: AdapterRegistry | None = None,
        worker_id: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.queue = queue
        self.store = queue.store
        self.settings = queue.settings
        self.adapters = adapters or AdapterRegistry.default(self.settings)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        limit = concurrency or self.settings.worker_concurrency
        count = min(self.settings.worker_claim_groups, limit)
        self._groups = [_Group(i, limit // count + (i < limit % count)) for i in range(count)]
        self._concluding = anyio.Semaphore(limit)  # runs recording their outcome
        self._runs: dict[str, _Run] = {}
        self._stopping = anyio.Event()
        self.stopped = anyio.Event()
        self._idle = anyio.Event()
        self._counts = {name: 0 for name in WorkerStatistics.__struct_fields__ if name != "running"}
        self.watchdog = Watchdog(queue)

    def statistics(self) -> WorkerStatistics:
        """Counters since start, and how many tasks run now."""
        return WorkerStatistics(
            running=len(self._runs),
            reclaimed=self.watchdog.statistics().reclaimed,
            **{k: v for k, v in self._counts.items() if k != "reclaimed"},
        )

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM triggers): no new claims, then drain."""
        self._stopping.set()
        for group in self._groups:
            group.wait_scope.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until ``stop()``; then drain and return (``stopped`` is set then)."""
        metrics.set_component("worker")
        try:
            async with anyio.create_task_group() as services:
                await services.start(self._cancel_listener)
                services.start_soon(self._heartbeat_loop)
                services.start_soon(self._watchdog_loop)
                async with anyio.create_task_group() as runs:
                    task_status.started()
                    async with anyio.create_task_group() as claiming:
                        for group in self._groups:
                            claiming.start_soon(self._claim_loop, runs, group)
                    await self._drain()
                services.cancel_scope.cancel()
        finally:
            self.stopped.set()

    # -- claiming -----------------------------------------------------------------

    async def _claim_loop(self, runs: anyio.abc.TaskGroup, group: _Group) -> None:
        # This loop's claims and the runs it starts (which inherit the context) share
        # the group's own auto-pipeline channel.
        use_channel(group.index)
        settings = self.settings
        cursor = await self.queue.signal_cursor()
        while not self._stopping.is_set():
            await group.slots.acquire()
            free = 1
            claimed: list[tuple[str, str, TaskRecord | None]] = []
            while not claimed and not self._stopping.is_set():
                free += _take_free(group.slots)  # every free slot claims in the same call
                deadline = now_ms() + int(settings.lease_timeout_s * 1000)
                try:
                    claimed = await self.queue.claim_batch(
                        free, claim_number=group.claims, deadline_ms=deadline
                    )
                    if not claimed:
                        # Only this wait is interrupted by stop(); a claim in flight completes.
                        with anyio.CancelScope() as group.wait_scope:
                            if self._stopping.is_set():  # stop() came while claiming
                                group.wait_scope.cancel()
                            cursor = await self.queue.wait_for_work(cursor, timeout_ms=5000)
                except AxonError as exc:
                    # Redis went away: say so, wait a moment, try again. A task popped
                    # by a claim whose reply was lost is put back by the watchdog once
                    # its in-flight deadline passes.
                    _log(f"claiming failed: {exc.message}; retrying in 1 s")
                    with anyio.CancelScope() as group.wait_scope:
                        await anyio.sleep(1.0)
            for _ in range(free - len(claimed)):
                group.slots.release()
            if not claimed:
                break
            group.claims += len(claimed)
            for task_id, lane, record in claimed:
                runs.start_soon(self._run_task, group, task_id, lane, record)

    async def _drain(self) -> None:
        """Give running tasks the shutdown grace, then hand the rest back."""
        with anyio.move_on_after(self.settings.shutdown_grace_s):
            if self._runs:
                await self._idle.wait()
        for run in list(self._runs.values()):
            run.stop(StopReason.SHUTDOWN, self.settings.timeout_grace_s)

    # -- running ------------------------------------------------------------------

    async def _run_task(
        self, group: _Group, task_id: str, lane: str, record: TaskRecord | None
    ) -> None:
        logs.bind_task(task_id)  # this run's own asyncio task: every log line names it
        holds_slot = True
        try:
            run = await self._claim(task_id, lane, record)
            if run is None:
                return
            started = now_ms()
            outcome = await self._execute(
                run, run.record.timeout_s or self.settings.default_timeout_s
            )
            wall = str(run.record.wall_ms + now_ms() - started)
            # The adapter is done: its slot goes to the next claim now, so that claim
            # shares a round trip with this outcome's append instead of waiting for
            # it. Runs still recording an outcome are capped at the concurrency too.
            await _acquire(self._concluding)
            try:
                group.slots.release()
                holds_slot = False
                await self._conclude(run, outcome, wall_ms=wall)
            finally:
                self._concluding.release()
        except AxonError as exc:
            # Redis trouble mid-run: the lease will expire and the watchdog will
            # hand the task to someone else; nothing here is lost.
            _log(f"task {task_id}: {exc.code}: {exc.message}")
        except Exception as exc:  # a bug must cost one task's lease, not the whole worker
            _log(f"task {task_id}: unexpected {exc!r}")
        finally:
            tracing.end_run()
            self._runs.pop(task_id, None)
            if holds_slot:
                group.slots.release()
            if not self._runs and self._stopping.is_set():
                self._idle.set()

    async def _claim(self, task_id: str, lane: str, record: TaskRecord | None) -> _Run | None:
        """Append the ``claimed`` event (the claim proper); the run, or None if the
        task is not ours to run (finished, cancelled or claimed elsewhere meanwhile)."""
        settings = self.settings
        if record is None:  # not read by the claim (a cluster, or a record that is gone)
            try:
                record = await self.store.get_task(task_id)
            except AxonError:
                await self.queue.release(task_id)
                return None
        if record.state is not TaskState.QUEUED:
            if record.state.terminal:
                await self.queue.release(task_id)  # e.g. cancelled while it waited
            return None  # running elsewhere: its in-flight entry is not ours to touch
        head = ChainHead(seq=record.head_seq, hash=record.head_hash)
        writer = EventWriter(self.store, task_id, epoch=record.epoch, head=head)
        if record.cancel_requested:  # cancelled while it was running before (then handed back)
            with contextlib.suppress(AppendRejected):
                await writer.finish(
                    TaskState.CANCELED,
                    {"reason": record.cancel_reason or "cancel requested", "ran": False},
                )
            await self.queue.release(task_id)
            return None
        attempt = record.attempt + 1
        epoch = record.epoch + 1
        tracing.start_run(record, attempt=attempt, worker=self.worker_id)
        deadline = now_ms() + int(settings.lease_timeout_s * 1000)
        try:
            await writer.transition(
                TaskState.RUNNING,
                "claimed",
                {"worker": self.worker_id, "attempt": attempt, "epoch": epoch, "lane": lane},
                new_epoch=epoch,
                fields={
                    "lease_owner": self.worker_id,
                    "lease_deadline_ms": str(deadline),
                    "attempt": str(attempt),
                },
            )
        except AppendRejected:
            return None  # someone else claimed or cancelled it first
        self._counts["claimed"] += 1  # claim_batch already set the in-flight deadline
        ctx = RunContext(
            writer, args=record.args, attempt=attempt, stop_grace_s=settings.timeout_grace_s
        )
        run = _Run(record, writer, ctx)
        self._runs[task_id] = run
        return run

    async def _execute(self, run: _Run, timeout_s: float) -> Outcome | None:
        """Run the adapter; None when the worker stopped it."""
        outcome: Outcome | None = None
        # One scope for both ways a run is cut short: stop() (which names its reason
        # before cancelling) and the timeout (its deadline; no reason named).
        run.scope.deadline = anyio.current_time() + timeout_s
        with run.scope:
            try:
                adapter = self.adapters.get(run.record.adapter)
                outcome = await adapter.run(run.ctx)
            except AdapterError as exc:
                outcome = Outcome(ok=False, data={"error": exc.message}, retryable=exc.retryable)
            except AppendRejected:
                run.stop_reason = run.stop_reason or StopReason.LEASE_LOST
            except AxonError as exc:
                outcome = Outcome(ok=False, data={"error": exc.message, "code": exc.code})
            except Exception as exc:  # an adapter bug must not kill the worker
                outcome = Outcome(ok=False, data={"error": repr(exc)[:2000]})
        if run.scope.cancelled_caught and run.stop_reason is None:
            run.stop_reason = StopReason.TIMED_OUT
        if run.stop_reason is not None:
            return None
        return outcome

    async def _conclude(self, run: _Run, outcome: Outcome | None, *, wall_ms: str) -> None:
        record, writer, task_id = run.record, run.writer, run.record.id
        fields = {"wall_ms": wall_ms}
        # A stop that came after the adapter returned does not override its outcome.
        reason = run.stop_reason if outcome is None else None
        with anyio.CancelScope(shield=True):
            try:
                if reason is StopReason.LEASE_LOST:
                    self._counts["lease_lost"] += 1
                    return
                if reason is StopReason.CANCELED:
                    why = await self._cancel_reason(task_id)
                    await writer.finish(TaskState.CANCELED, {"reason": why}, fields=fields)
                    metrics.observe_cancel(run.stopped_at)
                    self._counts["canceled"] += 1
                elif reason is StopReason.TIMED_OUT:
                    limit = record.timeout_s or self.settings.default_timeout_s
                    await writer.finish(TaskState.TIMED_OUT, {"timeout_s": limit}, fields=fields)
                    self._counts["timed_out"] += 1
                elif reason is StopReason.SHUTDOWN:
                    await writer.transition(
                        TaskState.QUEUED,
                        "requeued",
                        {"reason": "worker shutdown", "worker": self.worker_id},
                        new_epoch=writer.epoch + 1,
                        fields={**fields, "lease_owner": "", "lease_deadline_ms": ""},
                    )
                    await self.queue.requeue(task_id, run.record.lane, front=True)
                    self._counts["handed_back"] += 1
                    return
                else:
                    assert outcome is not None
                    await self._record_outcome(run, outcome, fields=fields)
                    return
                await self.queue.release(task_id)
            except AppendRejected:
                self._counts["lease_lost"] += 1

    async def _record_outcome(self, run: _Run, outcome: Outcome, *, fields: dict[str, str]) -> None:
        record, writer, task_id, attempt = run.record, run.writer, run.record.id, run.ctx.attempt
        if outcome.ok:
            try:
                # On a single server the same script releases the task from the queue.
                await writer.finish(TaskState.SUCCEEDED, outcome.data, fields=fields, release=True)
            except InvalidEvent as exc:
                outcome = Outcome(ok=False, data={"error": f"result not recordable: {exc.message}"})
            else:
                self._counts["completed"] += 1
                if not self.store.one_server:
                    await self.queue.release(task_id)
                return
        if outcome.retryable and attempt < record.max_attempts:
            delay = _backoff(record.retry_backoff_s, record.retry_backoff_max_s, attempt)
            due = now_ms() + int(delay * 1000)
            await writer.transition(
                TaskState.QUEUED,
                "requeued",
                {
                    "reason": "retry",
                    "attempt": attempt,
                    "delay_ms": int(delay * 1000),
                    **_brief(outcome.data),
                },
                new_epoch=writer.epoch + 1,
                fields={**fields, "lease_owner": "", "lease_deadline_ms": ""},
            )
            await self.queue.schedule_retry(task_id, run.record.lane, due_ms=due)
            self._counts["retried"] += 1
            return
        data = {**outcome.data, "attempts": attempt}
        try:
            await writer.finish(TaskState.FAILED, data, fields=fields)
        except InvalidEvent:
            await writer.finish(
                TaskState.FAILED, {"error": "failure data not recordable"}, fields=fields
            )
        self._counts["failed"] += 1
        final = await self.store.get_task(task_id)
        await self.queue.dead_letter(final, reason=str(outcome.data.get("error", "failed")))
        await self.queue.release(task_id)

    # -- leases -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            await anyio.sleep(interval)
            for task_id, run in list(self._runs.items()):
                try:
                    await self._heartbeat(task_id, run)
                except AxonError as exc:
                    # Keep trying: if Redis stays away, the lease lapses and the
                    # watchdog (ours or another worker's) sorts it out.
                    _log(f"heartbeat for {task_id} failed: {exc.message}")

    async def _heartbeat(self, task_id: str, run: _Run) -> None:
        deadline = now_ms() + int(self.settings.lease_timeout_s * 1000)
        reply = await self.store.run_script(
            lua.HEARTBEAT, [self.store.keys.task(task_id)], [run.writer.epoch, deadline]
        )
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status != "ok":
            run.stop(StopReason.LEASE_LOST, 0.0)
            return
        await self.queue.extend(task_id, deadline)
        if reply[1] in (b"1", "1"):
            run.stop(StopReason.CANCELED, self.settings.cancel_grace_s)

    async def _watchdog_loop(self) -> None:
        interval = self.settings.watchdog_interval_s
        while True:
            try:
                await self.watchdog.sweep(now=now_ms())
            except AxonError as exc:
                _log(f"watchdog sweep failed: {exc.message}")
            # Jitter below the interval keeps sweeps spread out without stretching the
            # worst case: a dead worker's task is taken over by lease + one interval.
            await anyio.sleep(interval * random.uniform(0.5, 1.0))  # noqa: S311 - jitter

    async def _cancel_reason(self, task_id: str) -> str:
        """The reason the canceller gave (kept on the record), or the generic one."""
        try:
            record = await self.store.get_task(task_id)
        except AxonError:
            return "cancel requested"
        return record.cancel_reason or "cancel requested"

    async def _cancel_listener(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Stop runs named on the cancel channel; resubscribe after a lost connection."""
        started = False
        while True:
            try:
                await self._listen_for_cancels(task_status if not started else None)
                return
            except (RedisError, OSError) as exc:
                metrics.redis_error()
                _log(f"cancel channel lost ({exc!r}); resubscribing")
            started = True
            await anyio.sleep(1.0)

    async def _listen_for_cancels(self, task_status: anyio.abc.TaskStatus[None] | None) -> None:
        channel = self.store.keys.cancel_channel()
        blocking = self.store.blocking
        if isinstance(blocking, RedisCluster):
            # PUBLISH reaches every node of a cluster, so any one node will do; redis-py's
            # cluster Pub/Sub would route the channel by slot instead.
            await blocking.initialize()
            blocking = node_client(blocking.get_random_node())
        pubsub = blocking.pubsub()
        try:
            await pubsub.subscribe(channel)
            if task_status is not None:
                task_status.started()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None:
                    continue
                data = message.get("data")
                task_id = data.decode() if isinstance(data, bytes) else str(data)
                run = self._runs.get(task_id)
                if run is not None:
                    run.stop(StopReason.CANCELED, self.settings.cancel_grace_s)
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                if blocking is not self.store.blocking:
                    await blocking.aclose()


def _take_free(slots: anyio.Semaphore) -> int:
    """Acquire every slot of ``slots`` that is free right now; returns how many."""
    taken = 0
    while True:
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            return taken
        taken += 1


async def _acquire(semaphore: anyio.Semaphore) -> None:
    """``semaphore.acquire()`` without its scheduling checkpoint when a slot is free
    (about 6 µs a run on the worker's hot path)."""
    try:
        semaphore.acquire_nowait()
    except anyio.WouldBlock:
        await semaphore.acquire()


def _backoff(base_s: float, max_s: float, attempt: int) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**(attempt-1)))."""
    return random.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))  # noqa: S311 - jitter


def _brief(data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error")
    return {"error": str(error)[:500]} if error is not None else {}


def _log(message: str) -> None:
    _logger.warning(message)
