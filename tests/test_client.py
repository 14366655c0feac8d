"""``axon.Client`` and ``axon.SyncClient`` against a real API server and an in-process worker."""

from __future__ import annotations

import hashlib
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

from axon import ApiError, Client, ServerUnreachable, SyncClient, TaskEvent
from axon.apikeys import Role
from axon.embedded import ServerProcess
from axon.errors import (
    ChainBroken,
    ConfigError,
    CursorAhead,
    EventsUnavailable,
    IdempotencyConflict,
    InvalidTaskId,
    PermissionDenied,
    TaskNotFinished,
    TaskNotFound,
    Unauthenticated,
)
from axon.notes import NoteVerifier
from axon.queue import Queue
from axon.records import TaskSpec, TaskState
from axon.verify import verify_receipt
from axon.worker import Worker
from axon.writer import EventWriter
from tests.conftest import Api, Backend

pytestmark = pytest.mark.anyio

TICKING = {"forever": True, "interval_ms": 20}
"""Mock task args: a tick every 20 ms until canceled."""


@pytest.fixture
def backend(valkey: ServerProcess) -> Backend:
    """The client is about HTTP: its tests run on Valkey only."""
    return Backend(name="valkey", url=valkey.url, cluster=False, aof=True)


@pytest.fixture
async def api(make_api: Callable[..., Api]) -> Api:
    """A live API server with receipts on."""
    return make_api()


@pytest.fixture
async def client(api: Api) -> AsyncIterator[Client]:
    """A client of ``api`` with acme's admin key."""
    async with Client(api.url, api.admin, timeout_s=10) as opened:
        yield opened


async def collect(
    events: AsyncIterator[TaskEvent], on_event: Callable[[TaskEvent], object] | None = None
) -> list[TaskEvent]:
    """Every event of an ``events()`` iteration, calling ``on_event`` on each one."""
    got: list[TaskEvent] = []
    with anyio.fail_after(20):
        async for event in events:
            got.append(event)
            if on_event is not None:
                on_event(event)
    return got


def assert_once_in_order(events: list[TaskEvent], *, first: int = 1) -> None:
    """Seqs run ``first``, ``first + 1``, … without a gap or a duplicate; hashes are right."""
    assert [e.seq for e in events] == list(range(first, first + len(events)))
    for before, after in itertools.pairwise(events):
        assert after.prev == before.hash
    for event in events:
        assert event.hash == hashlib.sha256(event.raw).hexdigest()


def export_bytes(events: list[TaskEvent]) -> bytes:
    return b"".join(e.raw + b"\n" for e in events)


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_start_follow_to_completion_matches_export(
    client: Client, worker: Worker, tmp_path: Path
) -> None:
    """A started task is followed to its terminal event, every event once and in order,
    and what was streamed equals the NDJSON export byte for byte."""
    task = await client.start("mock", {"count": 5, "interval_ms": 5}, name="demo")
    assert (task.state, task.adapter, task.name, task.last_seq) == ("queued", "mock", "demo", 1)
    events = await collect(client.events(task.id))
    assert_once_in_order(events)
    assert [e.kind for e in events] == ["queued", "claimed", *["tick"] * 5, "succeeded"]
    assert events[-1].terminal
    assert events[-1].data == {"ticks": 5}
    assert (events[2].task, events[2].data) == (task.id, {"i": 0})
    path = tmp_path / "events.ndjson"
    assert await client.export(task.id, path) == len(events)
    assert path.read_bytes() == export_bytes(events)
    assert files_in(tmp_path) == ["events.ndjson"]
    done = await client.get(task.id)
    assert (done.state, done.last_seq, done.last_hash) == ("succeeded", 8, events[-1].hash)
    assert await collect(client.events(task.id, follow=False)) == events


