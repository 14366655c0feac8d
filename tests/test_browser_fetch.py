"""The documented browser way (fetch + a stream reader, since EventSource cannot send an
Authorization header) works against a real server: docs/examples/fetch-sse.mjs under Node."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from axon.chain import verify_chain
from axon.records import TaskState
from tests.conftest import Api
from tests.test_sse import all_bytes, new_task, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["valkey"], indirect=True)]

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "fetch-sse.mjs"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
async def test_fetch_example_follows_a_task_across_a_server_restart(
    make_api: Callable[..., Api],
) -> None:
    """The fetch-based client prints every event's bytes exactly once, in order, through
    a live tail and a server restart (it reconnects with Last-Event-ID), and exits 0
    after the terminal event."""
    assert NODE is not None
    api = make_api(sse_retry_ms=50)
    writer = await new_task(api.store)
    for i in range(5):
        await writer.emit("step", {"i": i, "text": "héllo\u2028"})
    services = api.server.server.app.state.services
    env = {**os.environ, "AXON_API_KEY": api.admin}
    with anyio.fail_after(30):
        process = await anyio.open_process(
            [NODE, str(EXAMPLE), api.url, writer.task_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        async with process:
            await wait_for(lambda: services.tailer.statistics().subscribers == 1)
            await anyio.to_thread.run_sync(api.restart)
            services = api.server.server.app.state.services
            await wait_for(lambda: services.tailer.statistics().subscribers == 1)
            for i in range(5, 10):
                await writer.emit("step", {"i": i})
            await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
            await writer.finish(TaskState.SUCCEEDED)
            assert process.stdout is not None
            assert process.stderr is not None
            out = b"".join([chunk async for chunk in process.stdout])
            err = b"".join([chunk async for chunk in process.stderr])
            assert await process.wait() == 0, err
    lines = out.split(b"\n")
    assert lines[-1] == b""
    stored = await all_bytes(api.store, writer.task_id)
    assert lines[:-1] == stored
    verify_chain(lines[:-1], task=writer.task_id)
