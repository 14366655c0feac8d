"""The compactor on real servers: archive, trim, replay, proofs, replicas and kills."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from axon import merkle
from axon.archive import decode_segment
from axon.chain import verify_chain
from axon.compactor import Compactor
from axon.errors import CompactionBusy
from axon.notes import NoteSigner, NoteVerifier
from axon.queue import Queue
from axon.receipts import Receipts
from axon.records import TaskSpec, TaskState
from axon.settings import Settings
from axon.snapshots import SEGMENT_MAX_EVENTS
from axon.store import Store, now_ms
from axon.verify import verify_receipt
from axon.writer import EventWriter
from tests.conftest import RECEIPT_SIGNER, Api
from tests.sse_client import RawStream

pytestmark = pytest.mark.anyio

SIGNER = NoteSigner.generate("axon.test/compactor")
KEYS = [NoteVerifier.from_verifier_key(SIGNER.verifier_key())]


async def task_with_events(
    store: Store, n: int, *, finish: bool = True, tenant: str = "acme"
) -> EventWriter:
    """A task with ``n`` events in all, finished (succeeded) unless told otherwise."""
    record = await Queue(store).submit(TaskSpec(tenant=tenant, adapter="mock"))
    writer = EventWriter(store, record.id, epoch=0)
    await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
    steps = n - 2 - (1 if finish else 0)
    for start in range(0, steps, 256):
        batch = [("step", {"i": i}) for i in range(start, min(steps, start + 256))]
        await writer.emit_many(batch)
    if finish:
        await writer.finish(TaskState.SUCCEEDED, {"ok": True})
    return writer


async def every_event(store: Store, task_id: str) -> list[bytes]:
    return [e.raw async for e in store.iter_events(task_id)]


def compactor(store: Store, settings: Settings, *, clock: Callable[[], int] = now_ms) -> Compactor:
    return Compactor(store, Receipts(store, SIGNER), settings=settings, clock=clock)


async def test_finished_task_is_archived_trimmed_and_still_replayable(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    """Compacting a finished task empties its Redis stream, records a signed snapshot,
    and every event still reads back exactly once, in order, with a verifying chain;
    proofs of archived events still verify."""
    settings = make_settings()
    writer = await task_with_events(store, SEGMENT_MAX_EVENTS + 100)
    task_id = writer.task_id
    before = await every_event(store, task_id)
    result = await compactor(store, settings).compact_task(task_id, force=True)
    assert result is not None
    assert (result.archived_from, result.archived_to) == (1, len(before))
    assert result.segments == 2
    assert result.finished
    assert result.redis_bytes_freed > 0
    assert await store.redis.xlen(store.keys.events(task_id)) == 0
    snapshot = await store.snapshot(task_id)
    assert snapshot is not None
    assert snapshot.summary.outcome == "succeeded"
    assert snapshot.summary.events == len(before)
    assert snapshot.summary.kinds["step"] == len(before) - 3
    for segment in snapshot.segments:  # the archive holds exact event bytes, one per line
        lines = decode_segment(await store.archive.get(segment.ref))
        assert lines == before[segment.first - 1 : segment.last]
    after = await every_event(store, task_id)
    assert after == before
    verify_chain(after, task=task_id)
    receipts = Receipts(store, SIGNER)
    for seq in (1, SEGMENT_MAX_EVENTS, len(before)):
        proof = await receipts.proof(task_id, seq)
        verify_receipt(proof, KEYS)
    # the snapshot's checkpoint signs the archived tree
    proved = verify_receipt(await receipts.receipt(task_id), KEYS, previous=snapshot.checkpoint)
    assert any(line.startswith("consistency:") for line in proved)
    # nothing is left to do
    assert await compactor(store, settings).compact_task(task_id, force=True) is None


async def test_long_running_task_keeps_its_recent_events(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    """A running task beyond the live limit has its old prefix archived, keeps its last
    events in Redis, goes on appending, and proofs across both parts verify."""
    settings = make_settings(compact_live_max_events=300, compact_live_keep_events=50)
    writer = await task_with_events(store, 400, finish=False)
    task_id = writer.task_id
    result = await compactor(store, settings).compact_task(task_id)
    assert result is not None
    assert result.archived_to == 350
    assert not result.finished
    assert await store.redis.xlen(store.keys.events(task_id)) == 50
    await writer.emit_many([("step", {"late": i}) for i in range(30)])
    await writer.finish(TaskState.SUCCEEDED)
    events = await every_event(store, task_id)
    assert len(events) == 431
    verify_chain(events, task=task_id)
    receipts = Receipts(store, SIGNER)
    for seq in (1, 350, 351, 431):
        verify_receipt(await receipts.proof(task_id, seq), KEYS, events=iter(events))
    final = await compactor(store, settings).compact_task(task_id, force=True)
    assert final is not None
    assert (final.archived_from, final.archived_to) == (351, 431)
    assert await every_event(store, task_id) == events


async def test_retention_and_the_finished_list(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    """A released task is listed; it is compacted only once its tenant's retention ran
    out; entries of unfinished tasks are dropped; a sweep lists finished tasks the list
    missed."""
    settings = make_settings(compact_retention_s=60, compact_tenant_retention=(("slow", 600),))
    now = [now_ms()]
    comp = compactor(store, settings, clock=lambda: now[0])
    queue = Queue(store)
    fast = await task_with_events(store, 10)
    slow = await task_with_events(store, 10, tenant="slow")
    running = await task_with_events(store, 5, finish=False)
    for writer in (fast, slow, running):
        await queue.release(writer.task_id)
    report = await comp.run_once()
    assert report.tasks_compacted == 0  # nothing is due yet
    now[0] += 61_000
    report = await comp.run_once()
    assert report.tasks_compacted == 1
    assert report.not_due == 1
    assert (await store.snapshot(fast.task_id)) is not None
    assert (await store.snapshot(slow.task_id)) is None
    members = await store.redis.zrange(store.keys.finished(), 0, -1)
    listed = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    assert listed == [slow.task_id]  # the running task's entry is gone, slow's moved later
    now[0] += 600_000
    report = await comp.run_once()
    assert report.tasks_compacted == 1
    assert await store.redis.zcard(store.keys.finished()) == 0
    # a finished task nobody listed (a worker died before letting go) is found by a sweep
    orphan = await task_with_events(store, 4)
    assert await comp.sweep() == 1
    assert (await comp.run_once()).tasks_compacted == 1
    assert (await store.snapshot(orphan.task_id)) is not None
    stats = await comp.statistics()
    assert stats.tasks_compacted == 3
    assert stats.events_archived == 24


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_replicas_never_double_work(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    """Three replicas running passes at once compact each task exactly once."""
    settings = make_settings(compact_retention_s=0)
    writers = [await task_with_events(store, 50) for _ in range(8)]
    queue = Queue(store)
    for writer in writers:
        await queue.release(writer.task_id)
    replicas = [compactor(store, settings) for _ in range(3)]
    async with anyio.create_task_group() as group:
        for replica in replicas:
            group.start_soon(replica.run_once)
    for _ in range(3):  # a replica that found a task locked leaves it listed for later
        if await store.redis.zcard(store.keys.finished()) == 0:
            break
        await replicas[0].run_once()
    stats = await replicas[0].statistics()
    assert stats.tasks_compacted == 8
    assert stats.events_archived == 8 * 50
    for writer in writers:
        events = await every_event(store, writer.task_id)
        assert len(events) == 50
        verify_chain(events, task=writer.task_id)


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_a_held_lock_is_respected(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    """While another replica holds a task's lock, compacting it is refused, untouched."""
    settings = make_settings()
    writer = await task_with_events(store, 20)
    await store.redis.set(store.keys.compact_lock(writer.task_id), "someone-else", px=60_000)
    with pytest.raises(CompactionBusy):
        await compactor(store, settings).compact_task(writer.task_id, force=True)
    assert await store.redis.xlen(store.keys.events(writer.task_id)) == 20


