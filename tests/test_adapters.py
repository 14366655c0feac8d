"""Adapter registry, the mock adapter's argument checks, and the docker adapter's honesty."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from axon.adapters.base import Adapter, AdapterError
from axon.adapters.docker import DockerAdapter
from axon.adapters.registry import AdapterRegistry
from axon.connection import open_store
from axon.context import RunContext
from axon.embedded import ServerProcess
from axon.records import TaskSpec
from axon.settings import Settings
from axon.writer import EventWriter
from tests.conftest import Backend

pytestmark = pytest.mark.anyio


def test_registry_has_the_builtins() -> None:
    """The default registry offers mock, python, shell and docker, each a real Adapter."""
    registry = AdapterRegistry.default(Settings())
    assert {"mock", "python", "shell", "docker"} <= set(registry.names())
    for name in registry.names():
        assert isinstance(registry.get(name), Adapter)


def test_unknown_adapter_is_a_clear_error() -> None:
    """Asking for an adapter that does not exist names the ones that do."""
    with pytest.raises(AdapterError, match="no adapter named 'ffmpeg'; this worker has"):
        AdapterRegistry.default(Settings()).get("ffmpeg")


@pytest.fixture
def backend(valkey: ServerProcess) -> Backend:
    """Valkey only: adapters do not care which server kind holds the log."""
    return Backend(name="valkey", url=valkey.url, cluster=False, aof=True)


@pytest.mark.parametrize(
    "args",
    [
        {"count": -1},
        {"count": "3"},
        {"outcome": "maybe"},
        {"interval_ms": 1.5},
        {"payload_bytes": 1 << 40},
    ],
)
async def test_mock_rejects_bad_args(
    make_settings: Callable[..., Settings], args: dict[str, object]
) -> None:
    """Malformed mock args are an AdapterError, not a crash."""
    from axon.adapters.mock import MockAdapter

    async with open_store(make_settings()) as store:
        record = await store.create_task(TaskSpec(tenant="t", adapter="mock", args=args))
        ctx = RunContext(
            EventWriter(store, record.id, epoch=0), args=args, attempt=1, stop_grace_s=0.1
        )
        with pytest.raises(AdapterError, match="mock:"):
            await MockAdapter().run(ctx)


async def test_docker_without_engine_says_not_configured(
    make_settings: Callable[..., Settings],
) -> None:
    """Without a Docker engine the adapter fails at once and says why; with one, it runs."""
    adapter = DockerAdapter()
    problem = await adapter.available()
    args: dict[str, object] = {"image": "busybox", "command": ["echo", "hello"]}
    async with open_store(make_settings()) as store:
        record = await store.create_task(TaskSpec(tenant="t", adapter="docker", args=args))
        ctx = RunContext(
            EventWriter(store, record.id, epoch=0), args=args, attempt=1, stop_grace_s=0.1
        )
        if problem is None:
            outcome = await adapter.run(ctx)
            assert outcome.ok
            return
        with pytest.raises(AdapterError, match="docker adapter not configured") as caught:
            await adapter.run(ctx)
        assert not caught.value.retryable
        assert len(await store.read(record.id)) == 1  # nothing was emitted


async def test_docker_rejects_bad_args(make_settings: Callable[..., Settings]) -> None:
    """A docker task without an image, or with a bad command or env, is refused up front."""
    async with open_store(make_settings()) as store:
        for args in ({}, {"image": "x", "command": "echo hi"}, {"image": "x", "env": {"A": 1}}):
            record = await store.create_task(TaskSpec(tenant="t", adapter="docker", args=args))
            ctx = RunContext(
                EventWriter(store, record.id, epoch=0), args=args, attempt=1, stop_grace_s=0.1
            )
            with pytest.raises(AdapterError, match="docker:"):
                await DockerAdapter().run(ctx)
