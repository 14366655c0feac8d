"""Shared live tails: one Pub/Sub connection and one reader for every watched task.

An API process may serve ten thousand SSE subscribers. Giving each one a
blocked ``XREAD`` would cost ten thousand Redis connections, and a single
multi-stream ``XREAD`` is refused on a Redis Cluster (its keys live in
different slots). Instead:

* the append script publishes the new head seq on the task's tail channel
  after every batch (``KeySpace.tail_channel``);
* the ``Tailer`` holds one Pub/Sub connection, subscribed to the channel of
  every task that has at least one local subscriber (classic ``PUBLISH``
  reaches every node of a cluster, so any one node will do);
* a notification marks the task's ``TaskTail`` dirty; one fetch loop reads the
  new events of all dirty tails in one pipelined round trip (``XRANGE`` from
  the tail's head + 1) and keeps the most recent ones in a bounded buffer;
* subscribers read the buffer by seq, or Redis when their cursor is older than
  the buffer. Everything is addressed by seq, so the hand-off from backfill to
  live can neither skip nor repeat an event, whatever is appended meanwhile.

Pub/Sub is at-most-once. Nothing relies on it for correctness: after a lost
connection every tail is re-read from its head, and a periodic sweep re-reads
all tails in case a notification was dropped in between (``heal_interval_s``).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc
import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from axon import metrics
from axon.connection import node_client
from axon.errors import AxonError
from axon.events import TERMINAL_KINDS, kind_bytes_of
from axon.keys import check_task_id
from axon.store import Store, StoredEvent, parse_entries


class TailerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a ``Tailer`` (``/metrics`` and tests read them)."""

    tails: int
    subscribers: int
    buffered_events: int
    notifications: int
    fetches: int
    fetched_events: int
    reconnects: int
    lagged: int
    aborted: int


TERMINAL_KIND_BYTES = frozenset(kind.encode() for kind in TERMINAL_KINDS)


def frame_of(seq: int, raw: bytes) -> tuple[bytes, bool]:
    """The SSE frame of one event (contract 2), and whether the event is terminal."""
    kind = kind_bytes_of(raw)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind, raw), kind in TERMINAL_KIND_BYTES


class TaskTail:
    """The live view of one task's log that all local subscribers share.

    ``frames`` holds the SSE frames of events ``base + 1 .. head`` in order (at
    most about twice ``capacity``), built once however many subscribers send
    them. ``head`` is ``None`` until the first read after the subscription was
    confirmed; ``terminal_seq`` is the seq of the terminal event once seen.
    """

    __slots__ = ("_changed", "base", "bucket", "capacity", "channel", "dirty", "frames",
                 "head", "task_id", "terminal_seq", "watchers")  # fmt: skip

    def __init__(self, task_id: str, channel: str, capacity: int) -> None:
        self.task_id = task_id
        self.channel = channel
        self.capacity = capacity
        self.bucket = zlib.crc32(task_id.encode())
        self.base = 0
        self.head: int | None = None
        self.frames: list[bytes] = []
        self.terminal_seq: int | None = None
        self.watchers = 0
        self.dirty = False
        self._changed = anyio.Event()

    def after(self, cursor: int, limit: int) -> list[bytes] | None:
        """Frames of buffered events with seq > ``cursor`` (at most ``limit``).

        Returns ``None`` when the buffer cannot tell: the tail has not read its
        head yet, or ``cursor`` is older than the oldest buffered event (the
        caller reads Redis instead). An empty list means "nothing newer yet".
        """
        if self.head is None or cursor < self.base:
            return None
        start = cursor - self.base
        return self.frames[start : start + limit]

    async def wait_changed(self) -> None:
        """Wait until new events are buffered, the keep-alive ticker ticks, or the
        tailer closes (no timer of its own: one ticker serves every waiter)."""
        await self._changed.wait()

    def wake(self) -> None:
        """Release everyone waiting in ``wait_changed``."""
        self._changed.set()
        self._changed = anyio.Event()

    def extend(self, events: list[StoredEvent]) -> None:
        """Add events read from Redis after the current head; keep the buffer bounded."""
        if not events:
            return
        frames = []
        for event in events:
            frame, terminal = frame_of(event.seq, event.raw)
            frames.append(frame)
            if terminal:
                self.terminal_seq = event.seq
        if self.head is None or events[0].seq != self.head + 1:
            # The first read, or events before these were trimmed: restart the buffer.
            self.base = events[0].seq - 1
            self.frames = frames
        else:
            self.frames.extend(frames)
        self.head = events[-1].seq
        if len(self.frames) > 2 * self.capacity:
            drop = len(self.frames) - self.capacity
            del self.frames[:drop]
            self.base += drop
        self.wake()


class Sender(Protocol):
    """What the ticker needs of a stream: when its current send began, and how to stop it."""

    sending_since: float | None

    def abort(self) -> None:
        """Stop the stream: its client accepted no bytes for too long."""
        ...


