"""The event writer against real servers: ordering, coalescing, races, fencing, bad input."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon.chain import verify_chain
from axon.connection import open_store
from axon.errors import (
    EventTooLarge,
    Fenced,
    InvalidEvent,
    StoreUnavailable,
    TaskNotFound,
    TaskTerminal,
)
from axon.events import decode_event
from axon.records import TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store
from axon.writer import EventWriter
from tests.conftest import Backend

pytestmark = pytest.mark.anyio

SPEC = TaskSpec(tenant="acme", adapter="mock")


async def chain_of(store: Store, task_id: str) -> list[bytes]:
    """The task's whole log, verified against the head in its record."""
    raws = [e.raw async for e in store.iter_events(task_id)]
    verify_chain(raws, task=task_id, expected_head=await store.head(task_id))
    return raws


async def test_emit_returns_stored_bytes(store: Store) -> None:
    """emit returns the event's seq and the exact bytes Redis now holds."""
    record = await store.create_task(SPEC)
    writer = EventWriter(store, record.id, epoch=0)
    stored = await writer.emit("progress", {"pct": 10, "msg": "héllo 🌍"})
    assert stored.seq == 2
    (read,) = await store.read(record.id, after_seq=1)
    assert read == stored
    event = decode_event(stored.raw)
    assert (event.kind, event.data) == ("progress", {"pct": 10, "msg": "héllo 🌍"})


async def test_concurrent_emits_coalesce_in_call_order(store: Store) -> None:
    """Emits started together are batched into few script calls, in the order they were made."""
    record = await store.create_task(SPEC)
    writer = EventWriter(store, record.id, epoch=0)
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = (await writer.emit("step", {"i": i})).seq

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(one, i)
    raws = await chain_of(store, record.id)
    assert len(raws) == 301
    stats = writer.statistics()
    assert stats.events == 300
    assert stats.pending == 0
    assert stats.batches < 300  # coalesced
    # seq order is emit-call order (tasks start in order and queue before their first await)
    ordered = [decode_event(raw).data["i"] for raw in raws[1:]]
    assert ordered == sorted(ordered)
    assert sorted(results.values()) == list(range(2, 302))


async def test_emit_many_is_contiguous(store: Store) -> None:
    """A group from emit_many lands as consecutive seqs even while others emit."""
    record = await store.create_task(SPEC)
    writer = EventWriter(store, record.id, epoch=0)
    groups: list[list[int]] = []

    async def group(g: int) -> None:
        stored = await writer.emit_many([("part", {"g": g, "k": k}) for k in range(5)])
        groups.append([s.seq for s in stored])

    async with anyio.create_task_group() as tg:
        for g in range(20):
            tg.start_soon(group, g)
            tg.start_soon(writer.emit, "noise", None)
    for seqs in groups:
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert len(await chain_of(store, record.id)) == 1 + 20 * 5 + 20


async def test_many_writers_race_to_one_chain(make_settings: Callable[..., Settings]) -> None:
    """Independent writers (separate connections) on one task leave one contiguous chain."""
    settings = make_settings()
    async with open_store(settings) as admin:
        record = await admin.create_task(SPEC)
        emitted: list[tuple[int, int]] = []

        async def writer_process(w: int) -> None:
            async with open_store(settings) as own:
                writer = EventWriter(own, record.id, epoch=0)
                for i in range(25):
                    await writer.emit("step", {"w": w, "i": i})
                    emitted.append((w, i))

        async with anyio.create_task_group() as tg:
            for w in range(6):
                tg.start_soon(writer_process, w)
        raws = await chain_of(admin, record.id)
        seen = [(decode_event(r).data["w"], decode_event(r).data["i"]) for r in raws[1:]]
        assert sorted(seen) == sorted(emitted)  # nothing lost, nothing duplicated
        assert len(set(seen)) == 6 * 25
        for w in range(6):  # each writer's own events stay in its order
            assert [i for ww, i in seen if ww == w] == list(range(25))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    plan=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=6), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_any_interleaving_leaves_contiguous_chain(
    make_settings: Callable[..., Settings], plan: list[list[int]], seed: int
) -> None:
    """Writers emitting groups of any sizes, in any interleaving, form one valid chain."""

    async def scenario() -> None:
        settings_ = make_settings()
        rng = random.Random(seed)
        async with open_store(settings_) as admin:
            record = await admin.create_task(SPEC)
            writers = [EventWriter(admin, record.id, epoch=0) for _ in plan]

            async def run(w: int, sizes: list[int]) -> None:
                for n, size in enumerate(sizes):
                    if rng.random() < 0.5:
                        await anyio.lowlevel.checkpoint()
                    await writers[w].emit_many(
                        [("x", {"w": w, "n": n, "k": k}) for k in range(size)]
                    )

            async with anyio.create_task_group() as tg:
                for w, sizes in enumerate(plan):
                    tg.start_soon(run, w, sizes)
            raws = await chain_of(admin, record.id)
            assert len(raws) == 1 + sum(sum(sizes) for sizes in plan)
            data = [decode_event(r).data for r in raws[1:]]
            for i, d in enumerate(data):  # every group contiguous
                if d["k"] > 0:
                    prev = data[i - 1]
                    assert (prev["w"], prev["n"], prev["k"]) == (d["w"], d["n"], d["k"] - 1)

    anyio.run(scenario)


