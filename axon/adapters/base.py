"""The adapter contract: what the worker gives an adapter and what it expects back.

An adapter is an object with a ``name`` and an ``async run(ctx) -> Outcome``.
It reports progress by emitting events through ``ctx``; it never writes the
terminal event itself — it returns an ``Outcome`` and the worker writes
``succeeded``/``failed`` (or ``canceled``/``timed_out`` when it stopped the run).

Stopping: the worker stops an adapter by cancelling the scope ``run`` executes
in (anyio cancellation). An adapter that owns external resources (a process,
a container) must release them in a shielded cleanup: first a graceful stop,
then a hard kill after ``ctx.stop_grace_s``. The worker sets that grace
according to why it stops the run (short for a cancel request, longer for a
timeout or a shutdown).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec

from axon.errors import AxonError


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How a run ended, as the adapter saw it.

    Attributes:
        ok: True for success; False for a failure.
        data: the terminal event's data (result, exit code, error message …).
        retryable: for a failure, whether the task's retry policy may run it again.
    """

    ok: bool
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    retryable: bool = False


class AdapterError(AxonError):
    """Raised by an adapter for a failure it can describe (bad args, missing tool, …).

    ``retryable`` tells the worker whether the retry policy applies.
    """

    code = "adapter_error"

    def __init__(self, message: str, *, retryable: bool = False, **details: Any) -> None:
        super().__init__(message, **details)
        self.retryable = retryable


class TaskContext(Protocol):
    """What a running task sees. Implemented by the worker (``axon.runner``)."""

    @property
    def task_id(self) -> str:
        """The task's id."""
        ...

    @property
    def args(self) -> dict[str, Any]:
        """The task's arguments, as given at creation."""
        ...

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry or reclaim, …"""
        ...

    @property
    def stop_grace_s(self) -> float:
        """How long a graceful stop may take before the adapter must kill hard."""
        ...

    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> None:
        """Append an event to the task's log (fenced by the worker's lease)."""
        ...

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Append a ``progress`` event (``fraction`` in 0..1)."""
        ...

    async def log(self, message: str, **fields: Any) -> None:
        """Append a ``log`` event."""
        ...


@runtime_checkable
class Adapter(Protocol):
    """How a task runs."""

    name: str

    async def run(self, ctx: TaskContext) -> Outcome:
        """Run the task to completion, emitting events through ``ctx``."""
        ...
