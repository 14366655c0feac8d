"""The store against real servers: task records, the append script, reads and waits."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from axon.chain import GENESIS, ChainHead, verify_chain
from axon.errors import (
    EventsUnavailable,
    Fenced,
    IllegalTransition,
    InvalidTaskId,
    InvalidTaskSpec,
    StaleHead,
    TaskExists,
    TaskNotFound,
    TaskTerminal,
)
from axon.events import GENESIS_HASH, build_event, decode_event, encode_data, event_hash
from axon.records import TRANSITIONS, TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store, Transition

pytestmark = pytest.mark.anyio

SPEC = TaskSpec(tenant="acme", adapter="mock", args={"n": 1}, name="demo")
ALL_STATES = list(TaskState)


def built(task: str, head: ChainHead, *kinds: str) -> list[tuple[str, bytes]]:
    """Events of the given kinds continuing ``head``, as the writer would build them."""
    out = []
    seq, prev = head.seq, head.hash
    for kind in kinds:
        seq += 1
        raw = build_event(task=task, seq=seq, prev=prev, ts=1, kind=kind, data=encode_data({}))
        prev = event_hash(raw)
        out.append((kind, raw))
    return out


async def append(
    store: Store,
    task: str,
    *kinds: str,
    epoch: int | None = None,
    transition: Transition | None = None,
) -> ChainHead:
    """Append events of ``kinds`` at the current head, at the task's epoch unless given."""
    head = await store.head(task)
    if epoch is None:
        epoch = (await store.get_task(task)).epoch
    return await store.append_built(
        task, built(task, head, *kinds), expected=head, epoch=epoch, transition=transition
    )


async def test_create_task_writes_record_and_first_event(store: Store) -> None:
    """A new task is queued, at epoch 0, with a one-event log whose first event is `queued`."""
    record = await store.create_task(SPEC)
    assert record.state is TaskState.QUEUED
    assert (record.tenant, record.adapter, record.args, record.name) == (
        "acme",
        "mock",
        {"n": 1},
        "demo",
    )
    assert (record.epoch, record.attempt, record.events, record.head_seq) == (0, 0, 1, 1)
    (first,) = await store.read(record.id)
    assert first.seq == 1
    assert first.kind == "queued"
    event = decode_event(first.raw)
    assert event.prev == GENESIS_HASH
    assert event.task == record.id
    assert event.data == {"adapter": "mock", "lane": "default", "attempt": 0, "name": "demo"}
    assert record.head_hash == event_hash(first.raw)
    assert record.event_bytes == len(first.raw)


async def test_create_task_rejects_taken_id(store: Store) -> None:
    """Creating a task under an id that exists fails with TaskExists and changes nothing."""
    record = await store.create_task(SPEC, task_id="fixed-id")
    with pytest.raises(TaskExists):
        await store.create_task(TaskSpec(tenant="other", adapter="shell"), task_id="fixed-id")
    assert await store.get_task("fixed-id") == record


@pytest.mark.parametrize(
    "spec",
    [
        TaskSpec(tenant="", adapter="mock"),
        TaskSpec(tenant="a b", adapter="mock"),
        TaskSpec(tenant="acme", adapter="Mock"),
        TaskSpec(tenant="acme", adapter="mock", lane="high priority"),
        TaskSpec(tenant="acme", adapter="mock", max_attempts=0),
        TaskSpec(tenant="acme", adapter="mock", timeout_s=0),
        TaskSpec(tenant="acme", adapter="mock", args={"x": "y" * (1 << 20)}),
        TaskSpec(tenant="acme", adapter="mock", metadata={"x": "y" * (1 << 20)}),
        TaskSpec(tenant="acme", adapter="mock", name=""),
    ],
)
async def test_create_task_rejects_bad_spec(store: Store, spec: TaskSpec) -> None:
    """Malformed specs are refused with InvalidTaskSpec before anything is written."""
    with pytest.raises(InvalidTaskSpec):
        await store.create_task(spec, task_id="never")
    with pytest.raises(TaskNotFound):
        await store.get_task("never")


@pytest.mark.parametrize("task_id", ["", "has space", "{brace}", "x" * 65, "tab\t"])
async def test_bad_task_ids_are_rejected(store: Store, task_id: str) -> None:
    """Ids that could break the hash tag or the key layout are refused."""
    with pytest.raises(InvalidTaskId):
        await store.head(task_id)
    with pytest.raises(InvalidTaskId):
        await store.create_task(SPEC, task_id=task_id)


