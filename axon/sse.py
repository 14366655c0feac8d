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

from collections.abc import Iterable

import anyio
import msgspec
from starlette.types import Receive, Scope, Send

from axon.errors import AxonError, EventsUnavailable, TaskNotFound
from axon.events import TERMINAL_KINDS
from axon.store import Store, StoredEvent
from axon.tailer import Tailer, TaskTail

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]

KEEPALIVE = b": keep-alive\n\n"


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How one SSE response behaves (from ``Settings``)."""

    keepalive_s: float = 15.0
    retry_ms: int = 2000
    send_timeout_s: float = 30.0
    page: int = 1000


def event_frames(events: Iterable[StoredEvent]) -> tuple[bytes, int, bool]:
    """Frames for ``events``: their bytes, the last seq, and whether one was terminal."""
    parts: list[bytes] = []
    last = 0
    terminal = False
    for event in events:
        kind = event.kind
        parts.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, kind.encode(), event.raw))
        last = event.seq
        if kind in TERMINAL_KINDS:
            terminal = True
            break
    return b"".join(parts), last, terminal


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        complete = False
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            try:
                await self._stream(send)
                complete = True
            except (OSError, anyio.BrokenResourceError, TimeoutError):
                pass  # the client is gone or stuck: nothing more to say to it
            group.cancel_scope.cancel()
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, body: bytes) -> None:
        with anyio.fail_after(self.options.send_timeout_s):
            await send({"type": "http.response.body", "body": body, "more_body": True})

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
                batch = tail.after(cursor, options.page)
                if batch is None:
                    if live:
                        self.tailer.note_lagged()
                        await self._send(send, _lagged(cursor, tail))
                        return
                    try:
                        batch = await self.store.read(
                            self.task_id, after_seq=cursor, limit=options.page
                        )
                    except (EventsUnavailable, TaskNotFound) as exc:
                        await self._send(
                            send,
                            control_frame("axon.unavailable", exc.code, exc.message, **exc.details),
                        )
                        return
                    except AxonError:
                        # Redis is unreachable for now: wait, keep the client alive, retry.
                        await self._idle(send, tail)
                        continue
                else:
                    live = True
                if batch:
                    body, cursor, terminal = event_frames(batch)
                    await self._send(send, body)
                    if terminal:
                        return
                    continue
                await self._idle(send, tail)

    async def _idle(self, send: Send, tail: TaskTail) -> None:
        if not await tail.wait_changed(self.options.keepalive_s):
            await self._send(send, KEEPALIVE)


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
