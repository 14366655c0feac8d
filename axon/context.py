"""The ``TaskContext`` a worker hands to an adapter, backed by the task's writer."""

from __future__ import annotations

import math
from typing import Any

from axon.errors import InvalidEvent
from axon.writer import EventWriter


class RunContext:
    """One run of one task: its arguments, and its fenced path into the log.

    Every ``emit`` goes through the worker's ``EventWriter`` for the task, so it
    carries the worker's lease epoch: once the lease is lost, emits raise
    ``Fenced`` and the adapter's run is over.
    """

    def __init__(
        self,
        writer: EventWriter,
        *,
        args: dict[str, Any],
        attempt: int,
        stop_grace_s: float,
    ) -> None:
        self._writer = writer
        self._args = args
        self._attempt = attempt
        self.stop_grace_s = stop_grace_s

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self._writer.task_id

    @property
    def args(self) -> dict[str, Any]:
        """The task's arguments."""
        return self._args

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the next, …"""
        return self._attempt

    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> None:
        """Append an event to the task's log."""
        await self._writer.emit(kind, data)

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Append a ``progress`` event; ``fraction`` must be within 0..1."""
        if not isinstance(fraction, int | float) or math.isnan(fraction) or not 0 <= fraction <= 1:
            raise InvalidEvent(f"progress fraction must be within 0..1, got {fraction!r}")
        data: dict[str, Any] = {"fraction": fraction}
        if message is not None:
            data["message"] = message
        await self._writer.emit("progress", data)

    async def log(self, message: str, **fields: Any) -> None:
        """Append a ``log`` event with ``message`` and any extra fields."""
        await self._writer.emit("log", {"message": message, **fields})
