"""Opening Redis clients and a ``Store`` from ``Settings``.

Two clients per store: one for ordinary commands and one for blocking reads,
so a parked ``XREAD BLOCK`` never holds a connection an append is waiting for.
Responses stay as bytes: event bytes must reach callers untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, Connection, ConnectionPool
from redis.connection import HiredisRespSerializer
from redis.exceptions import RedisError

from axon.errors import ConfigError, StoreUnavailable
from axon.settings import Settings
from axon.store import RedisClient, Store

COMMAND_TIMEOUT_S = 10.0
"""Socket timeout of the command client: a hung server surfaces as ``StoreUnavailable``."""


class _HiredisPacking:
    """Pack commands with hiredis (C) instead of redis-py's pure-Python packer.

    redis-py's asyncio connections always pack in Python; for an append batch of
    hundreds of events that was the largest single client cost (~3 µs/event vs
    ~1 µs). The output bytes are identical.
    """

    _packer = HiredisRespSerializer()  # type: ignore[no-untyped-call, unused-ignore]

    def pack_command(self, *args: Any) -> list[bytes]:
        # What HiredisRespSerializer.pack does, without its per-argument generator
        # (a tenth of the client's CPU per append): split a multi-word command name,
        # hand the rest to hiredis as is. Arguments hiredis refuses (bytearray, or
        # types redis-py rejects) take redis-py's path, which converts or raises.
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return self._packer.pack(*args)  # type: ignore[no-any-return]


class HiredisConnection(_HiredisPacking, Connection):
    """TCP connection packing with hiredis (``redis://`` URLs; TLS and unix sockets
    keep redis-py's own classes, which ``from_url`` picks for those schemes)."""


def connect(settings: Settings, *, url: str | None = None, blocking: bool = False) -> RedisClient:
    """A client for ``url`` (default ``settings.redis_url``), cluster-aware.

    Blocking clients get no socket timeout, since their reads wait on purpose.

    Raises:
        ConfigError: no URL is configured.
    """
    target = url or settings.redis_url
    if target is None:
        raise ConfigError("no Redis URL configured (set REDIS_URL or start the embedded Valkey)")
    timeout = None if blocking else COMMAND_TIMEOUT_S
    client: RedisClient
    if settings.redis_cluster:
        # redis-py's cluster pools cannot wait for a free connection (they raise at
        # the cap), so they keep redis-py's own, effectively unbounded, limit.
        client = RedisCluster.from_url(target, socket_timeout=timeout)
    else:
        # A bounded pool that waits for a free connection: a burst of requests
        # (a thousand SSE clients attaching at once) queues for a moment instead
        # of failing with "Too many connections".
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "max_connections": settings.redis_max_connections,
            "timeout": COMMAND_TIMEOUT_S,
        }
        if target.lower().startswith("redis://"):
            options["connection_class"] = HiredisConnection
        client = Redis.from_pool(BlockingConnectionPool.from_url(target, **options))
    # Stream replies stay raw ([id, [field, value]]): redis-py's callbacks would build
    # a dict per entry only for the store to take it apart again (see Store.read).
    for command in ("XRANGE", "XREAD"):
        client.set_response_callback(command, _raw_reply)
    return client


def node_client(node: Any) -> Redis:
    """A plain client for one node of a cluster, with the node's own connection settings
    (password, TLS, timeouts), for Pub/Sub: classic PUBLISH reaches every node, while
    redis-py's cluster Pub/Sub would route each channel by slot."""
    kwargs = {k: v for k, v in node.connection_kwargs.items() if k != "event_dispatcher"}
    return Redis.from_pool(ConnectionPool(connection_class=node.connection_class, **kwargs))


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


@asynccontextmanager
async def open_store(settings: Settings, *, url: str | None = None) -> AsyncIterator[Store]:
    """A ``Store`` with its own command and blocking clients, closed on exit."""
    commands = connect(settings, url=url)
    blocking = connect(settings, url=url, blocking=True)
    try:
        for client in (commands, blocking):
            if isinstance(client, RedisCluster):
                # Learn the slots now: redis-py initializes a cluster client on first
                # use, and concurrent first uses race (one replaces the node objects
                # and their connections under the others: AttributeError on write).
                try:
                    await client.initialize()
                except (RedisError, OSError) as exc:
                    raise StoreUnavailable(f"Redis Cluster is unreachable: {exc}") from exc
        yield Store(commands, settings=settings, blocking=blocking)
    finally:
        await blocking.aclose()
        await commands.aclose()
