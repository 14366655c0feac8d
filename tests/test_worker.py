"""Workers in-process against real servers: claiming, lanes, outcomes, retries, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from axon.adapters.python import Retry, task
from axon.chain import verify_chain
from axon.connection import open_store
from axon.queue import Queue
from axon.records import TaskRecord, TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store
from axon.worker import Worker

pytestmark = pytest.mark.anyio

FAST = {
    "heartbeat_interval_s": 0.2,
    "lease_timeout_s": 1.0,
    "watchdog_interval_s": 0.1,
    "shutdown_grace_s": 0.5,
    "timeout_grace_s": 0.5,
}


@asynccontextmanager
async def running_worker(queue: Queue, **kwargs: Any) -> AsyncIterator[Worker]:
    """A worker running in the background for the duration of the block."""
    worker = Worker(queue, **kwargs)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


async def wait_state(
    store: Store, task_id: str, states: set[TaskState], *, within: float = 10
) -> TaskRecord:
    """Wait until the task reaches one of ``states`` (following its log, no sleeps)."""
    with anyio.fail_after(within):
        after = 0
        while True:
            record = await store.get_task(task_id)
            if record.state in states:
                return record
            events = await store.wait_events(task_id, after_seq=after, timeout_ms=500)
            if events:
                after = events[-1].seq


async def wait_dead_letters(queue: Queue, n: int, *, task_id: str | None = None) -> list[Any]:
    """Wait until ``n`` dead letters exist (the last one for ``task_id`` if given)."""
    with anyio.fail_after(10):
        while True:
            letters = await queue.dead_letters()
            if len(letters) == n and (task_id is None or letters[-1].task_id == task_id):
                return letters
            await anyio.sleep(0.02)


async def kinds(store: Store, task_id: str) -> list[str]:
    """The task's event kinds, after verifying the chain against its head."""
    events = [e async for e in store.iter_events(task_id)]
    verify_chain([e.raw for e in events], expected_head=await store.head(task_id))
    return [e.kind for e in events]


@pytest.fixture
async def queue(make_settings: Callable[..., Settings]) -> AsyncIterator[Queue]:
    """A queue on the backend with fast worker timings."""
    async with open_store(make_settings(**FAST)) as store:
        yield Queue(store)


def spec(**args: Any) -> TaskSpec:
    """A mock task spec with the given args."""
    lane = args.pop("lane", "default")
    max_attempts = args.pop("max_attempts", 1)
    timeout_s = args.pop("timeout_s", None)
    return TaskSpec(
        tenant="acme",
        adapter="mock",
        args=args,
        lane=lane,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        retry_backoff_s=0.05,
    )


async def test_mock_task_runs_to_success(queue: Queue) -> None:
    """A submitted task is claimed, runs, and ends succeeded with an intact chain."""
    async with running_worker(queue) as worker:
        record = await queue.submit(spec(count=3))
        done = await wait_state(queue.store, record.id, {TaskState.SUCCEEDED})
    assert await kinds(queue.store, record.id) == [
        "queued",
        "claimed",
        "tick",
        "tick",
        "tick",
        "succeeded",
    ]
    assert (done.attempt, done.epoch, done.lease_owner) == (1, 1, None)
    assert done.wall_ms >= 0
    assert worker.statistics().completed == 1
    assert await queue.depth() == {"high": 0, "default": 0, "low": 0, "inflight": 0, "delayed": 0}


async def test_failure_goes_to_dead_letters_and_replays(queue: Queue) -> None:
    """A failed task is recorded as a dead letter; replay submits it again as a new task."""
    async with running_worker(queue):
        record = await queue.submit(spec(count=1, outcome="failed"))
        await wait_state(queue.store, record.id, {TaskState.FAILED})
        (letter,) = await wait_dead_letters(queue, 1)
        assert (letter.task_id, letter.reason, letter.attempts) == (record.id, "mock failure", 1)
        again = await queue.replay(letter.id)
        assert again.metadata["replay_of"] == record.id
        await wait_state(queue.store, again.id, {TaskState.FAILED})
        letters = await wait_dead_letters(queue, 1, task_id=again.id)
    assert [x.task_id for x in letters] == [again.id]


