"""SSE over a real uvicorn server: backfill, live tail, resume, restarts, fan-out, slow clients."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from httpx_sse import aconnect_sse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from axon.apikeys import KeyStore, Role
from axon.chain import verify_chain
from axon.connection import open_store
from axon.embedded import valkey_binary
from axon.queue import Queue
from axon.records import TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store
from axon.writer import EventWriter
from tests import servers
from tests.apiserver import LiveServer
from tests.conftest import Api
from tests.sse_client import Frame, RawStream

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["valkey"], indirect=True)]

SSE = {"accept": "text/event-stream"}


async def new_task(store: Store, tenant: str = "acme") -> EventWriter:
    """A queued task and a writer that appends plain events to it (epoch 0)."""
    record = await Queue(store).submit(TaskSpec(tenant=tenant, adapter="mock"))
    return EventWriter(store, record.id, epoch=0)


async def all_bytes(store: Store, task_id: str) -> list[bytes]:
    return [e.raw async for e in store.iter_events(task_id)]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition of the server thread's state until it holds."""
    with anyio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state lives in another thread
            await anyio.sleep(0.01)


def events_of(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.id is not None]


async def test_backfill_then_live_then_end_after_terminal(make_api: Callable[..., Api]) -> None:
    """A subscriber gets the backlog, then live events as they are appended, and the
    stream ends right after the terminal event; frames carry id, kind and exact bytes."""
    api = make_api()
    writer = await new_task(api.store)
    for i in range(5):
        await writer.emit("step", {"i": i})
    seen: list[tuple[str, str, str]] = []
    async with (
        httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as client,
        aconnect_sse(client, "GET", f"/v1/tasks/{writer.task_id}/events") as source,
    ):
        assert source.response.headers["cache-control"] == "no-store"
        assert source.response.headers["x-accel-buffering"] == "no"
        async for sse in source.aiter_sse():
            if not sse.data:  # the retry hint
                continue
            seen.append((sse.id, sse.event, sse.data))
            if sse.id == "6":  # the backlog is in: now append live
                assert [s[0] for s in seen] == ["1", "2", "3", "4", "5", "6"]
                for i in range(5, 10):
                    await writer.emit("step", {"i": i})
                await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
                await writer.finish(TaskState.SUCCEEDED, {"ok": True})
    stored = await all_bytes(api.store, writer.task_id)
    assert [int(i) for i, _, _ in seen] == list(range(1, len(stored) + 1))
    assert [d.encode() for _, _, d in seen] == stored
    assert seen[-1][1] == "succeeded"
    assert [k for _, k, _ in seen][:2] == ["queued", "step"]
    verify_chain(stored, task=writer.task_id)


async def test_resume_with_last_event_id_gets_every_event_once(
    make_api: Callable[..., Api],
) -> None:
    """Drop the connection mid-stream, resume with Last-Event-ID: every event exactly
    once across both connections, and the concatenation verifies as a chain."""
    api = make_api()
    writer = await new_task(api.store)
    for i in range(20):
        await writer.emit("step", {"i": i})
    received: list[bytes] = []
    last_id = ""
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as client:
        async with aconnect_sse(client, "GET", f"/v1/tasks/{writer.task_id}/events") as source:
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue
                received.append(sse.data.encode())
                last_id = sse.id
                if len(received) == 8:
                    break
        for i in range(20, 30):
            await writer.emit("step", {"i": i})
        await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
        await writer.finish(TaskState.FAILED, {"error": "boom"})
        headers = {"last-event-id": last_id}
        async with aconnect_sse(
            client, "GET", f"/v1/tasks/{writer.task_id}/events?since_seq=1", headers=headers
        ) as source:  # the header wins over since_seq
            async for sse in source.aiter_sse():
                if sse.data:
                    received.append(sse.data.encode())
    assert received == await all_bytes(api.store, writer.task_id)
    verify_chain(received, task=writer.task_id)