async def test_unknown_task_is_not_found(store: Store) -> None:
    """Every per-task operation on a missing task says TaskNotFound."""
    with pytest.raises(TaskNotFound):
        await store.get_task("missing")
    with pytest.raises(TaskNotFound):
        await store.head("missing")
    with pytest.raises(TaskNotFound):
        await store.read("missing")
    with pytest.raises(TaskNotFound):
        await store.request_cancel("missing")
    with pytest.raises(TaskNotFound):
        await store.append_built(
            "missing", built("missing", GENESIS, "step"), expected=GENESIS, epoch=0
        )


async def test_append_moves_head_and_counters(store: Store) -> None:
    """A batch lands contiguously after the head; head, event and byte counters follow."""
    record = await store.create_task(SPEC)
    head = await append(store, record.id, "step", "step", "log")
    assert head.seq == 4
    events = await store.read(record.id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [e.kind for e in events] == ["queued", "step", "step", "log"]
    assert verify_chain([e.raw for e in events], expected_head=head) == head
    after = await store.get_task(record.id)
    assert (after.head_seq, after.head_hash, after.events) == (4, head.hash, 4)
    assert after.event_bytes == sum(len(e.raw) for e in events)


async def test_stale_head_rejects_whole_batch(store: Store) -> None:
    """A batch built on an old head is refused with the current head, and writes nothing."""
    record = await store.create_task(SPEC)
    old = await store.head(record.id)
    await append(store, record.id, "step")
    with pytest.raises(StaleHead) as caught:
        await store.append_built(record.id, built(record.id, old, "a", "b"), expected=old, epoch=0)
    current = await store.head(record.id)
    assert caught.value.details["head_seq"] == current.seq == 2
    assert caught.value.details["head_hash"] == current.hash
    assert len(await store.read(record.id)) == 2


async def test_stale_epoch_is_fenced_and_writes_nothing(store: Store) -> None:
    """After a re-claim raised the epoch, the old writer's batch is refused with Fenced."""
    record = await store.create_task(SPEC)
    claim = Transition(to=TaskState.RUNNING, new_epoch=1, fields={"lease_owner": "w1"})
    await append(store, record.id, "claimed", epoch=0, transition=claim)
    await append(store, record.id, "requeued", epoch=1, transition=Transition(to=TaskState.QUEUED))
    reclaim = Transition(to=TaskState.RUNNING, new_epoch=2, fields={"lease_owner": "w2"})
    await append(store, record.id, "claimed", epoch=1, transition=reclaim)
    before = await store.get_task(record.id)
    assert (before.epoch, before.lease_owner) == (2, "w2")
    head = await store.head(record.id)
    with pytest.raises(Fenced) as caught:
        await store.append_built(record.id, built(record.id, head, "step"), expected=head, epoch=1)
    assert caught.value.details["current_epoch"] == 2
    assert await store.get_task(record.id) == before


async def test_new_epoch_must_rise(store: Store) -> None:
    """A transition may not lower or repeat the fencing token."""
    record = await store.create_task(SPEC)
    with pytest.raises(Exception, match="new epoch"):
        await append(
            store, record.id, "claimed", transition=Transition(to=TaskState.RUNNING, new_epoch=0)
        )
    assert (await store.get_task(record.id)).state is TaskState.QUEUED


@pytest.mark.parametrize("source", ALL_STATES)
@pytest.mark.parametrize("target", ALL_STATES)
async def test_state_machine_enforced_in_store(
    store: Store, source: TaskState, target: TaskState
) -> None:
    """Every (state, target) pair is accepted exactly when the transition table allows it."""
    record = await store.create_task(SPEC)
    epoch = 0
    # Drive the task to `source` along legal edges.
    if source is not TaskState.QUEUED:
        await append(
            store, record.id, "claimed", transition=Transition(to=TaskState.RUNNING, new_epoch=1)
        )
        epoch = 1
    if source.terminal:
        await append(store, record.id, source.value, epoch=epoch, transition=Transition(to=source))
    assert (await store.get_task(record.id)).state is source
    before = await store.get_task(record.id)
    kind = target.value if target.terminal else "moved"
    move = Transition(to=target)
    if source.terminal:
        with pytest.raises(TaskTerminal):
            await append(store, record.id, kind, epoch=epoch, transition=move)
    elif target in TRANSITIONS[source]:
        await append(store, record.id, kind, epoch=epoch, transition=move)
        after = await store.get_task(record.id)
        assert after.state is target
        assert (after.finished_ms is not None) == target.terminal
        return
    else:
        with pytest.raises(IllegalTransition):
            await append(store, record.id, kind, epoch=epoch, transition=move)
    assert await store.get_task(record.id) == before


async def test_terminal_task_accepts_no_appends(store: Store) -> None:
    """Once succeeded, the task refuses plain appends, and its log stays as it was."""
    record = await store.create_task(SPEC)
    await append(
        store, record.id, "claimed", transition=Transition(to=TaskState.RUNNING, new_epoch=1)
    )
    await append(
        store, record.id, "succeeded", epoch=1, transition=Transition(to=TaskState.SUCCEEDED)
    )
    with pytest.raises(TaskTerminal):
        await append(store, record.id, "late", epoch=1)
    with pytest.raises(TaskTerminal):
        await store.request_cancel(record.id)
    events = await store.read(record.id)
    assert [e.kind for e in events] == ["queued", "claimed", "succeeded"]


@pytest.mark.parametrize(
    ("kinds", "target"),
    [
        (("succeeded", "log"), TaskState.SUCCEEDED),  # terminal event not last
        (("log",), TaskState.FAILED),  # terminal state without its event
        (("failed",), None),  # terminal event without the state
        (("canceled",), TaskState.FAILED),  # mismatched terminal event
    ],
)
async def test_terminal_event_and_state_go_together(
    store: Store, kinds: tuple[str, ...], target: TaskState | None
) -> None:
    """The script refuses batches where the terminal event and terminal state disagree."""
    record = await store.create_task(SPEC)
    await append(
        store, record.id, "claimed", transition=Transition(to=TaskState.RUNNING, new_epoch=1)
    )
    before = await store.get_task(record.id)
    move = None if target is None else Transition(to=target)
    with pytest.raises(Exception, match="terminal"):
        await append(store, record.id, *kinds, epoch=1, transition=move)
    assert await store.get_task(record.id) == before


async def test_read_pages_by_seq(store: Store) -> None:
    """Reading after any seq returns exactly the later events, in bounded pages."""
    record = await store.create_task(SPEC)
    await append(store, record.id, *(["step"] * 24))
    all_events = await store.read(record.id, limit=1000)
    assert [e.seq for e in all_events] == list(range(1, 26))
    for after in (0, 1, 10, 24, 25):
        page = await store.read(record.id, after_seq=after, limit=7)
        assert [e.seq for e in page] == list(range(after + 1, min(after + 7, 25) + 1))
    collected = [e async for e in store.iter_events(record.id, after_seq=3, page_size=5)]
    assert [e.raw for e in collected] == [e.raw for e in all_events[3:]]


async def test_read_reports_trimmed_events(store: Store) -> None:
    """A cursor whose next events were trimmed from Redis gets EventsUnavailable, not silence."""
    record = await store.create_task(SPEC)
    await append(store, record.id, "a", "b", "c", "d")
    await store.redis.xtrim(store.keys.events(record.id), minid="4-0", approximate=False)
    with pytest.raises(EventsUnavailable) as caught:
        await store.read(record.id, after_seq=1)
    assert caught.value.details["first_available"] == 4
    assert [e.seq for e in await store.read(record.id, after_seq=3)] == [4, 5]
    await store.redis.xtrim(store.keys.events(record.id), maxlen=0, approximate=False)
    with pytest.raises(EventsUnavailable):
        await store.read(record.id, after_seq=3)
    assert await store.read(record.id, after_seq=5) == []


async def test_wait_events_wakes_on_append(store: Store) -> None:
    """A blocked wait returns the new events as soon as they are appended."""
    record = await store.create_task(SPEC)
    seen: list[int] = []

    async def waiter() -> None:
        events = await store.wait_events(record.id, after_seq=1, timeout_ms=10_000)
        seen.extend(e.seq for e in events)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            # The waiter may block before or after this append; either way it must see seq 2.
            await append(store, record.id, "step")
    assert seen == [2]


async def test_wait_events_times_out_empty(store: Store) -> None:
    """A wait with nothing new returns an empty list after its timeout."""
    record = await store.create_task(SPEC)
    assert await store.wait_events(record.id, after_seq=1, timeout_ms=50) == []


async def test_request_cancel_sets_flag(store: Store) -> None:
    """Cancelling a live task raises its flag and reports the state it had."""
    record = await store.create_task(SPEC)
    assert await store.request_cancel(record.id) is TaskState.QUEUED
    assert (await store.get_task(record.id)).cancel_requested


async def test_keys_share_one_slot(store: Store) -> None:
    """All keys of a task hash to the same cluster slot (the hash tag works)."""
    from redis.crc import key_slot

    keys = [store.keys.task("t_abc"), store.keys.events("t_abc")]
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_store_works_on_a_plain_redis_py_client(
    make_settings: Callable[..., Settings],
) -> None:
    """A Store on a caller's own client (redis-py's reply parsing intact) reads the same."""
    settings = make_settings()
    url = str(settings.redis_url)
    client: Redis | RedisCluster
    client = RedisCluster.from_url(url) if settings.redis_cluster else Redis.from_url(url)
    try:
        store = Store(client, settings=settings)
        record = await store.create_task(SPEC)
        head = await append(store, record.id, "a", "b")
        events = await store.read(record.id)
        assert [e.kind for e in events] == ["queued", "a", "b"]
        verify_chain([e.raw for e in events], expected_head=head)
        waited = await store.wait_events(record.id, after_seq=1, timeout_ms=1000)
        assert [e.raw for e in waited] == [e.raw for e in events[1:]]
    finally:
        await client.aclose()


async def test_replayed_append_is_idempotent(store: Store) -> None:
    """A batch sent twice (a client retry after a lost reply) lands once and reports success."""
    record = await store.create_task(SPEC)
    head = await store.head(record.id)
    batch = built(record.id, head, "a", "b")
    claim = Transition(to=TaskState.RUNNING, new_epoch=1)
    first = await store.append_built(record.id, batch, expected=head, epoch=0, transition=claim)
    again = await store.append_built(record.id, batch, expected=head, epoch=0, transition=claim)
    assert first == again
    assert [e.kind for e in await store.read(record.id)] == ["queued", "a", "b"]
    done = built(record.id, first, "succeeded")
    fin = Transition(to=TaskState.SUCCEEDED)
    await store.append_built(record.id, done, expected=first, epoch=1, transition=fin)
    # The replay of a terminal batch is still success, not TaskTerminal.
    await store.append_built(record.id, done, expected=first, epoch=1, transition=fin)
    assert len(await store.read(record.id)) == 4


async def test_replayed_create_is_idempotent(store: Store) -> None:
    """The create script run twice with the same first event succeeds once, then reports ok."""
    from axon import lua

    raw = build_event(
        task="t_replay", seq=1, prev=GENESIS_HASH, ts=1, kind="queued", data=encode_data({})
    )
    keys = [store.keys.task("t_replay"), store.keys.events("t_replay")]
    args = ["queued", raw, event_hash(raw), 1, "tenant", "acme", "adapter", "mock"]
    assert (await store.run_script(lua.CREATE, keys, args))[0] == b"ok"
    assert (await store.run_script(lua.CREATE, keys, args))[0] == b"ok"
    with pytest.raises(TaskExists):
        await store.create_task(SPEC, task_id="t_replay")
    assert len(await store.read("t_replay")) == 1


async def test_create_task_returns_the_record_it_stored(store: Store) -> None:
    """The record create_task builds without a read equals the one read back, every
    optional field set (an int timeout and nested args included)."""
    spec = TaskSpec(
        tenant="acme",
        adapter="mock",
        args={"n": [1, {"a": None}], "s": "é"},
        lane="low",
        name="full",
        metadata={"k": "v"},
        timeout_s=5,
        max_attempts=3,
        retry_backoff_s=0.25,
        retry_backoff_max_s=7.5,
    )
    for one in (spec, SPEC, TaskSpec(tenant="t", adapter="mock")):
        record = await store.create_task(one)
        assert await store.get_task(record.id) == record