async def test_retryable_failure_is_retried_with_backoff(queue: Queue) -> None:
    """A retryable failure re-runs the task (attempt 2) after a backoff, in the same log."""
    async with running_worker(queue):
        record = await queue.submit(spec(count=1, fail_attempts=1, max_attempts=3))
        done = await wait_state(queue.store, record.id, {TaskState.SUCCEEDED, TaskState.FAILED})
    assert done.state is TaskState.SUCCEEDED
    assert done.attempt == 2
    assert await kinds(queue.store, record.id) == [
        "queued", "claimed", "tick", "requeued", "claimed", "tick", "succeeded",
    ]  # fmt: skip


async def test_retries_exhausted_fail(queue: Queue) -> None:
    """When every attempt fails retryably, the task fails after max_attempts runs."""
    async with running_worker(queue):
        record = await queue.submit(spec(count=0, fail_attempts=5, max_attempts=2))
        done = await wait_state(queue.store, record.id, {TaskState.FAILED})
    assert done.attempt == 2
    assert (await kinds(queue.store, record.id)).count("claimed") == 2


async def test_timeout_ends_timed_out(queue: Queue) -> None:
    """A task running past its timeout is stopped and ends timed_out."""
    async with running_worker(queue):
        record = await queue.submit(spec(forever=True, interval_ms=20, timeout_s=0.3))
        await wait_state(queue.store, record.id, {TaskState.TIMED_OUT})
    assert (await kinds(queue.store, record.id))[-1] == "timed_out"


async def test_cancel_running_task(queue: Queue) -> None:
    """Cancelling a running task stops it and writes canceled last."""
    async with running_worker(queue):
        record = await queue.submit(spec(forever=True, interval_ms=10))
        await wait_state(queue.store, record.id, {TaskState.RUNNING})
        assert await queue.cancel(record.id) is TaskState.RUNNING
        await wait_state(queue.store, record.id, {TaskState.CANCELED}, within=5)
    assert (await kinds(queue.store, record.id))[-1] == "canceled"


async def test_cancel_queued_task_never_runs(queue: Queue) -> None:
    """A task cancelled while queued ends canceled without ever being claimed."""
    record = await queue.submit(spec(count=1))
    assert await queue.cancel(record.id) is TaskState.CANCELED
    async with running_worker(queue):
        other = await queue.submit(spec(count=1))
        await wait_state(queue.store, other.id, {TaskState.SUCCEEDED})
    assert await kinds(queue.store, record.id) == ["queued", "canceled"]
    assert (await queue.depth())["default"] == 0


async def test_lanes_are_served_by_priority(queue: Queue) -> None:
    """With work waiting in every lane, a single-slot worker takes high, then default, then low."""
    order = []
    for lane in ("low", "default", "high", "low", "high"):
        # Each run lasts a few ms, so start times (ms resolution) never tie.
        order.append((await queue.submit(spec(count=1, interval_ms=3, lane=lane))).id)
    async with running_worker(queue, concurrency=1):
        for task_id in order:
            await wait_state(queue.store, task_id, {TaskState.SUCCEEDED})
    started = {}
    for task_id in order:
        record = await queue.store.get_task(task_id)
        started[task_id] = record.started_ms or 0
    lanes = [(await queue.store.get_task(t)).lane for t in sorted(order, key=lambda t: started[t])]
    assert lanes == ["high", "high", "default", "low", "low"]


async def test_lane_fairness_reverses_every_nth_claim(queue: Queue) -> None:
    """Every lane_fairness-th claim scans lanes lowest first, so low work is never starved."""
    fairness = queue.settings.lane_fairness
    orders = [queue.lane_order(n) for n in range(2 * fairness)]
    assert orders.count(["low", "default", "high"]) == 2
    assert orders[fairness - 1] == ["low", "default", "high"]