async def test_resume_across_server_restart(make_api: Callable[..., Api]) -> None:
    """The server drains mid-stream (the client is told to reconnect), a new server starts
    on the same port, and the resumed stream continues with no gap and no duplicate."""
    api = make_api()
    writer = await new_task(api.store)
    for i in range(10):
        await writer.emit("step", {"i": i})
    stream = await RawStream.open(api.port, f"/v1/tasks/{writer.task_id}/events", key=api.admin)
    frames: list[Frame] = []
    while len(events_of(frames)) < 11:
        batch = await stream.next_frames()
        assert batch is not None
        frames += batch
    await anyio.to_thread.run_sync(api.restart)
    frames += await stream.frames()  # the rest of the first response, to its end
    assert frames[-1].event == "axon.reconnect"
    assert frames[-1].id is None  # a control frame never moves Last-Event-ID
    last = events_of(frames)[-1].id
    assert last == "11"
    for i in range(10, 15):
        await writer.emit("step", {"i": i})
    await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
    await writer.finish(TaskState.SUCCEEDED)
    resumed = await RawStream.open(
        api.port,
        f"/v1/tasks/{writer.task_id}/events",
        key=api.admin,
        headers={"Last-Event-ID": last},
    )
    frames += await resumed.frames()
    data = [f.data for f in events_of(frames)]
    assert data == await all_bytes(api.store, writer.task_id)
    verify_chain([d for d in data if d is not None], task=writer.task_id)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    backlog=st.integers(min_value=0, max_value=40),
    cursor_fraction=st.floats(min_value=0, max_value=1),
    bursts=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=5),
)
async def test_appends_racing_the_handoff_never_gap_or_duplicate(
    make_api: Callable[..., Api], backlog: int, cursor_fraction: float, bursts: list[int]
) -> None:
    """Appends racing a subscriber's attach and its backfill-to-live hand-off (with a
    tiny shared buffer, so both paths are exercised) never produce a gap or a duplicate."""
    api = _shared_api(make_api)
    writer = await new_task(api.store)
    for i in range(backlog):
        await writer.emit("step", {"i": i})
    cursor = int((backlog + 1) * cursor_fraction)
    frames: list[Frame] = []

    async def subscribe() -> None:
        # As a client should: on ``axon.lagged`` resume from the last id received.
        last = str(cursor)
        while True:
            stream = await RawStream.open(
                api.port,
                f"/v1/tasks/{writer.task_id}/events",
                key=api.admin,
                headers={"Last-Event-ID": last},
            )
            got = await stream.frames()
            frames.extend(got)
            last = next((f.id for f in reversed(got) if f.id is not None), last)
            if got[-1].event != "axon.lagged":
                return

    async with anyio.create_task_group() as group:
        group.start_soon(subscribe)
        for size in bursts:  # racing the attach: no waiting for the subscriber
            await writer.emit_many([("step", {"n": n}) for n in range(size)])
            await anyio.lowlevel.checkpoint()
        await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
        await writer.finish(TaskState.SUCCEEDED)
    stored = await all_bytes(api.store, writer.task_id)
    got = events_of(frames)
    assert [int(f.id or 0) for f in got] == list(range(cursor + 1, len(stored) + 1))
    assert [f.data for f in got] == stored[cursor:]


_apis: dict[int, Api] = {}


def _shared_api(make_api: Callable[..., Api]) -> Api:
    """One server per test function, across hypothesis examples."""
    key = id(make_api)
    if key not in _apis:
        _apis.clear()
        _apis[key] = make_api(tail_buffer_events=4)
    return _apis[key]


