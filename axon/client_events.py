"""How ``axon.Client`` reads a task's events: verified, resumable, each event exactly once.

* ``TaskEvent`` — one event as the client hands it out: its exact bytes
  (``raw``), their SHA-256 (``hash``) and the decoded fields.
* ``EventChain`` — event bytes in, ``TaskEvent``s out, verifying the hash chain
  as they arrive (``axon.chain.ChainVerifier``), from the beginning or from a
  trusted event in the middle.
* ``follow_stream`` — Server-Sent Events (parsed by httpx-sse) with
  reconnects. After a dropped or silent connection, a server restart,
  ``axon.reconnect`` or ``axon.lagged`` it reconnects with ``Last-Event-ID``
  set to the last event it delivered, so no event is skipped or repeated.
* ``read_pages`` — what exists now, as NDJSON export pages (``follow=False``).
* ``error_for``, ``transient``, ``Backoff`` — the client's reading of the error
  body (contract 5) and its retry policy, shared with ``axon/client.py``.

The requests themselves (URL, key, timeouts) belong to ``axon/client.py``,
which hands them in as callables: this module never sees a key.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any

import anyio
import httpx
import msgspec
from httpx_sse import EventSource, ServerSentEvent

from axon.chain import ChainHead, ChainVerifier
from axon.errors import (
    ApiError,
    ArchiveUnavailable,
    AxonError,
    CursorAhead,
    DurabilityTimeout,
    DurabilityUnsupported,
    EventNotFound,
    EventsUnavailable,
    EventTooLarge,
    Fenced,
    IdempotencyConflict,
    IllegalTransition,
    InvalidArgument,
    InvalidCursor,
    InvalidEvent,
    InvalidTaskId,
    InvalidTaskSpec,
    PermissionDenied,
    ReceiptsUnavailable,
    RequestTooLarge,
    ServerUnreachable,
    StaleHead,
    StoreUnavailable,
    TaskExists,
    TaskNotFinished,
    TaskNotFound,
    TaskTerminal,
    Unauthenticated,
)
from axon.events import TERMINAL_KINDS
from axon.wire import ErrorDetail, Task

_log = logging.getLogger("axon.client")


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a task, verified against the chain before it was handed out.

    ``raw`` is the event exactly as the server served it (contract 1: stored,
    hashed and signed as these bytes); ``hash`` is their SHA-256, the next
    event's ``prev``; the other fields are decoded from ``raw``.
    """

    task: str
    seq: int
    prev: str
    ts: int
    kind: str
    data: dict[str, Any]
    hash: str
    raw: bytes

    @property
    def terminal(self) -> bool:
        """True for the event that ended the task (succeeded, failed, canceled, timed_out)."""
        return self.kind in TERMINAL_KINDS


class ExportPage(msgspec.Struct, frozen=True, kw_only=True):
    """One NDJSON export response: its exact body and its ``X-Axon-*-Seq`` headers."""

    body: bytes
    last_seq: int
    head_seq: int

    @property
    def lines(self) -> list[bytes]:
        """The event bytes of the page, in order (the body is one event per line)."""
        return self.body.split(b"\n")[:-1] if self.body else []