async def test_unknown_lane_is_refused(queue: Queue) -> None:
    """Submitting to a lane that does not exist is a clear InvalidTaskSpec."""
    from axon.errors import InvalidTaskSpec

    with pytest.raises(InvalidTaskSpec, match="unknown lane"):
        await queue.submit(spec(lane="urgent"))


@task("test.add")
async def _add(ctx: Any, a: int, b: int) -> int:
    await ctx.progress(0.5, "adding")
    return a + b


@task("test.flaky")
async def _flaky(ctx: Any) -> str:
    if ctx.attempt < 2:
        raise Retry("not yet")
    return "ok"


@task("test.sleepy")
async def _sleepy(ctx: Any) -> None:
    await ctx.emit("started")
    await anyio.sleep(60)


async def test_python_function_result_and_retry(queue: Queue) -> None:
    """Registered functions run with kwargs; Retry re-runs them; results land in the event."""
    async with running_worker(queue):
        added = await queue.submit(
            TaskSpec(
                tenant="t",
                adapter="python",
                args={"function": "test.add", "kwargs": {"a": 2, "b": 3}},
            )
        )
        flaky = await queue.submit(
            TaskSpec(
                tenant="t",
                adapter="python",
                args={"function": "test.flaky"},
                max_attempts=3,
                retry_backoff_s=0.05,
            )
        )
        await wait_state(queue.store, added.id, {TaskState.SUCCEEDED})
        await wait_state(queue.store, flaky.id, {TaskState.SUCCEEDED})
    events = [e async for e in queue.store.iter_events(added.id)]
    from axon.events import decode_event

    assert decode_event(events[-1].raw).data == {"result": 5}
    assert [e.kind for e in events] == ["queued", "claimed", "progress", "succeeded"]


async def test_python_task_cancel(queue: Queue) -> None:
    """Cancelling a running python task cancels the coroutine and writes canceled last."""
    async with running_worker(queue):
        record = await queue.submit(
            TaskSpec(tenant="t", adapter="python", args={"function": "test.sleepy"})
        )
        await wait_state(queue.store, record.id, {TaskState.RUNNING})
        with anyio.fail_after(5):
            while "started" not in [e.kind for e in await queue.store.read(record.id)]:
                await queue.store.wait_events(record.id, after_seq=2, timeout_ms=200)
        await queue.cancel(record.id)
        await wait_state(queue.store, record.id, {TaskState.CANCELED}, within=5)
    assert (await kinds(queue.store, record.id))[-1] == "canceled"


async def test_unknown_adapter_or_function_fails_cleanly(queue: Queue) -> None:
    """A task naming an adapter or function this worker lacks fails with a clear message."""
    async with running_worker(queue):
        a = await queue.submit(TaskSpec(tenant="t", adapter="nope"))
        b = await queue.submit(TaskSpec(tenant="t", adapter="python", args={"function": "missing"}))
        for task_id in (a.id, b.id):
            await wait_state(queue.store, task_id, {TaskState.FAILED})


async def test_graceful_stop_hands_back_running_tasks(queue: Queue) -> None:
    """On stop, a task that does not finish within the grace is handed back, then resumed."""
    record = await queue.submit(spec(forever=True, interval_ms=10))
    async with running_worker(queue) as first:
        await wait_state(queue.store, record.id, {TaskState.RUNNING})
    assert first.statistics().handed_back == 1
    back = await queue.store.get_task(record.id)
    assert back.state is TaskState.QUEUED
    assert (await queue.depth())["default"] == 1
    async with running_worker(queue):
        await wait_state(queue.store, record.id, {TaskState.RUNNING})
        await queue.cancel(record.id)
        await wait_state(queue.store, record.id, {TaskState.CANCELED})
    log = await kinds(queue.store, record.id)
    assert log.count("claimed") == 2
    assert "requeued" in log


Factory = Callable[..., Awaitable[Any]]