async def test_receipt_of_the_export_verifies(
    client: Client, worker: Worker, api: Api, tmp_path: Path
) -> None:
    """The receipt, proofs and checkpoint fetched with the client verify offline with the
    key from ``receipt_key()``, against the client's export."""
    task = await client.start("mock", {"count": 3})
    events = await collect(client.events(task.id))
    path = tmp_path / "events.ndjson"
    await client.export(task.id, path)
    keys = await client.receipt_key()
    assert api.signer is not None
    assert keys[0] == api.signer.verifier_key()
    verifiers = [NoteVerifier.from_verifier_key(key) for key in keys]
    exported = path.read_bytes().splitlines()
    proved = verify_receipt(await client.receipt(task.id), verifiers, events=exported)
    assert f"event: seq {len(events)}, kind 'succeeded'" in "\n".join(proved)
    assert "the task ended: succeeded" in "\n".join(proved)
    proved = verify_receipt(await client.proof(task.id, 3), verifiers)
    assert any(line.startswith("event: seq 3, kind 'tick'") for line in proved)
    checkpoint = await client.checkpoint(task.id)
    assert checkpoint.splitlines()[:2] == [f"axon.test/ci/{task.id}", str(len(events))]


async def test_follow_survives_a_server_restart(
    client: Client, worker: Worker, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The server drains mid-stream (``axon.reconnect``) and comes back on the same port:
    the client reconnects with Last-Event-ID and delivers every event exactly once."""
    caplog.set_level(logging.DEBUG)
    task = await client.start("mock", TICKING)
    restarted = anyio.Event()
    canceled = False

    async def restart() -> None:
        await anyio.to_thread.run_sync(api.restart)
        restarted.set()

    async with anyio.create_task_group() as group:
        events: list[TaskEvent] = []
        async with aclosing(client.events(task.id)) as stream:
            with anyio.fail_after(30):
                async for event in stream:
                    events.append(event)
                    if event.seq == 5:
                        group.start_soon(restart)
                    if restarted.is_set() and not canceled and event.seq > 5:
                        canceled = True
                        assert (await client.cancel(task.id)).cancel_requested
    assert_once_in_order(events)
    assert events[-1].kind == "canceled"
    assert any("the server sent axon.reconnect" in r.getMessage() for r in caplog.records)
    assert api.admin not in caplog.text


class Relay:
    """A TCP relay in front of the API that a test can cut or freeze mid-stream."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._connections: list[tuple[anyio.CancelScope, anyio.Event]] = []

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            self.port = listener.extra(SocketAttribute.local_port)  # noqa: S610 - not Django
            task_status.started()
            await listener.serve(self._relay)

    async def _relay(self, downstream: anyio.abc.SocketStream) -> None:
        frozen = anyio.Event()
        async with (
            downstream,
            await anyio.connect_tcp("127.0.0.1", self.target_port) as upstream,
            anyio.create_task_group() as group,
        ):
            self._connections.append((group.cancel_scope, frozen))
            group.start_soon(self._pipe, downstream, upstream, None)
            group.start_soon(self._pipe, upstream, downstream, frozen)

    @staticmethod
    async def _pipe(
        source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, frozen: anyio.Event | None
    ) -> None:
        async for chunk in source:
            if frozen is not None and frozen.is_set():
                await anyio.sleep_forever()
            await sink.send(chunk)

    def cut(self) -> None:
        """Close every open connection, in the middle of whatever it was sending."""
        for scope, _ in self._connections:
            scope.cancel()

    def freeze(self) -> None:
        """Stop passing server bytes on open connections, leaving them open (a dead peer)."""
        for _, frozen in self._connections:
            frozen.set()


async def test_follow_survives_cut_and_silent_connections(
    api: Api, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection cut mid-response and one that goes silent (no byte for the idle
    timeout, not even a keep-alive) are both reconnected: every event exactly once."""
    caplog.set_level(logging.INFO, logger="axon.client")
    async with anyio.create_task_group() as group:
        relay = Relay(api.port)
        await group.start(relay.run)
        async with (
            Client(api.url, api.admin) as control,  # not through the relay
            Client(
                f"http://127.0.0.1:{relay.port}", api.admin, stream_idle_timeout_s=0.5
            ) as client,
        ):
            task = await control.start("mock", TICKING)

            async def on_event(event: TaskEvent) -> None:
                if event.seq == 5:
                    relay.cut()
                elif event.seq == 15:
                    relay.freeze()
                elif event.seq == 25:
                    await control.cancel(task.id)

            events: list[TaskEvent] = []
            with anyio.fail_after(30):
                async for event in client.events(task.id):
                    events.append(event)
                    await on_event(event)
        group.cancel_scope.cancel()
    assert_once_in_order(events)
    assert events[-1].kind == "canceled"
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "RemoteProtocolError" in reasons or "ReadError" in reasons
    assert "ReadTimeout" in reasons


async def test_a_reader_that_lagged_resumes_without_a_gap(
    make_api: Callable[..., Api], caplog: pytest.LogCaptureFixture
) -> None:
    """A reader that stops reading while events pour in is sent ``axon.lagged``; the
    client reconnects at once and backfills: every event exactly once."""
    caplog.set_level(logging.INFO, logger="axon.client")
    api = make_api(tail_buffer_events=4)
    record = await Queue(api.store).submit(TaskSpec(tenant="acme", adapter="mock"))
    writer = EventWriter(api.store, record.id, epoch=0)
    blob = "x" * 30_000
    events: list[TaskEvent] = []
    async with Client(api.url, api.admin) as client:
        with anyio.fail_after(30):
            async for event in client.events(record.id):
                events.append(event)
                if event.seq == 1:  # live now; stop reading while ~12 MB are written
                    for i in range(400):
                        await writer.emit("chunk", {"i": i, "blob": blob})
                    await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
                    await writer.finish(TaskState.SUCCEEDED)
    assert_once_in_order(events)
    assert (len(events), events[-1].kind) == (403, "succeeded")
    assert any("the server sent axon.lagged" in r.getMessage() for r in caplog.records)


async def test_resume_from_the_middle_verifies_from_there(client: Client, worker: Worker) -> None:
    """``since_seq`` in the middle delivers the rest, with the chain verified from event
    ``since_seq`` (fetched, or a ``prev_hash`` the caller kept); a wrong anchor is caught."""
    task = await client.start("mock", {"count": 4})
    everything = await collect(client.events(task.id))
    rest = await collect(client.events(task.id, since_seq=3))
    assert rest == everything[3:]
    assert_once_in_order(rest, first=4)
    kept = everything[2].hash
    assert await collect(client.events(task.id, 3, prev_hash=kept)) == everything[3:]
    assert await collect(client.events(task.id, 3, follow=False)) == everything[3:]
    with pytest.raises(ChainBroken) as broken:
        await collect(client.events(task.id, 3, prev_hash=everything[1].hash))
    assert (broken.value.seq, broken.value.reason) == (4, "prev_mismatch")
    last = everything[-1].seq
    assert await collect(client.events(task.id, since_seq=last)) == []
    with pytest.raises(CursorAhead):
        await collect(client.events(task.id, since_seq=last + 1))


async def test_a_tampered_event_is_detected(client: Client, api: Api, tmp_path: Path) -> None:
    """An event altered in Redis (still well-formed) breaks the chain at the next event,
    for the live stream, the NDJSON pages and the export (which then writes nothing)."""
    record = await Queue(api.store).submit(TaskSpec(tenant="acme", adapter="mock"))
    writer = EventWriter(api.store, record.id, epoch=0)
    for i in range(5):
        await writer.emit("step", {"i": i})
    key = api.store.keys.events(record.id)
    raws = [e.raw async for e in api.store.iter_events(record.id)]
    assert b'"i":1' in raws[2]
    raws[2] = raws[2].replace(b'"i":1', b'"i":7')
    await api.store.redis.delete(key)
    for seq, raw in enumerate(raws, 1):
        await api.store.redis.xadd(key, {b"e": raw}, id=f"{seq}-0")
    for follow in (True, False):
        seen: list[TaskEvent] = []
        with pytest.raises(ChainBroken) as broken:
            await collect(client.events(record.id, follow=follow), seen.append)
        assert (broken.value.seq, broken.value.reason) == (4, "prev_mismatch")
        assert [e.seq for e in seen] == [1, 2, 3]
    with pytest.raises(ChainBroken):
        await client.export(record.id, tmp_path / "export.ndjson")
    assert files_in(tmp_path) == []


async def test_events_gone_from_redis_are_a_typed_error(client: Client, api: Api) -> None:
    """Events trimmed by hand (neither in Redis nor archived) are ``EventsUnavailable``:
    from the stream's ``axon.unavailable`` frame, and from the export's 410."""
    record = await Queue(api.store).submit(TaskSpec(tenant="acme", adapter="mock"))
    writer = EventWriter(api.store, record.id, epoch=0)
    for i in range(4):
        await writer.emit("step", {"i": i})
    await api.store.redis.xdel(api.store.keys.events(record.id), "1-0", "2-0")
    for follow in (True, False):
        with pytest.raises(EventsUnavailable) as gone:
            await collect(client.events(record.id, follow=follow))
        assert gone.value.details["first_available"] == 3
    assert (await collect(client.events(record.id, since_seq=3, follow=False)))[-1].seq == 5


async def test_errors_are_typed_and_never_show_the_key(
    client: Client, api: Api, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """API errors come back as their ``axon.errors`` classes (another tenant's task is
    ``TaskNotFound`` too), and no message, repr or log line contains the key."""
    caplog.set_level(logging.DEBUG)
    bogus = "axon_000000000000_" + "x" * 43
    async with Client(api.url, bogus) as stranger:
        with pytest.raises(Unauthenticated) as unauthenticated:
            await stranger.get("t_01JD3M6Y0Q2W9C7XG4T5R8N1KV")
        assert bogus not in f"{unauthenticated.value} {unauthenticated.value!r} {stranger!r}"
    with pytest.raises(TaskNotFound) as missing:
        await client.get("t_01JD3M6Y0Q2W9C7XG4T5R8N1KV")
    assert missing.value.details == {"task_id": "t_01JD3M6Y0Q2W9C7XG4T5R8N1KV"}
    with pytest.raises(InvalidTaskId):
        await client.get("../receipt-key")
    async with Client(api.url, await api.key("globex")) as other:
        theirs = await other.start("mock", {"count": 1})
    with pytest.raises(TaskNotFound):
        await client.get(theirs.id)
    with pytest.raises(TaskNotFound):
        await collect(client.events(theirs.id))
    async with Client(api.url, await api.key(role=Role.READER)) as reader:
        with pytest.raises(PermissionDenied) as denied:
            await reader.start("mock")
        assert denied.value.details == {"role": "reader", "required": "writer"}
    with pytest.raises(ApiError) as invalid:
        await client.start("mock", max_attempts=0)
    assert (invalid.value.status, invalid.value.error_code) == (422, "validation_error")

    running = await client.start("mock", TICKING)
    async with aclosing(client.events(running.id)) as stream:
        async for event in stream:
            if event.kind == "tick":
                break
    with pytest.raises(TaskNotFinished) as unfinished:
        await client.receipt(running.id)
    assert unfinished.value.details["state"] == "running"
    await client.cancel(running.id)
    assert (await collect(client.events(running.id)))[-1].kind == "canceled"
    assert "canceled" in "\n".join(
        verify_receipt(
            await client.receipt(running.id),
            [NoteVerifier.from_verifier_key(k) for k in await client.receipt_key()],
        )
    )
    assert api.admin not in caplog.text
    assert bogus not in caplog.text


async def test_an_unreachable_server_is_a_typed_error_quickly() -> None:
    """A closed port is ``ServerUnreachable`` after a few quick retries, naming the URL and
    not the key; ``events()`` gives up after ``reconnect_timeout_s``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "axon_000000000000_secret"
    url = f"http://127.0.0.1:{port}"
    async with Client(url, key, reconnect_timeout_s=0.5) as client:
        with anyio.fail_after(5):
            with pytest.raises(ServerUnreachable) as unreachable:
                await client.get("t_01JD3M6Y0Q2W9C7XG4T5R8N1KV")
            assert url in str(unreachable.value)
            assert key not in str(unreachable.value)
            with pytest.raises(ServerUnreachable) as gone:
                await client.start("mock")
            assert gone.value.details["idempotency_key"]
            with pytest.raises(ServerUnreachable):
                await collect(client.events("t_01JD3M6Y0Q2W9C7XG4T5R8N1KV"))


async def test_configuration_is_checked_and_read_from_the_environment(api: Api) -> None:
    """``from_env`` reads AXON_URL and AXON_API_KEY; malformed settings are ``ConfigError``
    without echoing the key."""
    async with Client.from_env({"AXON_URL": api.url, "AXON_API_KEY": api.admin}) as client:
        assert repr(client) == f"Client(url={api.url!r})"
        assert (await client.list(limit=1)).items == []
    with pytest.raises(ConfigError):
        Client.from_env({"AXON_URL": api.url})
    with pytest.raises(ConfigError) as malformed:
        Client(api.url, "axon_key with a space")
    assert "axon_key" not in str(malformed.value)
    for url in ("localhost:8000", "ftp://host", "http://"):
        with pytest.raises(ConfigError):
            Client(url, api.admin)


async def test_start_with_the_same_idempotency_key_returns_the_same_task(client: Client) -> None:
    """Retrying a start with its idempotency key returns the task it created; the same
    key with other arguments is refused."""
    first = await client.start("mock", {"count": 1}, idempotency_key="order-1234")
    again = await client.start("mock", {"count": 1}, idempotency_key="order-1234")
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await client.start("mock", {"count": 2}, idempotency_key="order-1234")
    assert (await client.start("mock", {"count": 1})).id != first.id


async def test_list_pages_and_events_that_exist_now(client: Client) -> None:
    """``list`` pages through the tenant's tasks, ``iter_tasks`` across all pages, and
    ``events(follow=False)`` of a queued task returns its one event and stops."""
    started = [await client.start("mock", lane="low") for _ in range(5)]
    page = await client.list(limit=2)
    assert len(page.items) == 2
    assert page.next_cursor is not None
    listed = [task.id async for task in client.iter_tasks(page_size=2)]
    assert sorted(listed) == sorted(task.id for task in started)
    assert len((await client.list(state=TaskState.QUEUED, lane="low")).items) == 5
    assert (await client.list(state="running")).items == []
    events = await collect(client.events(started[0].id, follow=False))
    assert [e.kind for e in events] == ["queued"]
    canceled = await client.cancel(started[0].id)
    assert canceled.state == "canceled"
    assert (await client.cancel(started[0].id)).state == "canceled"


async def test_sync_client_from_plain_code(api: Api, worker: Worker) -> None:
    """``SyncClient`` starts, reads and follows a task from synchronous code."""

    def scenario() -> tuple[list[str], str, int]:
        with SyncClient(api.url, api.admin) as sync:
            task = sync.start("mock", {"count": 2})
            assert sync.get(task.id).id == task.id
            kinds = [event.kind for event in sync.events(task.id)]
            first = sync.events(task.id)
            assert next(first).seq == 1
            first.close()  # leaving early releases the stream
            listed = len(list(sync.iter_tasks()))
            return kinds, sync.receipt(task.id), listed

    with anyio.fail_after(20):
        kinds, receipt, listed = await anyio.to_thread.run_sync(scenario)
    assert kinds == ["queued", "claimed", "tick", "tick", "succeeded"]
    assert receipt.startswith("c2sp.org/tlog-proof@v1\n")
    assert listed == 1