class EventChain:
    """Turns event bytes into verified ``TaskEvent``s, in order.

    Raises ``ChainBroken`` (from ``axon.chain``) on the first event that does not
    continue the chain: wrong task, a gap, a duplicate, a ``prev`` that is not
    the hash of the event before it, bytes that are not an event.
    """

    def __init__(self, task_id: str, start: ChainHead) -> None:
        self._verifier = ChainVerifier(task=task_id, start=start)

    @property
    def head(self) -> ChainHead:
        """The last verified event (seq and hash); the start while nothing was fed."""
        return self._verifier.head

    @property
    def count(self) -> int:
        """How many events were verified."""
        return self._verifier.count

    def feed(self, raw: bytes) -> TaskEvent:
        """Verify the next event's bytes and return it."""
        event = self._verifier.feed(raw)
        return TaskEvent(
            task=event.task,
            seq=event.seq,
            prev=event.prev,
            ts=event.ts,
            kind=event.kind,
            data=event.data,
            hash=self._verifier.head.hash,
            raw=raw,
        )

    def feed_frame(self, frame: ServerSentEvent) -> TaskEvent:
        """Verify the event an SSE frame carries; its ``id`` and ``event`` must match it.

        The frame's data is the event's bytes as UTF-8 text (contract 1 events are
        UTF-8), so encoding it back gives the bytes the server sent.
        """
        event = self.feed(frame.data.encode("utf-8"))
        if frame.id != str(event.seq) or frame.event != event.kind:
            raise ApiError(
                f"an SSE frame (id {frame.id[:20]!r}, event {frame.event[:70]!r}) does not "
                f"match the event it carries (seq {event.seq}, kind {event.kind!r})",
                status=200,
                error_code="invalid_response",
            )
        return event

    def check_head(self, expected: ChainHead) -> None:
        """Check that the chain ends exactly at ``expected`` (``ChainBroken`` if not)."""
        self._verifier.check_head(expected)


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with full jitter, for request retries and reconnects."""

    first_s: float = 0.1
    max_s: float = 5.0

    def delay(self, failures: int) -> float:
        """The pause after the ``failures``-th failure in a row (1-based):
        uniform(0, min(max_s, first_s * 2**(failures - 1)))."""
        ceiling = min(self.max_s, self.first_s * 2 ** max(failures - 1, 0))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter


_ERRORS: dict[str, type[AxonError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        InvalidCursor,
        InvalidTaskId,
        Unauthenticated,
        PermissionDenied,
        TaskNotFound,
        EventNotFound,
        TaskExists,
        IdempotencyConflict,
        CursorAhead,
        TaskTerminal,
        IllegalTransition,
        StaleHead,
        TaskNotFinished,
        Fenced,
        EventsUnavailable,
        RequestTooLarge,
        InvalidTaskSpec,
        InvalidEvent,
        EventTooLarge,
        StoreUnavailable,
        ArchiveUnavailable,
        ReceiptsUnavailable,
        DurabilityTimeout,
        DurabilityUnsupported,
    )
}
"""The ``axon.errors`` class of each API error code; other codes become ``ApiError``."""

_error_decoder = msgspec.json.Decoder(ErrorDetail)


def error_for(status: int, error: ErrorDetail) -> AxonError:
    """The typed error of an API error (the ``error`` object of contract 5's body)."""
    cls = _ERRORS.get(error.code)
    exc = (
        cls(error.message)
        if cls is not None
        else ApiError(error.message, status=status, error_code=error.code)
    )
    exc.details = dict(error.details)
    return exc


def transient(error: AxonError) -> bool:
    """True for failures that a retry of the same (idempotent) request may not meet again."""
    if isinstance(error, ApiError):
        return error.status in (429, 502, 503, 504)
    return isinstance(error, StoreUnavailable | DurabilityTimeout | StaleHead | ServerUnreachable)


OpenStream = Callable[[str, int], AbstractAsyncContextManager[httpx.Response]]
"""Opens an SSE response of a task's events after a seq, or raises its typed error."""

GetTask = Callable[[str], Awaitable[Task]]
ExportPageOf = Callable[[str, int, int], Awaitable[ExportPage]]
"""Reads one NDJSON export page: task id, events after this seq, at most this many."""

_RESUME = frozenset({"axon.lagged", "axon.reconnect"})
_ENDED = "the stream ended before the terminal event"


async def follow_stream(
    task_id: str,
    chain: EventChain,
    *,
    open_stream: OpenStream,
    get_task: GetTask,
    backoff: Backoff,
    reconnect_timeout_s: float,
) -> AsyncGenerator[TaskEvent, None]:
    """Every event after ``chain.head``, live, until the task's terminal event.

    Reconnects, resuming after the last event delivered, when the connection
    drops or stays silent past the read timeout, on ``axon.reconnect`` (the
    server is shutting down) and ``axon.lagged`` (this reader fell behind), and
    on transient errors (503 ``store_unavailable``, proxies' 502/504).

    Raises:
        ChainBroken: an event does not continue the verified chain.
        EventsUnavailable, ArchiveUnavailable, TaskNotFound: from an
            ``axon.unavailable`` frame; reconnecting would not help.
        ServerUnreachable: no connection could be made for ``reconnect_timeout_s``.
        AxonError: any other error the server answered with (401, 404, …).
    """
    failures = 0
    unreachable_since: float | None = None
    while True:
        connected = False
        delivered = 0
        why = _ENDED
        lagged = False
        error: AxonError | None = None
        try:
            async with open_stream(task_id, chain.head.seq) as response:
                connected = True
                unreachable_since = None
                last_id = ""
                async with aclosing(EventSource(response).aiter_sse()) as frames:
                    async for frame in frames:
                        # httpx-sse repeats the last id on frames without one (the WHATWG
                        # rule), so an event frame is one that brings a new id: control
                        # frames never carry one, whatever their name.
                        fresh, last_id = frame.id != last_id, frame.id
                        if fresh:
                            event = chain.feed_frame(frame)
                            delivered += 1
                            failures = 0
                            yield event
                            if event.terminal:
                                return
                        elif frame.event == "axon.unavailable":
                            raise _control_error(frame)
                        elif frame.event in _RESUME:
                            why = f"the server sent {frame.event}"
                            lagged = frame.event == "axon.lagged"
                            break
                        # else: the retry hint, or a control frame this client does not
                        # know; the server ends the response after one.
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            why = f"the connection failed ({reason})"
            error = ServerUnreachable(
                f"lost the event stream of task {task_id} after seq {chain.head.seq}: {reason}",
                task_id=task_id,
                last_seq=chain.head.seq,
            )
        except AxonError as exc:
            if not transient(exc):
                raise
            code = exc.error_code if isinstance(exc, ApiError) else exc.code
            why, error = f"the server answered {code} ({exc.message})", exc

        if lagged:
            delay = 0.0  # the server is fine; this reader fell behind: backfill at once
        else:
            if not connected:
                now = anyio.current_time()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if error is not None and now - unreachable_since >= reconnect_timeout_s:
                    raise error
            elif why == _ENDED and delivered == 0 and await _finished(task_id, chain, get_task):
                return  # a stream that ends with nothing: the task ended at or before the cursor
            failures += 1
            delay = backoff.delay(failures)
        _log.info(
            "events of task %s after seq %d: %s; reconnecting in %.2f s",
            task_id, chain.head.seq, why, delay,
        )  # fmt: skip
        await anyio.sleep(delay)


async def _finished(task_id: str, chain: EventChain, get_task: GetTask) -> bool:
    """True if the task is finished and every one of its events was delivered."""
    try:
        task = await get_task(task_id)
    except AxonError as exc:
        if transient(exc):
            return False
        raise
    return task.state.terminal and task.last_seq <= chain.head.seq


def _control_error(frame: ServerSentEvent) -> AxonError:
    """The typed error of an ``axon.unavailable`` control frame."""
    try:
        detail = _error_decoder.decode(frame.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        detail = ErrorDetail(
            code="events_unavailable", message=f"the server sent {frame.event} ({frame.data[:200]})"
        )
    return error_for(200, detail)


async def read_pages(
    task_id: str, chain: EventChain, *, export_page: ExportPageOf, page_size: int = 1000
) -> AsyncGenerator[TaskEvent, None]:
    """The events after ``chain.head`` that exist now, from NDJSON export pages.

    Raises:
        ChainBroken: an event does not continue the verified chain.
        ApiError: the pages contradict their own headers (``invalid_response``).
    """
    while True:
        page = await export_page(task_id, chain.head.seq, page_size)
        for raw in page.lines:
            yield chain.feed(raw)
        if check_page(task_id, page, chain):
            return


def check_page(task_id: str, page: ExportPage, chain: EventChain) -> bool:
    """After feeding a page's events to ``chain``: True if the page reached the head
    it reports, False if more pages follow.

    Raises:
        ApiError: the page contradicts its own headers (``invalid_response``).
    """
    if page.last_seq != chain.head.seq or (not page.lines and page.last_seq < page.head_seq):
        raise ApiError(
            f"an export page of task {task_id} ends at seq {chain.head.seq}, its headers "
            f"say {page.last_seq} (head {page.head_seq})",
            status=200,
            error_code="invalid_response",
        )
    return page.last_seq >= page.head_seq
