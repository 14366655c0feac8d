"""Auto-pipelining against a real server: concurrent commands share round trips."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from axon import lua
from axon.autopipeline import AutoPipeline, AutoPipelines, use_channel
from axon.connection import open_store
from axon.embedded import ServerProcess
from axon.records import TaskSpec
from axon.settings import Settings
from axon.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
async def redis(valkey: ServerProcess) -> AsyncIterator[Redis]:
    """A plain client on the session's Valkey."""
    client = Redis.from_url(valkey.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_lone_command_is_sent_at_once(redis: Redis) -> None:
    """A command with nobody else waiting goes out alone, in its own pipeline."""
    pipe = AutoPipeline(redis)
    await pipe.execute("SET", "ap:lone", "1")
    assert await pipe.execute("GET", "ap:lone") == b"1"
    assert pipe.statistics() == (2, 2)


async def test_concurrent_commands_share_pipelines_and_get_their_own_replies(
    redis: Redis,
) -> None:
    """Fifty concurrent callers get their own replies from fewer than fifty round trips."""
    pipe = AutoPipeline(redis)
    replies: dict[int, object] = {}

    async def one(i: int) -> None:
        await pipe.execute("SET", f"ap:k{i}", str(i))
        replies[i] = await pipe.execute("GET", f"ap:k{i}")

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert replies == {i: str(i).encode() for i in range(50)}
    pipelines, commands = pipe.statistics()
    assert commands == 100
    assert pipelines < 50


async def test_an_error_reply_reaches_only_its_caller(redis: Redis) -> None:
    """One command's error (WRONGTYPE) fails that caller; the others in the pipeline succeed."""
    pipe = AutoPipeline(redis)
    await redis.set("ap:str", "x")
    results: dict[str, object] = {}

    async def good(i: int) -> None:
        results[f"good{i}"] = await pipe.execute("ECHO", str(i))

    async def bad() -> None:
        try:
            await pipe.execute("HGETALL", "ap:str")
        except ResponseError as exc:
            results["bad"] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(good, 1)
        tg.start_soon(bad)
        tg.start_soon(good, 2)
    assert results["good1"] == b"1"
    assert results["good2"] == b"2"
    assert isinstance(results["bad"], ResponseError)


async def test_store_reloads_a_flushed_script_through_the_pipeline(valkey: ServerProcess) -> None:
    """After SCRIPT FLUSH, a script run through auto-pipelining falls back to EVAL."""
    settings = Settings(redis_url=valkey.url, key_prefix="ap-noscript")
    async with open_store(settings) as store:
        assert isinstance(store, Store)
        await store.redis.script_flush()
        reply = await store.run_script(lua.CANCEL, [store.keys.task("t_missing")], [1])
        assert reply == [b"not_found"]


async def test_submit_on_one_server_is_one_command(valkey: ServerProcess) -> None:
    """On a single server, a submit (index, create, enqueue) is a single script call."""
    from axon.queue import Queue

    settings = Settings(redis_url=valkey.url, key_prefix="ap-submit")
    async with open_store(settings) as store:
        queue = Queue(store)
        await store.load_scripts()
        before = store.pipeline_statistics()
        assert before is not None
        record = await queue.submit(TaskSpec(tenant="acme", adapter="mock"))
        assert store.pipeline_statistics() == (before[0] + 1, before[1] + 1)
        assert (await queue.depth())["default"] == 1
        assert await store.redis.zscore(store.keys.tenant_tasks("acme"), record.id) == 0
        assert (await store.get_task(record.id)).head_seq == 1


async def test_channels_are_separate_pipelines_inherited_by_child_tasks(redis: Redis) -> None:
    """Each channel sends over its own connection; a task's children use its channel."""
    pipes = AutoPipelines(redis)
    ids: dict[str, int] = {}

    async def client_id(name: str) -> None:
        ids[name] = int(await pipes.execute("CLIENT", "ID"))

    async def on(channel: int) -> None:
        use_channel(channel)
        await client_id(f"{channel}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(client_id, f"{channel}/child")

    async with anyio.create_task_group() as tg:
        tg.start_soon(on, 0)
        tg.start_soon(on, 1)
    assert ids["0"] == ids["0/child"]
    assert ids["1"] == ids["1/child"]
    assert ids["0"] != ids["1"]
    await client_id("default")  # this task never chose a channel: channel 0
    assert ids["default"] == ids["0"]
    assert pipes.statistics()[1] == 5


async def test_channels_leave_a_small_pool_a_connection(valkey: ServerProcess) -> None:
    """With a pool of two, channel 0 keeps one connection and channel 1 borrows the other
    per round trip, so a plain command still finds a free connection in between."""
    client = Redis.from_url(valkey.url, max_connections=2)
    try:
        pipes = AutoPipelines(client)
        await pipes.execute("SET", "ap:small", "0")

        async def on_one() -> None:
            use_channel(1)
            for i in range(3):
                await pipes.execute("SET", "ap:small", str(i))

        async with anyio.create_task_group() as tg:
            tg.start_soon(on_one)
        with anyio.fail_after(5):  # a pool with no connection left would fail or hang here
            assert await client.get("ap:small") == b"2"
    finally:
        await client.aclose()
