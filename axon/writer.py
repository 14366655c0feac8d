"""The event writer: one task's appends, coalesced into batches, in call order.

Every append goes through ``EventWriter``: a single ``emit`` and a batch share
one path. Concurrent callers queue their events; one of them leads and sends
everything queued so far (up to the batch limits) in one script call, then
hands the lead to the oldest caller still waiting. Under load many emits cost
one round trip, only one batch is ever in flight, and seq order is call order.

The writer builds each event's bytes from its cached head (seq and hash) and
its lease epoch. When another writer moved the head, the script answers with
the current head and the batch is rebuilt on top of it (optimistic
concurrency, with jittered backoff after repeated collisions); when the epoch
is no longer current, the writer is fenced and its batch fails with
``Fenced``. A flush in flight is shielded from cancellation, so its outcome is
always known before the next batch is built.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import msgspec

from axon import metrics
from axon.chain import ChainHead
from axon.errors import (
    AxonError,
    EventTooLarge,
    InvalidEvent,
    StaleHead,
    StoreUnavailable,
)
from axon.events import (
    RESERVED_KINDS,
    build_event,
    check_kind,
    encode_data,
    event_hash,
    max_data_bytes,
)
from axon.leader import LeaderQueue, Waiting
from axon.records import TaskState
from axon.store import Store, StoredEvent, Transition, now_ms

MAX_STALE_RETRIES = 64
"""How often one batch is rebuilt after losing a race to another writer before giving up."""

STALE_BACKOFF_BASE_S = 0.0005
STALE_BACKOFF_MAX_S = 0.05
"""After the second lost race in a row, retries wait a random time up to this exponential cap."""


class WriterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one writer, for tests, benchmarks and metrics."""

    events: int
    batches: int
    stale_retries: int
    pending: int


class _Item(Waiting):
    """A group of events from one call that must land together (never split)."""

    __slots__ = ("events", "result", "size", "transition")

    def __init__(
        self, events: list[tuple[str, bytes]], transition: Transition | None, *, size: int
    ) -> None:
        super().__init__()
        self.events = events
        self.transition = transition
        self.size = size  # an upper bound of the event bytes these events will become
        self.result: list[StoredEvent] = []