@pytest.mark.parametrize("spread", [1, 50])
async def test_a_thousand_subscribers_all_get_every_event(
    make_api: Callable[..., Api], spread: int
) -> None:
    """1,000 concurrent subscribers (on one task, or spread over 50) each receive every
    event of their task exactly once, in order."""
    api = make_api()
    writers = [await new_task(api.store) for _ in range(spread)]
    results: dict[int, list[Frame]] = {}

    async def subscriber(n: int) -> None:
        task_id = writers[n % spread].task_id
        stream = await RawStream.open(api.port, f"/v1/tasks/{task_id}/events", key=api.admin)
        results[n] = await stream.frames()

    services = api.server.server.app.state.services
    async with anyio.create_task_group() as group:
        for n in range(1000):
            group.start_soon(subscriber, n)
        await wait_for(lambda: services.tailer.statistics().subscribers == 1000, 60)
        for round_ in range(10):
            for writer in writers:
                await writer.emit("step", {"round": round_})
        for writer in writers:
            await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
            await writer.finish(TaskState.SUCCEEDED)
    stored = {w.task_id: await all_bytes(api.store, w.task_id) for w in writers}
    for n, frames in results.items():
        assert [f.data for f in events_of(frames)] == stored[writers[n % spread].task_id]
    assert services.tailer.statistics().subscribers == 0


async def test_keepalive_comments_while_idle(make_api: Callable[..., Api]) -> None:
    """An idle stream sends the retry hint first, then keep-alive comments."""
    api = make_api(sse_keepalive_s=0.05, sse_retry_ms=1234)
    writer = await new_task(api.store)
    stream = await RawStream.open(api.port, f"/v1/tasks/{writer.task_id}/events", key=api.admin)
    frames: list[Frame] = []
    while sum(1 for f in frames if f.comment == b"keep-alive") < 2:
        batch = await stream.next_frames()
        assert batch is not None
        frames += batch
    assert frames[0].retry == 1234
    assert events_of(frames)[0].event == "queued"
    stream.close()


async def test_finished_task_at_its_head_ends_at_once(make_api: Callable[..., Api]) -> None:
    """Resuming a finished task from its last event returns an empty, ended stream."""
    api = make_api()
    writer = await new_task(api.store)
    await writer.transition(TaskState.CANCELED, "canceled")
    stream = await RawStream.open(
        api.port,
        f"/v1/tasks/{writer.task_id}/events",
        key=api.admin,
        headers={"Last-Event-ID": "2"},
    )
    frames = await stream.frames()
    assert events_of(frames) == []
    assert frames[0].retry is not None


async def test_vanished_client_is_detected(make_api: Callable[..., Api]) -> None:
    """A client that drops its connection is noticed and its subscription released."""
    api = make_api()
    writer = await new_task(api.store)
    services = api.server.server.app.state.services
    stream = await RawStream.open(api.port, f"/v1/tasks/{writer.task_id}/events", key=api.admin)
    await stream.next_frames()
    await wait_for(lambda: services.tailer.statistics().subscribers == 1)
    stream.close()
    await wait_for(lambda: services.tailer.statistics().subscribers == 0)


async def test_slow_client_is_told_it_lagged_and_resumes(make_api: Callable[..., Api]) -> None:
    """A client that stops reading while events pour in falls out of the shared buffer:
    it is sent ``axon.lagged`` and disconnected, and resuming by cursor loses nothing."""
    api = make_api(tail_buffer_events=4)
    writer = await new_task(api.store)
    stream = await RawStream.open(api.port, f"/v1/tasks/{writer.task_id}/events", key=api.admin)
    first = await stream.next_frames()  # live now, at seq 1
    assert first is not None
    blob = "x" * 30_000
    for i in range(400):  # ~12 MB: more than the socket buffers hold
        await writer.emit("chunk", {"i": i, "blob": blob})
    frames = first + await stream.frames()
    assert frames[-1].event == "axon.lagged"
    detail = json.loads(frames[-1].data or b"{}")
    assert detail["code"] == "subscriber_lagged"
    got = events_of(frames)
    assert [int(f.id or 0) for f in got] == list(range(1, len(got) + 1))
    resumed = await RawStream.open(
        api.port,
        f"/v1/tasks/{writer.task_id}/events",
        key=api.admin,
        headers={"Last-Event-ID": got[-1].id or "0"},
    )
    await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
    await writer.finish(TaskState.SUCCEEDED)
    rest = events_of(await resumed.frames())
    assert [f.data for f in got + rest] == await all_bytes(api.store, writer.task_id)


