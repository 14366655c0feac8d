"""The ``python`` adapter: run async functions registered with ``@axon.task``.

    import axon

    @axon.task("resize")
    async def resize(ctx: axon.adapters.python.FunctionContext, width: int) -> dict:
        await ctx.progress(0.5, "halfway")
        return {"width": width}

A task ``{"adapter": "python", "args": {"function": "resize", "kwargs": {"width": 640}}}``
calls ``resize(ctx, width=640)`` in a worker that imported the module defining
it (``axon worker --import myapp.tasks``). The return value (JSON-able)
becomes the ``succeeded`` event's ``result``; an exception becomes ``failed``
with its type and message — retryable if it is ``axon.adapters.python.Retry``.
Cancellation (cancel request, timeout, shutdown) arrives as anyio
cancellation at the function's next ``await``; ``ctx.stopping`` lets
long CPU-bound loops check for it between steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from axon.adapters.base import AdapterError, Outcome, TaskContext

TaskFunction = Callable[..., Awaitable[Any]]

_FUNCTIONS: dict[str, TaskFunction] = {}


class Retry(Exception):
    """Raise from a task function for a failure the retry policy should handle."""


class FunctionContext:
    """What a registered function receives: the run's context plus a stop flag."""

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx
        self.stopping = False
        self.task_id = ctx.task_id
        self.attempt = ctx.attempt

    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> None:
        """Append an event to the task's log."""
        await self._ctx.emit(kind, data)

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Append a ``progress`` event."""
        await self._ctx.progress(fraction, message)

    async def log(self, message: str, **fields: Any) -> None:
        """Append a ``log`` event."""
        await self._ctx.log(message, **fields)


def task(name: str) -> Callable[[TaskFunction], TaskFunction]:
    """Register an async function as the python task ``name``."""

    def register(fn: TaskFunction) -> TaskFunction:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@axon.task({name!r}) needs an async function")
        if name in _FUNCTIONS and _FUNCTIONS[name] is not fn:
            raise ValueError(f"a python task named {name!r} is already registered")
        _FUNCTIONS[name] = fn
        return fn

    return register


def registered() -> dict[str, TaskFunction]:
    """The registered functions by name (a copy)."""
    return dict(_FUNCTIONS)


class PythonAdapter:
    """Runs registered async functions."""

    name = "python"

    async def run(self, ctx: TaskContext) -> Outcome:
        name = ctx.args.get("function")
        kwargs = ctx.args.get("kwargs", {})
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise AdapterError(
                "python: args need 'function' (a name) and optional 'kwargs' (object)"
            )
        fn = _FUNCTIONS.get(name)
        if fn is None:
            raise AdapterError(
                f"python: no function {name!r} is registered in this worker "
                "(import its module with `axon worker --import MODULE`)",
                function=name,
            )
        fctx = FunctionContext(ctx)
        try:
            result = await fn(fctx, **kwargs)
        except anyio.get_cancelled_exc_class():
            fctx.stopping = True
            raise
        except Retry as exc:
            return Outcome(ok=False, data=_error(exc), retryable=True)
        except Exception as exc:  # the user's code failed: that is the task's failure
            return Outcome(ok=False, data=_error(exc))
        return Outcome(ok=True, data={"result": result})


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": str(exc)[:4000], "type": type(exc).__name__}
