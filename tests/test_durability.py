"""Strict durability: appends confirmed fsynced with WAITAOF, or a clear error where impossible."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from axon.connection import open_store
from axon.errors import DurabilityTimeout, DurabilityUnsupported
from axon.records import TaskSpec
from axon.settings import Settings
from axon.writer import EventWriter
from tests.conftest import Backend

pytestmark = pytest.mark.anyio

SPEC = TaskSpec(tenant="acme", adapter="mock")


async def test_strict_append_waits_for_fsync_or_says_why(
    backend: Backend, make_settings: Callable[..., Settings]
) -> None:
    """With AOF on, strict appends succeed; without WAITAOF or AOF they fail loudly."""
    # The test servers fsync every second, so allow a few seconds for the confirmation.
    settings = make_settings(durability="strict", durability_timeout_ms=5000)
    async with open_store(settings) as store:
        info = await store.server_info()
        if info.waitaof and info.aof_enabled:
            record = await store.create_task(SPEC)
            stored = await EventWriter(store, record.id, epoch=0).emit("step", {"durable": True})
            assert stored.seq == 2
            assert len(await store.read(record.id)) == 2
            return
        assert backend.name == "redis7"  # Redis 7.0 has no WAITAOF; AOF is off there too
        with pytest.raises(DurabilityUnsupported) as caught:
            await store.create_task(SPEC, task_id="strict-create")
        assert caught.value.details["appended"] is True
        assert "WAITAOF" in caught.value.message
        # The write itself happened; only its fsync could not be confirmed.
        writer = EventWriter(store, "strict-create", epoch=0)
        with pytest.raises(DurabilityUnsupported):
            await writer.emit("step")
        assert len(await store.read("strict-create")) == 2


async def test_strict_append_demands_replicas_it_cannot_get(
    backend: Backend, make_settings: Callable[..., Settings]
) -> None:
    """Asking for a replica fsync on a server without replicas times out with DurabilityTimeout."""
    settings = make_settings(durability="strict", durability_replicas=1, durability_timeout_ms=50)
    async with open_store(settings) as store:
        info = await store.server_info()
        if not (info.waitaof and info.aof_enabled):
            pytest.skip(f"{backend.name} cannot confirm fsyncs at all")
        with pytest.raises(DurabilityTimeout) as caught:
            await store.create_task(SPEC, task_id="needs-a-replica")
        # everysec may not have fsynced locally within 50 ms either; no replica ever can.
        assert caught.value.details["replicas"] == 0
        writer = EventWriter(store, "needs-a-replica", epoch=0)  # the create did happen
        with pytest.raises(DurabilityTimeout):
            await writer.emit("step")
        assert len(await store.read("needs-a-replica")) == 2


async def test_server_info_reports_capabilities(
    backend: Backend, make_settings: Callable[..., Settings]
) -> None:
    """server_info tells the flavour, AOF state and WAITAOF support of each test server."""
    async with open_store(make_settings()) as store:
        info = await store.server_info()
    if backend.name == "redis7":
        assert (info.server, info.aof_enabled) == ("redis", False)
        assert info.version.startswith("7.")
    else:
        assert (info.server, info.aof_enabled, info.waitaof) == ("valkey", True, True)
