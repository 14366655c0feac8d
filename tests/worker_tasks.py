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


@axon.task("test.progress")
async def progress_steps(ctx: Any, steps: int = 4, interval_ms: int = 50) -> dict[str, int]:
    """Report progress in ``steps`` steps, print a line like a command would, then finish."""
    for i in range(1, steps + 1):
        await anyio.sleep(interval_ms / 1000)
        await ctx.progress(i / steps, f"step {i} of {steps}")
    await ctx.emit("stdout", {"line": "all steps done"})
    return {"steps": steps}