async def test_fenced_writer_writes_nothing(store: Store) -> None:
    """A writer whose epoch went stale is refused, and everything it queued fails with Fenced."""
    record = await store.create_task(SPEC)
    first = EventWriter(store, record.id, epoch=0)
    await first.transition(TaskState.RUNNING, "claimed", {"worker": "w1"}, new_epoch=1)
    assert first.epoch == 1
    await first.transition(TaskState.QUEUED, "reclaimed", {"reason": "lease expired"})
    second = EventWriter(store, record.id, epoch=1)
    await second.transition(TaskState.RUNNING, "claimed", {"worker": "w2"}, new_epoch=2)
    before = await chain_of(store, record.id)
    outcomes: list[BaseException | None] = []

    async def zombie(i: int) -> None:
        try:
            await first.emit("step", {"i": i})
            outcomes.append(None)
        except Fenced as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(zombie, i)
    assert len(outcomes) == 10
    assert all(isinstance(o, Fenced) for o in outcomes)
    assert await chain_of(store, record.id) == before
    await second.emit("step", {"ok": True})  # the current holder still writes


async def test_finish_is_final(store: Store) -> None:
    """finish writes the terminal event with the state; later emits fail with TaskTerminal."""
    record = await store.create_task(SPEC)
    writer = EventWriter(store, record.id, epoch=0)
    await writer.transition(TaskState.RUNNING, "claimed", {}, new_epoch=1)
    done = await writer.finish(TaskState.SUCCEEDED, {"result": 42})
    assert done.kind == "succeeded"
    with pytest.raises(TaskTerminal):
        await writer.emit("late")
    task = await store.get_task(record.id)
    assert task.state is TaskState.SUCCEEDED
    assert task.head_seq == done.seq
    assert task.lease_owner is None


async def test_batch_is_all_or_nothing(store: Store) -> None:
    """When a coalesced batch is refused, none of its events is written and all callers see why."""
    record = await store.create_task(SPEC)
    writer = EventWriter(store, record.id, epoch=5)  # wrong epoch: every batch is fenced
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await writer.emit("step", {"i": i})
        except Fenced as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert len(errors) == 50
    assert len(await chain_of(store, record.id)) == 1


@pytest.mark.parametrize(
    ("kind", "data", "error"),
    [
        ("Bad Kind", {}, InvalidEvent),
        ("", {}, InvalidEvent),
        ("x" * 65, {}, InvalidEvent),
        ("line\nbreak", {}, InvalidEvent),
        ("succeeded", {}, InvalidEvent),  # reserved: only finish() writes it
        ("claimed", {}, InvalidEvent),
        ("step", ["not", "an", "object"], InvalidEvent),
        ("step", "text", InvalidEvent),
        ("step", {"x": object()}, InvalidEvent),
        ("step", {"x": "\ud800"}, InvalidEvent),
        ("step", {"blob": "x" * 2000}, EventTooLarge),
    ],
)
async def test_bad_input_is_typed_and_writes_nothing(
    make_settings: Callable[..., Settings], kind: str, data: object, error: type[Exception]
) -> None:
    """Bad kinds, non-object data and oversized events fail before anything is written."""
    async with open_store(make_settings(max_event_bytes=1024, max_batch_bytes=4096)) as store:
        record = await store.create_task(SPEC)
        writer = EventWriter(store, record.id, epoch=0)
        with pytest.raises(error):
            await writer.emit(kind, data)  # type: ignore[arg-type]
        assert writer.statistics().pending == 0
        assert len(await chain_of(store, record.id)) == 1


async def test_largest_allowed_event_fits(make_settings: Callable[..., Settings]) -> None:
    """An event right at the size limit is accepted; one byte more is EventTooLarge."""
    async with open_store(make_settings(max_event_bytes=1024, max_batch_bytes=4096)) as store:
        record = await store.create_task(SPEC)
        writer = EventWriter(store, record.id, epoch=0)
        low, high = 0, 1024
        while low < high:  # find the largest accepted padding without writing
            mid = (low + high + 1) // 2
            try:
                writer._prepare("step", {"p": "x" * mid})
                low = mid
            except EventTooLarge:
                high = mid - 1
        stored = await writer.emit("step", {"p": "x" * low})
        assert len(stored.raw) <= 1024
        with pytest.raises(EventTooLarge):
            await writer.emit("step", {"p": "x" * (low + 1)})