async def test_cancel_of_a_task_whose_worker_died_ends_canceled(queue: Queue) -> None:
    """A cancel that reached a dead worker's task is honoured by the watchdog, not re-run."""
    from axon.store import now_ms
    from axon.watchdog import Watchdog
    from axon.writer import EventWriter

    record = await queue.submit(spec(count=1))
    claimed = await queue.claim_batch(1, claim_number=0, deadline_ms=now_ms() - 1)
    assert [(task_id, lane) for task_id, lane, _ in claimed] == [(record.id, "default")]
    # A worker claims it, then dies: its lease is already in the past.
    writer = EventWriter(queue.store, record.id, epoch=0)
    past = str(now_ms() - 1)
    await writer.transition(
        TaskState.RUNNING,
        "claimed",
        {"worker": "dead"},
        new_epoch=1,
        fields={"lease_owner": "dead", "lease_deadline_ms": past, "attempt": "1"},
    )
    assert await queue.cancel(record.id) is TaskState.RUNNING
    await Watchdog(queue).sweep(now=now_ms())
    done = await queue.store.get_task(record.id)
    assert done.state is TaskState.CANCELED
    assert (await kinds(queue.store, record.id))[-1] == "canceled"
    assert (await queue.depth())["inflight"] == 0


async def test_batch_claim_follows_priority_and_fairness(queue: Queue) -> None:
    """A batch claim takes what that many single claims would: fairness claims from the
    lowest lane, the rest highest lane first, oldest first; all land in the in-flight set."""
    from axon.store import now_ms

    ids: dict[str, list[str]] = {"high": [], "default": [], "low": []}
    for lane in ("low", "default", "high", "low", "default", "high", "low", "default"):
        ids[lane].append((await queue.submit(spec(count=0, lane=lane))).id)
    fairness = queue.settings.lane_fairness
    deadline = now_ms() + 60_000
    # Claims fairness-1 .. fairness+3: exactly one of them scans lanes lowest first.
    claims = await queue.claim_batch(5, claim_number=fairness - 1, deadline_ms=deadline)
    for task_id, _, record in claims:  # one server: read in the claim; a cluster: not
        assert (record.id if record else None) == (task_id if queue.store.one_server else None)
    first = [(task_id, lane) for task_id, lane, _ in claims]
    assert first == [
        (ids["low"][0], "low"),
        (ids["high"][0], "high"),
        (ids["high"][1], "high"),
        (ids["default"][0], "default"),
        (ids["default"][1], "default"),
    ]
    # Claims 2f-4 .. 2f+5 include the fairness claim 2f-1; only three tasks are left.
    claims = await queue.claim_batch(10, claim_number=2 * fairness - 4, deadline_ms=deadline)
    rest = [(task_id, lane) for task_id, lane, _ in claims]
    assert rest == [
        (ids["low"][1], "low"),
        (ids["default"][2], "default"),
        (ids["low"][2], "low"),
    ]
    assert await queue.claim_batch(3, claim_number=0, deadline_ms=deadline) == []
    depth = await queue.depth()
    assert depth["inflight"] == 8
    assert depth["high"] == depth["default"] == depth["low"] == 0


async def test_worker_claims_free_slots_in_one_batch(queue: Queue) -> None:
    """A worker with free slots claims several queued tasks at once and runs them all."""
    records = [await queue.submit(spec(count=1)) for _ in range(12)]
    async with running_worker(queue, concurrency=5) as worker:
        for record in records:
            await wait_state(queue.store, record.id, {TaskState.SUCCEEDED})
    assert worker.statistics().claimed == 12
    assert (await queue.depth())["inflight"] == 0
    for record in records:
        assert await kinds(queue.store, record.id) == ["queued", "claimed", "tick", "succeeded"]


_GATE: dict[str, Any] = {}


@task("test.gated")
async def _gated(ctx: Any) -> None:
    """Counts the runs inside it at once, and waits for the test to open the gate."""
    _GATE["now"] += 1
    _GATE["most"] = max(_GATE["most"], _GATE["now"])
    if _GATE["now"] == 3:
        _GATE["full"].set()
    try:
        await _GATE["open"].wait()
    finally:
        _GATE["now"] -= 1


