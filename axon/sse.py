"""Server-Sent Events for one task: backfill from a cursor, then live tail (contract 2).

Frames:

* one per event: ``id: <seq>``, ``event: <kind>``, ``data: <event bytes>``;
* ``retry: <ms>`` once at the start, and ``: keep-alive`` comments while idle;
* control frames *without* an ``id`` (so a browser's ``Last-Event-ID`` stays on
  the last real event), whose data is a JSON object with ``code`` and ``message``:

  ``axon.unavailable``  events after the cursor are gone from Redis; nothing
                        after it is sent (``details.first_available``).
  ``axon.lagged``       the client read slower than events arrived and fell
                        out of the shared buffer; resume from ``Last-Event-ID``.
  ``axon.reconnect``    the server is shutting down; resume from ``Last-Event-ID``.

The stream ends after the terminal event. The response task runs the sender
and a disconnect watcher in one task group; whichever finishes first cancels
the other, so a vanished client never leaves a task behind.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec
from starlette.types import Receive, Scope, Send

from axon.errors import ArchiveUnavailable, AxonError, EventsUnavailable, TaskNotFound
from axon.metrics import SSE_SUBSCRIBERS
from axon.store import Store
from axon.tailer import Tailer, TaskTail, frame_of

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]

KEEPALIVE = b": keep-alive\n\n"


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How one SSE response behaves (from ``Settings``); keep-alive and send timeout
    are the ``Tailer``'s, since its ticker drives them."""

    retry_ms: int = 2000
    page: int = 1000


def frames_of(after_seq: int, raws: list[bytes]) -> tuple[bytes, int, bool]:
    """Frames for the events ``after_seq + 1 ..`` with bytes ``raws``: the frame bytes,
    the last seq sent and whether a terminal event ended them."""
    parts: list[bytes] = []
    seq = after_seq
    for raw in raws:
        seq += 1
        frame, terminal = frame_of(seq, raw)
        parts.append(frame)
        if terminal:
            return b"".join(parts), seq, True
    return b"".join(parts), seq, False


_control = msgspec.json.Encoder()


def control_frame(name: str, code: str, message: str, **details: object) -> bytes:
    """A control frame (no ``id``) carrying a contract-5-like error object."""
    body = _control.encode({"code": code, "message": message, "details": details})
    return b"event: %s\ndata: %s\n\n" % (name.encode(), body)


class EventStream:
    """The ASGI response streaming one task's events from ``cursor`` (see module doc)."""

    def __init__(
        self,
        *,
        store: Store,
        tailer: Tailer,
        task_id: str,
        cursor: int,
        finished: bool,
        options: StreamOptions,
    ) -> None:
        self.store = store
        self.tailer = tailer
        self.task_id = task_id
        self.cursor = cursor
        self.finished = finished
        self.options = options
        self.sending_since: float | None = None
        self._last_sent = 0.0
        self._scope: anyio.CancelScope | None = None

    def abort(self) -> None:
        """Stop this stream (the tailer's ticker calls it when a send is stuck)."""
        if self._scope is not None:
            self._scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        complete = False
        async with anyio.create_task_group() as group:
            self._scope = group.cancel_scope

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            SSE_SUBSCRIBERS.inc()
            try:
                await self._stream(send)
                complete = True
            except (OSError, anyio.BrokenResourceError):
                pass  # the client is gone: nothing more to say to it
            finally:
                self.tailer.sending.discard(self)
                SSE_SUBSCRIBERS.dec()
            group.cancel_scope.cancel()
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, body: bytes) -> None:
        # No timer per send: the tailer's ticker aborts sends stuck past the timeout.
        self.sending_since = time.monotonic()
        self.tailer.sending.add(self)
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self.tailer.sending.discard(self)
        self._last_sent = self.sending_since
        self.sending_since = None

    async def _stream(self, send: Send) -> None:
        options = self.options
        await self._send(send, b"retry: %d\n\n" % options.retry_ms)
        if self.finished:
            return
        cursor = self.cursor
        live = False
        async with self.tailer.watch(self.task_id) as tail:
            while True:
                if self.tailer.closing:
                    await self._send(send, _reconnect(cursor))
                    return
                frames = tail.after(cursor, options.page)
                if frames is None:
                    if live:
                        self.tailer.note_lagged()
                        await self._send(send, _lagged(cursor, tail))
                        return
                    try:
                        cursor, done = await self._backfill(send, tail, cursor)
                    except (EventsUnavailable, ArchiveUnavailable, TaskNotFound) as exc:
                        await self._send(
                            send,
                            control_frame("axon.unavailable", exc.code, exc.message, **exc.details),
                        )
                        return
                    except AxonError:
                        # Redis is unreachable for now: keep the client alive and retry.
                        await self._idle(send, tail)
                        continue
                    if done:
                        return
                    continue
                live = True
                if frames:
                    await self._send(send, b"".join(frames))
                    cursor += len(frames)
                    if tail.terminal_seq is not None and cursor >= tail.terminal_seq:
                        return
                    continue
                await self._idle(send, tail)

    async def _backfill(self, send: Send, tail: TaskTail, cursor: int) -> tuple[int, bool]:
        """Send events from Redis after ``cursor`` until the shared buffer can take over
        (or Redis has no more); returns the new cursor and whether the stream ended.

        Each page is sent while the next one is read, so Redis and the socket work
        at the same time.
        """
        page = self.options.page
        start = cursor
        body, cursor, terminal = frames_of(
            start, await self.store.read_raw(self.task_id, after_seq=start, limit=page)
        )
        if cursor == start:
            await self._idle(send, tail)
            return cursor, False
        while True:
            buffered = tail.head is not None and cursor >= tail.base
            if terminal or cursor - start < page or buffered or self.tailer.closing:
                await self._send(send, body)
                return cursor, terminal
            ahead: dict[str, Any] = {}
            async with anyio.create_task_group() as group:
                group.start_soon(self._read_ahead, cursor, ahead)
                await self._send(send, body)
            if "error" in ahead:
                raise ahead["error"]
            start = cursor
            body, cursor, terminal = frames_of(start, ahead["raws"])
            if cursor == start:
                return cursor, False

    async def _read_ahead(self, after: int, into: dict[str, Any]) -> None:
        try:
            into["raws"] = await self.store.read_raw(
                self.task_id, after_seq=after, limit=self.options.page
            )
        except AxonError as exc:  # re-raised by the caller, not as an exception group
            into["error"] = exc

    async def _idle(self, send: Send, tail: TaskTail) -> None:
        """Send a keep-alive if nothing went out for half the interval, then wait."""
        if time.monotonic() - self._last_sent >= self.tailer.keepalive_s / 2:
            await self._send(send, KEEPALIVE)
        await tail.wait_changed()


def _reconnect(cursor: int) -> bytes:
    return control_frame(
        "axon.reconnect",
        "server_shutdown",
        "the server is shutting down; reconnect with Last-Event-ID to resume",
        last_seq=cursor,
    )


def _lagged(cursor: int, tail: TaskTail) -> bytes:
    return control_frame(
        "axon.lagged",
        "subscriber_lagged",
        "this client fell too far behind the live events; reconnect with Last-Event-ID "
        "to resume from where it stopped",
        last_seq=cursor,
        head_seq=tail.head,
    )
