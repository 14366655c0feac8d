"""Behaviour across server crashes and restarts, on servers this module owns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