async def test_trimmed_events_are_reported_not_skipped(make_api: Callable[..., Api]) -> None:
    """When events after the cursor are gone from Redis, the stream says so explicitly
    (``axon.unavailable``) instead of jumping over them; NDJSON answers 410."""
    api = make_api()
    writer = await new_task(api.store)
    for i in range(10):
        await writer.emit("step", {"i": i})
    await api.store.redis.xtrim(
        api.store.keys.events(writer.task_id), minid="5-0", approximate=False
    )
    stream = await RawStream.open(api.port, f"/v1/tasks/{writer.task_id}/events", key=api.admin)
    frames = await stream.frames()
    assert events_of(frames) == []
    assert frames[-1].event == "axon.unavailable"
    assert json.loads(frames[-1].data or b"{}")["details"]["first_available"] == 5
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as client:
        reply = await client.get(f"/v1/tasks/{writer.task_id}/events?since_seq=2")
    assert reply.status_code == 410
    assert reply.json()["error"]["code"] == "events_unavailable"


async def test_client_that_stops_reading_is_cut_off(make_api: Callable[..., Api]) -> None:
    """A client that accepts no bytes for longer than the send timeout is disconnected by
    the shared ticker, and its subscription is released (memory cannot pile up behind it)."""
    api = make_api(sse_send_timeout_s=0.5)
    writer = await new_task(api.store)
    services = api.server.server.app.state.services
    stream = await RawStream.open(api.port, f"/v1/tasks/{writer.task_id}/events", key=api.admin)
    await stream.next_frames()
    blob = "x" * 30_000
    for i in range(400):  # ~12 MB that this client never reads
        await writer.emit("chunk", {"i": i, "blob": blob})
    await wait_for(lambda: services.tailer.statistics().aborted == 1)
    await wait_for(lambda: services.tailer.statistics().subscribers == 0)
    stream.close()


def api_redis_errors() -> float:
    """``axon_redis_errors_total{component="api"}`` of this process (the server runs in
    a thread of it)."""
    value = REGISTRY.get_sample_value("axon_redis_errors_total", {"component": "api"})
    return value or 0.0


async def test_stream_survives_a_redis_restart(tmp_path: Path, store: Store) -> None:
    """Redis restarting under a live stream: the stream stays open, the live tail
    reconnects, and the events appended afterwards arrive with no gap or duplicate."""
    with servers.single(valkey_binary(), tmp_path, args=servers.AOF_ARGS) as own:
        # No heal sweep during the test: the tail must recover by resubscribing.
        settings = Settings(redis_url=own.url, sse_keepalive_s=0.2, tail_heal_interval_s=3600)
        async with open_store(settings) as own_store:
            key, _ = await KeyStore(own_store).create("acme", Role.ADMIN)
            writer = await new_task(own_store)
        server = LiveServer(settings).start()
        try:
            services = server.server.app.state.services
            stream = await RawStream.open(
                server.port, f"/v1/tasks/{writer.task_id}/events", key=key
            )
            frames = list(await stream.next_frames() or [])
            errors_before = api_redis_errors()
            await anyio.to_thread.run_sync(own.restart)
            await wait_for(lambda: services.tailer.statistics().reconnects >= 1)
            assert api_redis_errors() > errors_before  # the lost connection is counted
            await wait_for(lambda: services.tailer.connected)
            async with open_store(settings) as own_store:
                writer = EventWriter(own_store, writer.task_id, epoch=0)
                for i in range(5):
                    await writer.emit("step", {"i": i})
                await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
                await writer.finish(TaskState.SUCCEEDED)
                stored = await all_bytes(own_store, writer.task_id)
            with anyio.fail_after(20):
                frames += await stream.frames()
        finally:
            server.stop()
    assert [f.data for f in events_of(frames)] == stored
