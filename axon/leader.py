"""Leader-based batching: concurrent callers queue work, one of them flushes it all.

The event writer (events of one task) and auto-pipelining (commands of one
client) batch the same way. A caller queues its item; if nobody is flushing it
leads: it flushes batches until its own item is done, then hands the lead to
the oldest caller still waiting. Everyone else sleeps until the leader either
finished their item or handed them the lead. Only one batch is ever in flight,
which keeps call order, and there is no timer: a lone caller flushes at once.

Wake-ups are plain ``asyncio.Event``s: both users sit on redis-py's asyncio
client, so anyio's wrapper would only cost time, and anyio's cancel scopes
cancel an asyncio wait like any other.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar


class Waiting:
    """One queued call: ``done`` once a flush answered it (``error`` if it failed),
    ``lead`` once the previous leader handed flushing over to it."""

    __slots__ = ("done", "error", "lead", "wakeup")

    def __init__(self) -> None:
        self.done = False
        self.lead = False
        self.wakeup: asyncio.Event | None = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        """Mark answered (set ``error`` or the subclass's result first) and wake the caller."""
        self.done = True
        if self.wakeup is not None:
            self.wakeup.set()


W = TypeVar("W", bound=Waiting)


class LeaderQueue(Generic[W]):
    """The queue and the lead; subclasses say how to flush (``_flush_next``)."""

    def __init__(self) -> None:
        self._pending: deque[W] = deque()
        self._leading = False

    async def _flush_next(self) -> None:
        """Take the next batch off ``_pending``, send it and ``finish`` each of its items."""
        raise NotImplementedError

    async def _join(self, item: W) -> None:
        """Queue ``item`` and return once it is done; raise its ``error`` if it failed."""
        self._pending.append(item)
        if self._leading:
            item.wakeup = asyncio.Event()
            try:
                await item.wakeup.wait()
            except BaseException:
                # Cancelled while waiting: withdraw the item if no batch took it yet,
                # and pass on the lead if it had just been handed to us.
                if not item.done and item in self._pending:
                    self._pending.remove(item)
                if item.lead and not item.done:
                    self._hand_off()
                raise
        else:
            self._leading = True
        if not item.done:
            try:
                while not item.done:
                    if not self._pending:  # cannot happen: a waiting item is always queued
                        raise RuntimeError("a batching leader lost track of a queued item")
                    await self._flush_next()
            finally:
                self._hand_off()
        if item.error is not None:
            raise item.error

    def _hand_off(self) -> None:
        """Give the lead to the oldest waiting caller, or release it if nobody waits."""
        if self._pending:
            successor = self._pending[0]
            successor.lead = True
            if successor.wakeup is not None:
                successor.wakeup.set()
        else:
            self._leading = False
