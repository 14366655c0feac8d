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

Channels: a worker splits its runs into claim groups (``axon.worker``), each
with its own channel (``use_channel``), that is its own auto-pipeline and
connection. One channel's round trip is at Redis while the worker's CPU serves
the other's replies, so worker and server work at the same time instead of
taking turns; with one channel all runs move in lockstep (claim ten, append ten,
append ten) and each side waits for the other. Everything else (the API, the
compactor) uses channel 0.

Round trips go straight over one connection of the client's pool, which the
auto-pipeline keeps for itself (only one pipeline is ever in flight, so one is
enough) when the pool has room for more than one; with a pool of one it borrows
it for each round trip instead. That skips redis-py's ``Pipeline`` and pool
checkout, about half of the client CPU of a small round trip. Replies go through
the client's response callbacks as ``execute_command`` would apply them; like the
pipelines it replaces, a round trip is not retried (Axon's clients retry nothing:
a lost reply is handled by the scripts' replay checks and the watchdog).
"""

from __future__ import annotations

import math
import os
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.lowlevel
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from axon.leader import LeaderQueue, Waiting

MAX_PIPELINE = 512
"""Commands sent in one pipeline at most; the rest go in the next."""

MAX_CHANNELS = 8
"""Channels a client has at most; a higher index shares a channel (modulo). A worker's
claim groups (``Settings.worker_claim_groups``, 1..8) therefore each get their own."""

_CHANNEL: ContextVar[int] = ContextVar("axon_pipeline_channel", default=0)


def use_channel(index: int) -> None:
    """Send the auto-pipelined commands of the current asyncio task, and of the tasks
    it starts from now on, through channel ``index`` (0 by default)."""
    _CHANNEL.set(index % MAX_CHANNELS)


class _Command(Waiting):
    __slots__ = ("args", "result")

    def __init__(self, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.args = args
        self.result: Any = None


class AutoPipeline(LeaderQueue[_Command]):
    """Coalesces commands issued concurrently on one ``Redis`` client into pipelines.

    Args:
        redis: a single-server client (not a cluster client).
        keep: keep a connection of the pool for this auto-pipeline's round trips
            (by default, if the pool has another one for everything else).
    """

    def __init__(self, redis: Redis, *, keep: bool | None = None) -> None:
        super().__init__()
        self._redis = redis
        self._pool = redis.connection_pool
        self._keep = getattr(self._pool, "max_connections", 1) > 1 if keep is None else keep
        self._connection: AbstractConnection | None = None
        self._pid = 0  # the process that took ``_connection`` (a forked child drops it)
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
        await self._join(command)  # axon.leader: one caller sends for everyone
        return command.result

    async def _flush_next(self) -> None:
        # A flush in flight is shielded, so its replies always reach their callers.
        with anyio.CancelScope(shield=True):
            # Let every task that is ready to run queue its command first (tasks woken
            # by the previous reply usually are): one loop iteration, no timer, so a
            # lone caller waits for nothing.
            await anyio.lowlevel.checkpoint()
            await self._flush()

    async def _flush(self) -> None:
        """Send what is queued as one round trip (the caller shields it from cancellation)."""
        batch = [self._pending.popleft() for _ in range(min(len(self._pending), MAX_PIPELINE))]
        try:
            replies = await self._round_trip([command.args for command in batch])
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

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and read their replies (an error reply as
        its ``ResponseError``), on the kept connection or one borrowed for the trip."""
        connection = self._connection
        if connection is not None and self._pid != os.getpid():
            connection = self._connection = None  # inherited through fork: not ours to use
        if connection is None:
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
            if self._keep:
                self._connection, self._pid = connection, os.getpid()
        else:
            # The check the pool makes at each checkout (no I/O): a socket the server
            # closed meanwhile (a restart) is reconnected now rather than failing this trip.
            await self._pool.ensure_connection(connection)
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            replies: list[Any] = []
            callbacks = self._redis.response_callbacks
            # The socket timeout covers reading all the replies, rather than arming a
            # timer for each one (math.inf: no per-reply timeout).
            timeout = getattr(connection, "socket_timeout", None)
            try:
                with anyio.fail_after(timeout):
                    for args in commands:
                        try:
                            reply = await connection.read_response(timeout=math.inf)
                        except ResponseError as exc:
                            replies.append(exc)
                            continue
                        callback = callbacks.get(args[0])
                        replies.append(reply if callback is None else callback(reply))
            except TimeoutError as exc:
                raise RedisTimeoutError(f"no reply from Redis within {timeout} s") from exc
            return replies
        except BaseException:
            # Replies may be left unread: never send on this socket again.
            await connection.disconnect(nowait=True)
            raise
        finally:
            if connection is not self._connection:
                await self._pool.release(connection)


class AutoPipelines:
    """A client's auto-pipelines by channel (``use_channel``), each made on first use.

    Each channel keeps a connection of the pool while another one is left for
    everything else; the rest borrow one per round trip.

    Args:
        redis: a single-server client (not a cluster client).
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._channels: list[AutoPipeline] = []

    def execute(self, *args: Any) -> Any:
        """``AutoPipeline.execute`` on the current channel (an awaitable)."""
        index = _CHANNEL.get()
        channels = self._channels
        if index >= len(channels):
            limit = getattr(self._redis.connection_pool, "max_connections", 1)
            while len(channels) <= index:
                channels.append(AutoPipeline(self._redis, keep=limit > len(channels) + 1))
        return channels[index].execute(*args)

    def statistics(self) -> tuple[int, int]:
        """(pipelines sent, commands sent) so far, over all channels."""
        counts = [channel.statistics() for channel in self._channels]
        return sum(p for p, _ in counts), sum(c for _, c in counts)
