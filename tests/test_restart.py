"""Behaviour across server crashes and restarts, on servers this module owns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from axon.chain import verify_chain
from axon.connection import open_store
from axon.embedded import ServerProcess, valkey_binary
from axon.errors import StoreUnavailable
from axon.records import TaskSpec
from axon.settings import Settings
from axon.writer import EventWriter
from tests import servers

pytestmark = pytest.mark.anyio

SPEC = TaskSpec(tenant="acme", adapter="mock")


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[ServerProcess]:
    """A Valkey with AOF on that this test may kill and restart."""
    with servers.single(valkey_binary(), tmp_path, args=servers.AOF_ARGS) as server:
        yield server


async def test_log_survives_graceful_restart(own_valkey: ServerProcess) -> None:
    """With AOF on, a restarted server serves the same bytes and the chain continues."""
    settings = Settings(redis_url=own_valkey.url)
    async with open_store(settings) as store:
        record = await store.create_task(SPEC)
        writer = EventWriter(store, record.id, epoch=0)
        for i in range(20):
            await writer.emit("step", {"i": i})
        before = [e.raw for e in await store.read(record.id)]
    own_valkey.restart()
    async with open_store(settings) as store:
        after = [e.raw for e in await store.read(record.id)]
        assert after == before
        writer = EventWriter(store, record.id, epoch=0)
        await writer.emit("step", {"i": 20})
        raws = [e.raw for e in await store.read(record.id)]
        verify_chain(raws, expected_head=await store.head(record.id))
        assert len(raws) == 22


async def test_crash_mid_stream_is_reported_and_recovered(own_valkey: ServerProcess) -> None:
    """A dead server yields StoreUnavailable, not silent loss; after restart the writer resumes."""
    settings = Settings(redis_url=own_valkey.url, durability="strict", durability_timeout_ms=5000)
    async with open_store(settings) as store:
        record = await store.create_task(SPEC)
        writer = EventWriter(store, record.id, epoch=0)
        acknowledged = [await writer.emit("step", {"i": i}) for i in range(5)]
        own_valkey.kill()
        with pytest.raises(StoreUnavailable):
            await writer.emit("step", {"i": "lost"})
        own_valkey.start()
        # Every strictly acknowledged event survived the SIGKILL.
        raws = [e.raw for e in await store.read(record.id)]
        assert raws[: len(acknowledged) + 1][1:] == [s.raw for s in acknowledged]
        resumed = await writer.emit("step", {"i": "after"})
        raws = [e.raw for e in await store.read(record.id)]
        verify_chain(raws, expected_head=await store.head(record.id))
        assert raws[-1] == resumed.raw


async def test_worker_survives_a_server_restart(own_valkey: ServerProcess) -> None:
    """A worker keeps going through a Redis restart: work submitted afterwards still runs."""
    from axon.queue import Queue
    from axon.records import TaskState
    from axon.worker import Worker

    settings = Settings(redis_url=own_valkey.url, watchdog_interval_s=0.1)
    async with open_store(settings) as store:
        queue = Queue(store)
        worker = Worker(queue)

        async def done(task_id: str) -> None:
            while True:
                try:
                    if (await store.get_task(task_id)).state is TaskState.SUCCEEDED:
                        return
                    await store.wait_events(task_id, after_seq=0, timeout_ms=100)
                except StoreUnavailable:  # a pooled connection the restart closed
                    await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            with anyio.fail_after(10):
                await done((await queue.submit(SPEC)).id)
            await anyio.to_thread.run_sync(own_valkey.restart)
            with anyio.fail_after(20):
                while True:  # the first calls after a restart may meet a dropped connection
                    try:
                        after = await queue.submit(SPEC)
                        break
                    except StoreUnavailable:
                        await anyio.sleep(0.1)
                await done(after.id)
            worker.stop()
        assert worker.statistics().completed == 2