async def test_claim_groups_share_the_concurrency(queue: Queue) -> None:
    """Concurrency 3 in two claim groups (2 + 1 slots): both groups claim, and never
    more than 3 adapters run at once, though all 3 slots fill up."""
    _GATE.update(now=0, most=0, open=anyio.Event(), full=anyio.Event())
    gated = TaskSpec(tenant="acme", adapter="python", args={"function": "test.gated"})
    records = [await queue.submit(gated) for _ in range(7)]
    async with running_worker(queue, concurrency=3) as worker:
        with anyio.fail_after(10):
            await _GATE["full"].wait()  # every slot of both groups is running
        _GATE["open"].set()
        for record in records:
            await wait_state(queue.store, record.id, {TaskState.SUCCEEDED})
    assert _GATE["most"] == 3
    assert worker.statistics().claimed == 7
    assert all(group.claims > 0 for group in worker._groups)
    assert (await queue.depth())["inflight"] == 0


async def test_one_claim_group_runs_everything(make_settings: Callable[..., Settings]) -> None:
    """worker_claim_groups=1 (the behaviour before groups) runs tasks just the same."""
    async with open_store(make_settings(worker_claim_groups=1, **FAST)) as store:
        queue = Queue(store)
        records = [await queue.submit(spec(count=1)) for _ in range(6)]
        async with running_worker(queue, concurrency=4) as worker:
            assert len(worker._groups) == 1
            for record in records:
                await wait_state(store, record.id, {TaskState.SUCCEEDED})
        assert worker.statistics().completed == 6


async def test_submit_indexes_creates_and_enqueues(queue: Queue) -> None:
    """Submit lists the task for its tenant, creates it and queues it: in one script on a
    single server, in three ordered steps on a cluster (keys in different slots)."""
    store = queue.store
    record = await queue.submit(spec(count=0, lane="low"))
    assert store.one_server is not store.settings.redis_cluster
    assert (await store.get_task(record.id)).state is TaskState.QUEUED
    assert await store.redis.zscore(store.keys.tenant_tasks("acme"), record.id) == 0
    assert await store.redis.lrange(store.keys.lane("low"), 0, -1) == [record.id.encode()]
    signals: Any = await store.redis.xrevrange(store.keys.signal(), count=1)
    assert signals[0][1] == {b"t": record.id.encode()}
    # The same id again is refused and queued nowhere a second time.
    from axon.errors import TaskExists

    with pytest.raises(TaskExists):
        await queue.submit(spec(count=0, lane="low"), task_id=record.id)
    assert await store.redis.llen(store.keys.lane("low")) == 1


async def test_finish_with_release_leaves_the_queue_in_the_same_script(queue: Queue) -> None:
    """On a single server a terminal append with release also takes the task out of the
    in-flight set and lists it for the compactor; on a cluster the caller does that."""
    from axon.store import now_ms
    from axon.writer import EventWriter

    store = queue.store
    record = await queue.submit(spec(count=0))
    claims = await queue.claim_batch(1, claim_number=0, deadline_ms=now_ms() + 60_000)
    assert [(task_id, lane) for task_id, lane, _ in claims] == [(record.id, "default")]
    writer = EventWriter(store, record.id, epoch=0)
    await writer.transition(TaskState.RUNNING, "claimed", {"worker": "w"}, new_epoch=1)
    await writer.finish(TaskState.SUCCEEDED, {"ok": True}, release=True)
    inflight = await store.redis.zscore(store.keys.inflight(), record.id)
    finished = await store.redis.zscore(store.keys.finished(), record.id)
    if store.one_server:
        assert inflight is None
        assert finished is not None
    else:
        assert inflight is not None
        assert finished is None
        await queue.release(record.id)
    assert (await queue.depth())["inflight"] == 0