class Tailer:
    """Fan-out of live events to any number of local subscribers (see module doc).

    Args:
        store: the task store; its command client does the range reads, and a
            connection of its own (from the blocking client's settings) carries
            the Pub/Sub subscriptions.
        buffer_events: events kept per watched task for subscribers to share;
            a subscriber that falls further behind than this is lagging.
        page: most events one range read fetches.
        heal_interval_s: how often every tail is re-read in case a notification was lost.
        keepalive_s: subscribers send a keep-alive comment when idle about this long;
            one ticker wakes every tail twice per interval (no timer per subscriber).
        send_timeout_s: a stream whose send has not finished after this long is
            aborted (its client stopped reading or vanished).
    """

    def __init__(
        self,
        store: Store,
        *,
        buffer_events: int = 1024,
        page: int = 1000,
        heal_interval_s: float = 10.0,
        keepalive_s: float = 15.0,
        send_timeout_s: float = 30.0,
    ) -> None:
        if buffer_events < 1 or page < 1 or min(heal_interval_s, keepalive_s, send_timeout_s) <= 0:
            raise ValueError("buffer_events and page must be >= 1, intervals > 0")
        self.store = store
        self.keepalive_s = keepalive_s
        self.send_timeout_s = send_timeout_s
        self.sending: set[Sender] = set()
        self.buffer_events = buffer_events
        self.page = page
        self.heal_interval_s = heal_interval_s
        self.closing = False
        self._tails: dict[str, TaskTail] = {}
        self._by_channel: dict[bytes, TaskTail] = {}
        self._dirty_event = anyio.Event()
        self._pubsub: PubSub | None = None
        self._pending_subscribe: set[str] = set()
        self._pending_unsubscribe: set[str] = set()
        self._control = anyio.Event()
        self._running = False
        self._notifications = 0
        self._fetches = 0
        self._fetched_events = 0
        self._reconnects = 0
        self._lagged = 0
        self._aborted = 0

    # -- for subscribers ----------------------------------------------------

    @asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[TaskTail]:
        """The shared tail of ``task_id`` for as long as the block runs.

        The first watcher of a task subscribes to its channel; the last one to
        leave unsubscribes.
        """
        if not self._running:
            raise RuntimeError("the tailer is not running")
        check_task_id(task_id)
        tail = self._tails.get(task_id)
        if tail is None:
            channel = self.store.keys.tail_channel(task_id)
            tail = TaskTail(task_id, channel, self.buffer_events)
            self._tails[task_id] = tail
            self._by_channel[channel.encode()] = tail
            self._pending_unsubscribe.discard(channel)
            self._pending_subscribe.add(channel)
            self._control.set()
        tail.watchers += 1
        try:
            yield tail
        finally:
            tail.watchers -= 1
            if tail.watchers == 0 and self._tails.get(task_id) is tail:
                del self._tails[task_id]
                del self._by_channel[tail.channel.encode()]
                self._pending_subscribe.discard(tail.channel)
                self._pending_unsubscribe.add(tail.channel)
                self._control.set()

    @property
    def connected(self) -> bool:
        """Whether the Pub/Sub connection is up (``/readyz`` reports it)."""
        return self._running and self._pubsub is not None

    def note_lagged(self) -> None:
        """Count a subscriber dropped for falling behind the buffer."""
        self._lagged += 1

    def statistics(self) -> TailerStatistics:
        """Current counters."""
        return TailerStatistics(
            tails=len(self._tails),
            subscribers=sum(t.watchers for t in self._tails.values()),
            buffered_events=sum(len(t.frames) for t in self._tails.values()),
            notifications=self._notifications,
            fetches=self._fetches,
            fetched_events=self._fetched_events,
            reconnects=self._reconnects,
            lagged=self._lagged,
            aborted=self._aborted,
        )

    def close(self) -> None:
        """Start a graceful shutdown: wake every subscriber so it tells its client to
        reconnect (they check ``closing``)."""
        self.closing = True
        for tail in list(self._tails.values()):
            tail.wake()

    # -- the service --------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe, read and sweep until cancelled; ready once Pub/Sub is connected."""
        self._running = True
        try:
            async with anyio.create_task_group() as group:
                await group.start(self._subscription_loop)
                group.start_soon(self._fetch_loop)
                group.start_soon(self._heal_loop)
                group.start_soon(self._tick_loop)
                task_status.started()
        finally:
            self._running = False

    def _mark_dirty(self, tail: TaskTail) -> None:
        if not tail.dirty:
            tail.dirty = True
            self._dirty_event.set()

    async def _fetch_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event = anyio.Event()
            dirty = [t for t in self._tails.values() if t.dirty]
            for tail in dirty:
                tail.dirty = False
            if not dirty:
                continue
            try:
                await self._fetch(dirty)
            except (AxonError, RedisError, OSError):
                # Redis is unreachable or refused: try again after a pause. Subscribers
                # keep their keep-alives going meanwhile and lose nothing.
                metrics.redis_error()
                for tail in dirty:
                    self._mark_dirty(tail)
                await anyio.sleep(0.5)

    async def _fetch(self, tails: list[TaskTail]) -> None:
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=False)
        for tail in tails:
            if tail.head is None:
                pipe.hget(keys.task(tail.task_id), "head_seq")
            else:
                pipe.xrange(keys.events(tail.task_id), min=f"{tail.head + 1}-0", count=self.page)
        replies: list[Any] = await self.store.call(pipe.execute())
        self._fetches += 1
        for tail, reply in zip(tails, replies, strict=True):
            if self._tails.get(tail.task_id) is not tail:
                continue  # nobody watches it any more
            if tail.head is None:
                tail.head = int(reply) if reply else 0
                tail.base = tail.head
                tail.wake()
                continue
            events = parse_entries(reply)
            self._fetched_events += len(events)
            tail.extend(events)
            if len(events) >= self.page:
                self._mark_dirty(tail)

    async def _heal_loop(self) -> None:
        while True:
            await anyio.sleep(self.heal_interval_s)
            for tail in list(self._tails.values()):
                self._mark_dirty(tail)

    async def _tick_loop(self) -> None:
        """Abort stuck sends and wake idle subscribers for their keep-alives.

        Every tail is woken twice per keep-alive interval, but not all at once: the
        tails are spread over the ticks (by a hash of the task id), so ten thousand
        subscribers checking their keep-alive never stall live events in one burst.
        """
        step = min(0.1, self.keepalive_s / 4)
        buckets = max(1, round(self.keepalive_s / 2 / step))
        tick = 0
        while True:
            await anyio.sleep(step)
            tick += 1
            now = time.monotonic()
            limit = now - self.send_timeout_s
            for sender in [s for s in self.sending if (s.sending_since or now) < limit]:
                self.sending.discard(sender)
                self._aborted += 1
                sender.abort()
            bucket = tick % buckets
            for tail in list(self._tails.values()):
                if tail.bucket % buckets == bucket:
                    tail.wake()

    async def _subscription_loop(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False
        backoff = 0.1
        while True:
            connected_at = time.monotonic()
            try:
                await self._serve_subscriptions(None if started else task_status)
            except* (RedisError, OSError, AxonError):
                # Lost the connection (the reader and the (un)subscribe sender share a
                # task group, hence except*): reconnect; every tail re-reads from its head.
                self._reconnects += 1
                metrics.redis_error()
            started = True
            if time.monotonic() - connected_at > 10:
                backoff = 0.1
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _serve_subscriptions(self, task_status: anyio.abc.TaskStatus[None] | None) -> None:
        client, owned = await self._pubsub_client()
        pubsub = client.pubsub()
        try:
            # A channel of our own keeps the connection subscribed even with no tails,
            # so reading never returns early for want of subscriptions.
            await pubsub.subscribe(self.store.keys.tail_channel("_"))
            # After a reconnect, every tail resubscribes and re-reads from its head.
            self._pending_unsubscribe.clear()
            self._pending_subscribe = {tail.channel for tail in self._tails.values()}
            self._control.set()
            self._pubsub = pubsub
            if task_status is not None:
                task_status.started()
            async with anyio.create_task_group() as group:
                group.start_soon(self._send_subscriptions, pubsub)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._on_message(message)
        finally:
            self._pubsub = None
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                if owned:
                    await client.aclose()

    async def _send_subscriptions(self, pubsub: PubSub) -> None:
        """Send queued (un)subscribe requests; the reader sees the confirmations."""
        while True:
            await self._control.wait()
            self._control = anyio.Event()
            subscribe, self._pending_subscribe = sorted(self._pending_subscribe), set()
            unsubscribe, self._pending_unsubscribe = sorted(self._pending_unsubscribe), set()
            # Big batches in slices: one SUBSCRIBE of 10,000 channels is one huge reply.
            for start in range(0, len(subscribe), 500):
                await pubsub.subscribe(*subscribe[start : start + 500])
            for start in range(0, len(unsubscribe), 500):
                await pubsub.unsubscribe(*unsubscribe[start : start + 500])

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        tail = self._by_channel.get(channel) if isinstance(channel, bytes) else None
        if tail is None:
            return
        kind = message.get("type")
        if kind == "message":
            self._notifications += 1
            data = message.get("data")
            try:
                seq = int(data) if isinstance(data, bytes | str) else math.inf
            except ValueError:
                seq = math.inf
            if tail.head is None or seq > tail.head:
                self._mark_dirty(tail)
        elif kind == "subscribe":
            # Confirmed: any append from now on is notified, so the read that
            # follows (the first one, or a re-read after a reconnect) misses none.
            self._mark_dirty(tail)

    async def _pubsub_client(self) -> tuple[Redis, bool]:
        """A client for Pub/Sub, and whether it is ours to close.

        On a single server, a connection of the store's blocking client (no
        socket timeout: the reader waits on purpose). On a cluster, a client
        of one node: classic PUBLISH reaches every node, while redis-py's
        cluster Pub/Sub would route each channel by slot instead.
        """
        blocking = self.store.blocking
        if isinstance(blocking, RedisCluster):
            await blocking.initialize()
            return node_client(blocking.get_random_node()), True
        return blocking, False