class _DiesBeforeCommit(Compactor):
    """A compactor that dies after writing the archive, before the trim."""

    async def _memory(self, keys: list[str]) -> int:
        raise RuntimeError("killed between archive write and trim")


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_killed_between_archive_write_and_trim(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    """Dying after the archive write leaves Redis untouched; the next run finishes the
    job with the same blobs, and every event is there once."""
    settings = make_settings()
    writer = await task_with_events(store, 100)
    before = await every_event(store, writer.task_id)
    dying = _DiesBeforeCommit(store, Receipts(store, SIGNER), settings=settings)
    with pytest.raises(RuntimeError):
        await dying.compact_task(writer.task_id, force=True)
    archived = sorted(p.name for p in settings.archive_path().rglob("*") if p.is_file())
    assert archived  # the segment and tree chunk were written ...
    assert await store.redis.xlen(store.keys.events(writer.task_id)) == 100  # ... nothing trimmed
    assert await store.snapshot(writer.task_id) is None
    assert await store.redis.get(store.keys.compact_lock(writer.task_id)) is None
    result = await compactor(store, settings).compact_task(writer.task_id, force=True)
    assert result is not None
    assert sorted(p.name for p in settings.archive_path().rglob("*") if p.is_file()) == archived
    assert await every_event(store, writer.task_id) == before


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_sigkill_at_any_moment_loses_nothing(
    make_settings: Callable[..., Settings], store: Store, tmp_path: Path
) -> None:
    """``axon compactor --task`` SIGKILLed at several moments of a large compaction, then
    run to the end: every event reads back once, in order, and the chain verifies."""
    settings = make_settings(compact_live_max_events=1000, compact_live_keep_events=10)
    writer = await task_with_events(store, 30_000, finish=False)
    before = await every_event(store, writer.task_id)
    key_file = tmp_path / "receipt.key"
    key_file.write_text(SIGNER.signer_key() + "\n")
    key_file.chmod(0o600)
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "AXON_KEY_PREFIX": settings.key_prefix,
        "AXON_DATA_DIR": settings.data_dir,
        "AXON_RECEIPT_KEY_FILE": str(key_file),
        "AXON_COMPACT_LIVE_MAX_EVENTS": "1000",
        "AXON_COMPACT_LIVE_KEEP_EVENTS": "10",
    }
    command = [sys.executable, "-m", "axon", "compactor", "--task", writer.task_id]
    archive = settings.archive_path()

    def blobs() -> int:
        return sum(1 for p in archive.rglob("*") if p.is_file()) if archive.exists() else 0

    for moment, files in enumerate((1, 6, 12)):
        process = await anyio.open_process(command, env=env)
        with anyio.fail_after(60):
            while blobs() < files and process.returncode is None:  # noqa: ASYNC110 - files of another process
                await anyio.sleep(0.002)
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        if moment == 0:  # killed right after its first archive write: nothing trimmed yet
            assert process.returncode == -signal.SIGKILL
            assert await store.snapshot(writer.task_id) is None
        assert await every_event(store, writer.task_id) == before
        await store.redis.delete(store.keys.compact_lock(writer.task_id))  # the TTL's job
    done = await anyio.run_process(command, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    snapshot = await store.snapshot(writer.task_id)
    assert snapshot is not None
    assert snapshot.archived_to == 30_000 - 10
    after = await every_event(store, writer.task_id)
    assert after == before
    verify_chain(after, task=writer.task_id)
    stats = await anyio.run_process(
        [sys.executable, "-m", "axon", "compactor", "stats"], env=env, check=False
    )
    assert json.loads(stats.stdout)["events_archived"] == 30_000 - 10


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_sse_and_ndjson_replay_a_compacted_task(
    make_api: Callable[..., Api], make_settings: Callable[..., Settings]
) -> None:
    """A client resuming from seq 0 (or from the middle) of a compacted task gets every
    event once, in order, over SSE and NDJSON; the receipt still verifies."""
    api = make_api()
    writer = await task_with_events(api.store, 2500)
    before = await every_event(api.store, writer.task_id)
    comp = Compactor(api.store, Receipts(api.store, RECEIPT_SIGNER), settings=api.settings)
    assert await comp.compact_task(writer.task_id, force=True) is not None
    for since in (0, 1234):
        stream = await RawStream.open(
            api.port, f"/v1/tasks/{writer.task_id}/events?since_seq={since}", key=api.admin
        )
        frames = [f for f in await stream.frames() if f.id is not None]
        assert [int(f.id or 0) for f in frames] == list(range(since + 1, 2501))
        assert [f.data for f in frames] == before[since:]
    got: list[bytes] = []
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=30) as http:
        while len(got) < len(before):
            reply = await http.get(
                f"/v1/tasks/{writer.task_id}/events",
                params={"since_seq": len(got), "limit": 1000},
                headers={"accept": "application/x-ndjson"},
            )
            assert reply.status_code == 200
            page = reply.content.split(b"\n")[:-1]
            assert page
            got += page
        receipt = (await http.get(f"/v1/tasks/{writer.task_id}/receipt")).text
    assert got == before
    keys = [NoteVerifier.from_verifier_key(RECEIPT_SIGNER.verifier_key())]
    verify_receipt(receipt, keys, events=iter(got))
    root = merkle.TreeBuilder()
    for raw in got:
        root.add(raw)
    snapshot = await api.store.snapshot(writer.task_id)
    assert snapshot is not None
    assert base64.b64decode(snapshot.root) == root.root()


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_a_lost_archive_is_reported_not_skipped(make_api: Callable[..., Api]) -> None:
    """If the archive blobs of a compacted task are gone, SSE says so with an
    ``axon.unavailable`` frame and NDJSON with 503 ``archive_unavailable``: never a gap."""
    api = make_api()
    writer = await task_with_events(api.store, 30)
    comp = Compactor(api.store, Receipts(api.store, RECEIPT_SIGNER), settings=api.settings)
    assert await comp.compact_task(writer.task_id, force=True) is not None
    for blob in [p for p in api.settings.archive_path().rglob("*") if p.is_file()]:
        blob.unlink()
    stream = await RawStream.open(api.port, f"/v1/tasks/{writer.task_id}/events", key=api.admin)
    frames = await stream.frames()
    assert [f for f in frames if f.id is not None] == []
    assert frames[-1].event == "axon.unavailable"
    assert json.loads(frames[-1].data or b"{}")["code"] == "archive_unavailable"
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        reply = await http.get(
            f"/v1/tasks/{writer.task_id}/events", headers={"accept": "application/x-ndjson"}
        )
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "archive_unavailable"


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_any_interleaving_of_appends_compactions_and_reads(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    """Property: whatever the order of appends, compactions and reads from any cursor,
    every read returns exactly the events after its cursor, in order, and every proof
    verifies against the export."""
    settings = make_settings(compact_live_max_events=30, compact_live_keep_events=5)
    comp = compactor(store, settings)
    receipts = Receipts(store, SIGNER)

    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("append"), st.integers(1, 120)),
                st.tuples(st.just("compact"), st.just(0)),
                st.tuples(st.just("read"), st.floats(0, 1)),
                st.tuples(st.just("proof"), st.floats(0, 1)),
            ),
            min_size=1,
            max_size=12,
        )
    )
    @hypothesis_settings(
        max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    def run(steps: list[tuple[str, float]]) -> None:
        async def scenario() -> None:
            writer = await task_with_events(store, 3, finish=False)
            expected = await every_event(store, writer.task_id)
            for op, arg in steps:
                if op == "append":
                    await writer.emit_many([("step", {"n": i}) for i in range(int(arg))])
                    expected = await every_event(store, writer.task_id)
                elif op == "compact":
                    await comp.compact_task(writer.task_id)
                elif op == "read":
                    cursor = int(arg * len(expected))
                    page = await store.read(writer.task_id, after_seq=cursor, limit=50)
                    assert [e.raw for e in page] == expected[cursor : cursor + 50]
                else:
                    seq = max(1, int(arg * len(expected)))
                    proof = await receipts.proof(writer.task_id, seq)
                    verify_receipt(proof, KEYS, events=iter(expected))
            assert await every_event(store, writer.task_id) == expected
            verify_chain(expected, task=writer.task_id)

        anyio.from_thread.run(scenario)

    await anyio.to_thread.run_sync(run)