class EventWriter(LeaderQueue[_Item]):
    """Appends one task's events with its lease epoch as fencing token.

    Args:
        store: where the log lives.
        task_id: the task whose log this writes.
        epoch: the writer's fencing token (0 for a task no worker has claimed).
        head: the head if known; otherwise it is read before the first flush.
    """

    def __init__(
        self, store: Store, task_id: str, *, epoch: int, head: ChainHead | None = None
    ) -> None:
        super().__init__()
        self._store = store
        self._settings = store.settings
        self.task_id = task_id
        self._epoch = epoch
        self._head = head
        self._events = 0
        self._batches = 0
        self._stale = 0
        self._limits: dict[str, int] = {}

    @property
    def epoch(self) -> int:
        """The fencing token this writer's appends carry."""
        return self._epoch

    @property
    def head(self) -> ChainHead | None:
        """The head after this writer's last successful append (``None`` if unknown)."""
        return self._head

    def statistics(self) -> WriterStatistics:
        """Events and batches written, races lost, and emits waiting."""
        return WriterStatistics(
            events=self._events,
            batches=self._batches,
            stale_retries=self._stale,
            pending=sum(len(item.events) for item in self._pending),
        )

    async def emit(self, kind: str, data: Mapping[str, Any] | None = None) -> StoredEvent:
        """Append one event; returns it with its seq and exact bytes once Redis accepted it.

        Raises:
            InvalidEvent / EventTooLarge: bad kind or data; nothing is queued.
            Fenced / TaskTerminal / TaskNotFound: the log refused the batch.
            StoreUnavailable: Redis failed mid-append; the outcome is unknown.
        """
        prepared = [self._prepare(kind, data)]
        (stored,) = await self._submit(_Item(prepared, None, size=self._size(prepared)))
        return stored

    async def emit_many(
        self, events: Sequence[tuple[str, Mapping[str, Any] | None]]
    ) -> list[StoredEvent]:
        """Append several events atomically and contiguously (all or none)."""
        if not events:
            return []
        prepared = [self._prepare(kind, data) for kind, data in events]
        size = self._size(prepared)
        self._check_group(prepared, size)
        return await self._submit(_Item(prepared, None, size=size))

    async def transition(
        self,
        to: TaskState,
        kind: str,
        data: Mapping[str, Any] | None = None,
        *,
        new_epoch: int | None = None,
        fields: Mapping[str, str] | None = None,
        lease_expired_before: int | None = None,
        release: bool = False,
    ) -> StoredEvent:
        """Append ``kind`` and move the task to ``to`` in the same script.

        Terminal states take their own name as kind (``finish`` does that). With
        ``new_epoch`` the writer adopts the new fencing token on success. With
        ``lease_expired_before`` it only happens if the current lease expired. With
        ``release`` a terminal transition also releases the task from the queue on
        a single server (``Transition.release``).

        Raises:
            IllegalTransition / TaskTerminal: the state machine forbids it.
            LeaseLive: the lease guard failed (its holder renewed it).
        """
        if to.terminal and kind != to.value:
            raise InvalidEvent(f"the event ending a task as {to.value} must have kind {to.value!r}")
        move = Transition(
            to=to,
            new_epoch=new_epoch,
            fields=dict(fields or {}),
            lease_expired_before=lease_expired_before,
            release=release,
        )
        prepared = [self._prepare(kind, data, reserved_ok=True)]
        item = _Item(prepared, move, size=self._size(prepared))
        (stored,) = await self._submit(item)
        return stored

    async def finish(
        self,
        state: TaskState,
        data: Mapping[str, Any] | None = None,
        *,
        fields: Mapping[str, str] | None = None,
        lease_expired_before: int | None = None,
        release: bool = False,
    ) -> StoredEvent:
        """Write the terminal event and the terminal state together; the lease is cleared.

        With ``release``, on a single server, the task also leaves the queue's
        in-flight set in the same script (see ``transition``)."""
        if not state.terminal:
            raise ValueError(f"{state.value} is not a terminal state")
        return await self.transition(
            state,
            state.value,
            data,
            fields={"lease_owner": "", "lease_deadline_ms": "", **(fields or {})},
            lease_expired_before=lease_expired_before,
            release=release,
        )

    # -- internals ----------------------------------------------------------

    def _prepare(
        self, kind: str, data: Mapping[str, Any] | None, *, reserved_ok: bool = False
    ) -> tuple[str, bytes]:
        limit = self._limits.get(kind) if isinstance(kind, str) else None
        if limit is None:  # first use of this kind by this writer: validate and size it once
            check_kind(kind)
            limit = max_data_bytes(
                task=self.task_id, kind=kind, max_bytes=self._settings.max_event_bytes
            )
            self._limits[kind] = limit
        if kind in RESERVED_KINDS and not reserved_ok:
            raise InvalidEvent(
                f"kind {kind!r} is written by the engine with its state change; "
                "use transition() or finish()",
                kind=kind,
            )
        encoded = encode_data({} if data is None else data, max_bytes=1 << 62)
        if len(encoded) > limit:
            raise EventTooLarge(
                f"event data is {len(encoded)} bytes; events of kind {kind!r} may carry at "
                f"most {limit} (max_event_bytes={self._settings.max_event_bytes})",
                size=len(encoded),
                limit=limit,
            )
        return kind, encoded

    def _size(self, prepared: list[tuple[str, bytes]]) -> int:
        """Upper bound of the event bytes ``prepared`` becomes: data plus the widest envelope."""
        widest = self._settings.max_event_bytes
        return sum(widest - self._limits[kind] + len(data) for kind, data in prepared)

    def _check_group(self, prepared: list[tuple[str, bytes]], size: int) -> None:
        settings = self._settings
        if len(prepared) > settings.max_batch_events:
            raise InvalidEvent(
                f"{len(prepared)} events in one atomic group; the limit is "
                f"{settings.max_batch_events}",
                limit=settings.max_batch_events,
            )
        if size > settings.max_batch_bytes:
            raise EventTooLarge(
                f"an atomic group of {len(prepared)} events would be up to {size} bytes; "
                f"one append carries at most {settings.max_batch_bytes} (max_batch_bytes)",
                size=size,
                limit=settings.max_batch_bytes,
            )

    async def _submit(self, item: _Item) -> list[StoredEvent]:
        """Queue ``item`` and return its stored events once it landed (or raise why not).

        Callers batch through ``axon.leader``: one of them flushes everyone's items,
        one batch at a time, which keeps call order.
        """
        await self._join(item)
        return item.result

    def _take_batch(self) -> list[_Item]:
        """Pop the next batch: queued items in order, within limits; a transition rides alone."""
        settings = self._settings
        batch: list[_Item] = []
        count = size = 0
        while self._pending:
            item = self._pending[0]
            if batch and (
                item.transition is not None
                or count + len(item.events) > settings.max_batch_events
                or size + item.size > settings.max_batch_bytes
            ):
                break
            batch.append(self._pending.popleft())
            count += len(item.events)
            size += item.size
            if item.transition is not None:
                break
        return batch

    async def _flush_next(self) -> None:
        batch = self._take_batch()
        with anyio.CancelScope(shield=True):
            try:
                stored = await self._append(batch)
            except Exception as exc:
                # The head may have moved (a strict-durability error comes after the
                # write; a lost connection leaves the outcome unknown): re-read it.
                self._head = None
                if not isinstance(exc, AxonError):
                    exc = StoreUnavailable(f"append failed unexpectedly: {exc!r}")
                for item in batch:
                    item.error = exc
                    item.finish()
                return
        offset = 0
        for item in batch:
            item.result = stored[offset : offset + len(item.events)]
            offset += len(item.events)
            item.finish()

    async def _append(self, batch: list[_Item]) -> list[StoredEvent]:
        transition = batch[-1].transition
        flat = [event for item in batch for event in item.events]
        started = time.perf_counter_ns()
        for attempt in range(MAX_STALE_RETRIES):
            if attempt > 1:
                # Several writers keep colliding: back off with full jitter so one wins.
                cap = min(STALE_BACKOFF_BASE_S * 2 ** (attempt - 2), STALE_BACKOFF_MAX_S)
                await anyio.sleep(random.uniform(0, cap))  # noqa: S311 - jitter, not crypto
            head = self._head
            if head is None:
                head = self._head = await self._store.head(self.task_id)
            built, last_hash = self._build(flat, head)
            try:
                new_head = await self._store.append_built(
                    self.task_id,
                    built,
                    expected=head,
                    epoch=self._epoch,
                    transition=transition,
                    last_hash=last_hash,
                )
            except StaleHead as exc:
                self._stale += 1
                self._head = ChainHead(seq=exc.details["head_seq"], hash=exc.details["head_hash"])
                continue
            self._head = new_head
            if transition is not None and transition.new_epoch is not None:
                self._epoch = transition.new_epoch
            self._events += len(flat)
            self._batches += 1
            to = None if transition is None else transition.to
            metrics.observe_append(self.task_id, head.seq + 1, len(flat), started, to)
            return [StoredEvent(head.seq + 1 + i, raw, kind) for i, (kind, raw) in enumerate(built)]
        raise StaleHead(
            f"gave up after {MAX_STALE_RETRIES} lost races for the head of task {self.task_id}",
            task_id=self.task_id,
        )

    def _build(
        self, flat: list[tuple[str, bytes]], head: ChainHead
    ) -> tuple[list[tuple[str, bytes]], str]:
        """Turn (kind, encoded data) into (kind, final event bytes) continuing ``head``;
        also returns the hash of the last event's bytes (the new head's hash)."""
        ts = now_ms()
        seq, prev = head.seq, head.hash
        limit = self._settings.max_event_bytes
        out = []
        for kind, data in flat:
            seq += 1
            raw = build_event(
                task=self.task_id, seq=seq, prev=prev, ts=ts, kind=kind, data=data, max_bytes=limit
            )
            prev = event_hash(raw)
            out.append((kind, raw))
        return out, prev