async def test_unknown_task_is_not_found(store: Store) -> None:
    """A writer for a task that does not exist fails with TaskNotFound."""
    writer = EventWriter(store, "nope", epoch=0)
    with pytest.raises(TaskNotFound):
        await writer.emit("step")


async def test_cancelled_waiter_withdraws_its_event(store: Store) -> None:
    """An emit cancelled before its batch was taken is not written; the others are."""
    record = await store.create_task(SPEC)
    writer = EventWriter(store, record.id, epoch=0)
    drop_scope = anyio.CancelScope()
    writer._leading = True  # as if another caller's batch were in flight: emits must queue

    async def dropper() -> None:
        with drop_scope:
            await writer.emit("drop", {"i": 2})

    async def pending_is(n: int) -> None:
        while writer.statistics().pending != n:  # noqa: ASYNC110 - a counter, bounded by fail_after
            await anyio.sleep(0.001)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.emit, "keep", {"i": 1})
            tg.start_soon(dropper)
            tg.start_soon(writer.emit, "also", {"i": 3})
            await pending_is(3)
            drop_scope.cancel()
            await pending_is(2)
            writer._hand_off()  # the "in-flight" leader finishes and passes the lead on
    kinds = [decode_event(r).kind for r in await chain_of(store, record.id)]
    assert kinds == ["queued", "keep", "also"]


async def test_cancelled_successor_passes_the_lead_on(store: Store) -> None:
    """A waiter handed the lead but cancelled before using it passes it on; nobody hangs."""
    record = await store.create_task(SPEC)
    writer = EventWriter(store, record.id, epoch=0)
    first_scope = anyio.CancelScope()
    writer._leading = True

    async def first() -> None:
        with first_scope:
            await writer.emit("first")

    async def pending_is(n: int) -> None:
        while writer.statistics().pending != n:  # noqa: ASYNC110 - a counter, bounded by fail_after
            await anyio.sleep(0.001)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await pending_is(1)
            tg.start_soon(writer.emit, "second")
            await pending_is(2)
            writer._hand_off()  # lead goes to "first" ...
            first_scope.cancel()  # ... which is cancelled before it runs
    kinds = [decode_event(r).kind for r in await chain_of(store, record.id)]
    # Either the cancellation won (first withdrawn, lead passed on) or the wake-up did
    # (first led and flushed both); never a hang, never a lost "second".
    assert kinds in (["queued", "second"], ["queued", "first", "second"])
    assert not writer._leading


async def test_redis_refusal_fails_the_batch_without_hanging(
    make_settings: Callable[..., Settings], backend: Backend
) -> None:
    """A write Redis refuses (here: OOM under noeviction) fails every caller in the batch."""
    if backend.name != "valkey":
        pytest.skip("changes server memory settings; one server kind is enough")
    async with open_store(make_settings()) as store:
        record = await store.create_task(SPEC)
        writer = EventWriter(store, record.id, epoch=0)
        await writer.emit("before")
        old = await store.redis.config_get("maxmemory*")
        await store.redis.config_set("maxmemory-policy", "noeviction")
        await store.redis.config_set("maxmemory", "1mb")
        errors: list[StoreUnavailable] = []

        async def one(i: int) -> None:
            try:
                await writer.emit("step", {"i": i})
            except StoreUnavailable as exc:
                errors.append(exc)

        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for i in range(5):
                        tg.start_soon(one, i)
        finally:
            for name, value in old.items():
                await store.redis.config_set(str(name), str(value))
        assert len(errors) == 5
        assert "maxmemory" in errors[0].message
        await writer.emit("after")  # the writer recovers once Redis accepts writes again
        kinds = [decode_event(r).kind for r in await chain_of(store, record.id)]
        assert kinds == ["queued", "before", "after"]


async def test_batches_respect_max_batch_bytes(make_settings: Callable[..., Settings]) -> None:
    """Coalesced emits are split so no script call exceeds max_batch_bytes; big groups refuse."""
    settings = make_settings(max_event_bytes=1024, max_batch_bytes=4096)
    async with open_store(settings) as store:
        record = await store.create_task(SPEC)
        writer = EventWriter(store, record.id, epoch=0)
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(writer.emit, "step", {"p": "x" * 700, "i": i})
        raws = await chain_of(store, record.id)
        assert len(raws) == 21
        # ~800-byte events, bounded at 1024 each: at most 4 per 4096-byte call.
        assert writer.statistics().batches >= 5
        with pytest.raises(EventTooLarge, match="max_batch_bytes"):
            await writer.emit_many([("step", {"p": "x" * 700}) for _ in range(5)])
        assert len(await chain_of(store, record.id)) == 21
