"""Auto-pipelining: commands that concurrent callers issue together share one round trip.

A worker running ten tasks at once issues ten record reads, ten ``claimed``
appends, ten releases at about the same moment. Sent one by one, each costs a
round trip and, in redis-py's asyncio client, 100-170 µs of client CPU (pool,
timeouts, packing, parsing); sent as one pipeline, about 40 µs each.

``AutoPipeline.execute`` queues the command; the first caller that finds no
pipeline in flight leads: it lets the tasks that are ready to run queue their
commands too (one pass of the event loop, no timer), sends everything queued
as one (non-transactional) pipeline, hands each caller its own reply, and
repeats until its own command is answered; then it passes the lead to the
oldest caller still waiting. A lone caller is sent after that one pass, as a
plain command, so an idle system pays microseconds, not a batching delay.
Each caller still sees its own commands in order (it awaits each reply before
issuing the next), and a pipeline in flight is shielded from cancellation, so
its replies always reach their callers.

Only for a single server: on a Redis Cluster a pipeline would be split by node
and lose its point, so the store keeps sending commands one by one there.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import anyio.lowlevel
from redis.asyncio import Redis
from redis.exceptions import ResponseError

MAX_PIPELINE = 512
"""Commands sent in one pipeline at most; the rest go in the next."""


class _Command:
    __slots__ = ("args", "done", "error", "lead", "result", "wakeup")

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args
        self.done = False
        self.lead = False
        self.wakeup: anyio.Event | None = None
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        self.done = True
        if self.wakeup is not None:
            self.wakeup.set()


class AutoPipeline:
    """Coalesces commands issued concurrently on one ``Redis`` client into pipelines.

    Args:
        redis: a single-server client (not a cluster client).
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: deque[_Command] = deque()
        self._leading = False
        self._pipelines = 0
        self._commands = 0

    def statistics(self) -> tuple[int, int]:
        """(pipelines sent, commands sent) so far."""
        return self._pipelines, self._commands

    async def execute(self, *args: Any) -> Any:
        """Run one command (``"HGETALL", key`` ...) and return its reply.

        A Redis error reply is raised as redis-py raises it (``ResponseError``,
        ``NoScriptError`` ...); a connection failure is raised for every command of
        the pipeline it hit.
        """
        command = _Command(args)
        self._pending.append(command)
        if self._leading:
            command.wakeup = anyio.Event()
            try:
                await command.wakeup.wait()
            except BaseException:
                if not command.done and command in self._pending:
                    self._pending.remove(command)
                if command.lead and not command.done:
                    self._hand_off()
                raise
        else:
            self._leading = True
        if not command.done:
            try:
                while not command.done:
                    # Let every task that is ready to run queue its command first (tasks
                    # woken by the previous reply usually are): one loop iteration, no
                    # timer, so a lone caller waits for nothing.
                    await anyio.lowlevel.cancel_shielded_checkpoint()
                    await self._flush()
            finally:
                self._hand_off()
        if command.error is not None:
            raise command.error
        return command.result

    def _hand_off(self) -> None:
        if self._pending:
            successor = self._pending[0]
            successor.lead = True
            if successor.wakeup is not None:
                successor.wakeup.set()
        else:
            self._leading = False

    async def _flush(self) -> None:
        batch = [self._pending.popleft() for _ in range(min(len(self._pending), MAX_PIPELINE))]
        with anyio.CancelScope(shield=True):
            try:
                if len(batch) == 1:  # alone: a plain command costs less than a pipeline
                    try:
                        reply = await self._redis.execute_command(*batch[0].args)  # type: ignore[no-untyped-call]
                        replies = [reply]
                    except ResponseError as exc:
                        replies = [exc]
                else:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for command in batch:
                            pipe.execute_command(*command.args)
                        replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the connection failed: every reply is unknown
                for command in batch:
                    command.error = exc
                    command.finish()
                return
        self._pipelines += 1
        self._commands += len(batch)
        for command, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                command.error = reply
            else:
                command.result = reply
            command.finish()
