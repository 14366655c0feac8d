"""Python task functions that worker processes started by the tests import."""

from __future__ import annotations

import os
from typing import Any

import anyio

import axon


@axon.task("test.pid_ticker")
async def pid_ticker(ctx: Any, interval_ms: int = 20, count: int | None = None) -> dict[str, int]:
    """Emit ``tick`` events carrying this process's pid until stopped (or ``count`` ticks)."""
    i = 0
    while count is None or i < count:
        await ctx.emit("tick", {"pid": os.getpid(), "i": i})
        i += 1
        await anyio.sleep(interval_ms / 1000)
    return {"pid": os.getpid(), "ticks": i}
