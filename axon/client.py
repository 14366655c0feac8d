"""``axon.Client``: the Python client of Axon's HTTP API; ``SyncClient``, its blocking twin.

Everything ``docs/api.md`` describes, as typed calls: tasks come back as
``axon.wire.Task``, events as verified ``TaskEvent``s, errors as the
``axon.errors`` class of the API's error code (``TaskNotFound``,
``Unauthenticated``, …; ``ApiError`` for codes without one). No httpx
exception leaves the client: a server that cannot be reached is
``ServerUnreachable``.

Retries are automatic where they are safe: reads, ``cancel`` (idempotent on
the server) and ``start``, which always sends an ``Idempotency-Key`` (one is
generated when none is given), are retried with jittered exponential backoff
on connection errors and transient answers (503 ``store_unavailable``,
proxies' 502/504). Event streams reconnect on their own (``client_events``).

The API key is sent in the ``Authorization`` header and nowhere else; it never
appears in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import builtins
import functools
import os
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Mapping
from contextlib import AbstractContextManager, aclosing, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import httpx
import msgspec

from axon._version import __version__
from axon.chain import GENESIS, ChainHead, ChainVerifier
from axon.client_events import (
    Backoff,
    EventChain,
    ExportPage,
    TaskEvent,
    check_page,
    error_for,
    follow_stream,
    read_pages,
    transient,
)
from axon.errors import (
    ApiError,
    AxonError,
    ConfigError,
    CursorAhead,
    InvalidArgument,
    InvalidEvent,
    InvalidTaskId,
    ServerUnreachable,
)
from axon.events import GENESIS_HASH, decode_event
from axon.records import TaskState
from axon.wire import ErrorBody, Task, TaskList

__all__ = ["Client", "SyncClient", "TaskEvent"]

DEFAULT_URL = "http://127.0.0.1:8000"
"""Where ``axon serve`` and ``axon dev`` listen by default (``from_env`` without ``AXON_URL``)."""

EXPORT_PAGE_EVENTS = 10_000
"""Events asked for per NDJSON export request (the server's maximum)."""

T = TypeVar("T")

_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY = re.compile(r"[\x21-\x7e]{1,1024}")
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_HASH = re.compile(r"[0-9a-f]{64}")
_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(Task)
_task_list_decoder = msgspec.json.Decoder(TaskList)
_error_decoder = msgspec.json.Decoder(ErrorBody)


class Client:
    """An async client of one Axon API server, for one API key.

    Use it as ``async with Client(url, key) as client: ...`` (or call
    ``aclose()``); it keeps a pool of HTTP/1.1 connections.

    Args:
        url: the API's base URL, e.g. ``http://127.0.0.1:8000``.
        key: an API key (``axon keys create``); sent only as ``Authorization: Bearer``.
        timeout_s: how long a request may wait for the server (read, write, pool).
        connect_timeout_s: how long opening a connection may take.
        retries: extra attempts of a request that failed in a way worth retrying.
        backoff_s: the first retry delay's ceiling; it doubles per failure (full jitter).
        max_backoff_s: the largest retry or reconnect delay ceiling.
        stream_idle_timeout_s: an event stream that sends no byte for this long
            (not even a keep-alive, which the server sends every 15 s by default)
            is taken as dead and reconnected.
        reconnect_timeout_s: ``events()`` gives up (``ServerUnreachable``) when it
            cannot reach the server for this long.

    Raises:
        ConfigError: the URL, the key or an option is malformed.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        stream_idle_timeout_s: float = 45.0,
        reconnect_timeout_s: float = 60.0,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"the Axon API URL {url!r} is malformed: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"the Axon API URL must be http(s)://host[:port], got {url!r}")
        if not isinstance(key, str) or _KEY.fullmatch(key) is None:
            raise ConfigError("the API key is malformed: expected printable ASCII, no spaces")
        timeouts = (timeout_s, connect_timeout_s, stream_idle_timeout_s, reconnect_timeout_s)
        if min(timeouts) <= 0 or backoff_s <= 0 or max_backoff_s < backoff_s or retries < 0:
            raise ConfigError(
                "client timeouts and backoff must be > 0 (max_backoff_s >= backoff_s), retries >= 0"
            )
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = Backoff(first_s=backoff_s, max_s=max_backoff_s)
        self.reconnect_timeout_s = reconnect_timeout_s
        self._stream_timeout = httpx.Timeout(
            timeout_s, connect=connect_timeout_s, read=stream_idle_timeout_s
        )
        self._key = key
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"authorization": f"Bearer {key}", "user-agent": f"axon-client/{__version__}"},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            follow_redirects=False,  # a redirect must not carry the key anywhere else
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Client:
        """A client for ``AXON_URL`` (default ``http://127.0.0.1:8000``) and ``AXON_API_KEY``.

        For command-line tools and scripts; ``options`` are ``Client``'s keywords.

        Raises:
            ConfigError: ``AXON_API_KEY`` is unset, or a value is malformed.
        """
        return cls(*_from_env(environ), **options)

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- tasks ---------------------------------------------------------------------

    async def start(
        self,
        adapter: str,
        args: dict[str, Any] | None = None,
        *,
        lane: str | None = None,
        timeout_s: float | None = None,
        name: str | None = None,
        max_attempts: int | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Create and queue a task (``POST /v1/tasks``); fields left out get server defaults.

        The request always carries an ``Idempotency-Key`` (``idempotency_key``, or
        a random one), so retrying it after a lost answer never creates a second
        task; the same key with the same arguments later returns the same task.

        Raises:
            InvalidTaskSpec, ApiError: the server refused the task (422).
            PermissionDenied: the key's role is below ``writer``.
            IdempotencyConflict: the key was used with other arguments.
            ServerUnreachable: no answer, even after retries; when the key was
                generated, ``details["idempotency_key"]`` has it, to retry with.
        """
        fields: dict[str, Any] = {
            "adapter": adapter,
            "args": args,
            "lane": lane,
            "timeout_s": timeout_s,
            "name": name,
            "max_attempts": max_attempts,
            "metadata": metadata,
        }
        try:
            body = _encoder.encode({k: v for k, v in fields.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"the task's args or metadata are not JSON: {exc}") from None
        key = idempotency_key if idempotency_key is not None else secrets.token_urlsafe(24)
        if _IDEMPOTENCY_KEY.fullmatch(key) is None:
            raise InvalidArgument("an Idempotency-Key is 1-255 printable ASCII characters")
        try:
            response = await self._request(
                "POST",
                "/v1/tasks",
                content=body,
                headers={"content-type": "application/json", "idempotency-key": key},
            )
        except AxonError as exc:
            # The task may exist; the same call with this key finds out without a duplicate.
            if idempotency_key is None and transient(exc):
                exc.details.setdefault("idempotency_key", key)
            raise
        return _decode(_task_decoder, response)

    async def get(self, task_id: str) -> Task:
        """One task (``GET /v1/tasks/{id}``).

        Raises:
            TaskNotFound: no such task, or another tenant's.
        """
        return _decode(_task_decoder, await self._request("GET", _task_path(task_id)))

    async def list(
        self,
        state: TaskState | str | None = None,
        adapter: str | None = None,
        lane: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskList:
        """One page of the tenant's tasks, newest first (``GET /v1/tasks``).

        Continue with ``cursor=page.next_cursor`` until it is None; a page may be
        short, even empty, before that (``iter_tasks`` does the paging).

        Raises:
            InvalidArgument: a bad state or limit. InvalidCursor: a cursor no page returned.
        """
        given = {"state": state, "adapter": adapter, "lane": lane, "limit": limit, "cursor": cursor}
        query = {k: str(v) for k, v in given.items() if v is not None}
        return _decode(_task_list_decoder, await self._request("GET", "/v1/tasks", params=query))

    async def iter_tasks(
        self,
        state: TaskState | str | None = None,
        adapter: str | None = None,
        lane: str | None = None,
        page_size: int | None = None,
    ) -> AsyncGenerator[Task, None]:
        """Every task of the tenant that matches, newest first, across all pages."""
        cursor: str | None = None
        while True:
            page = await self.list(state, adapter, lane, page_size, cursor)
            for task in page.items:
                yield task
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        """Ask for a task's cancellation (``POST .../cancel``); the task as it is after.

        A queued task comes back ``canceled``; a running one ``running`` with
        ``cancel_requested`` (its ``canceled`` event follows); a finished one
        unchanged. ``reason`` (at most 500 characters) goes into the
        ``canceled`` event.
        """
        options: dict[str, Any] = {}
        if reason is not None:
            options["content"] = _encoder.encode({"reason": reason})
            options["headers"] = {"content-type": "application/json"}
        path = f"{_task_path(task_id)}/cancel"
        return _decode(_task_decoder, await self._request("POST", path, **options))

    # -- events --------------------------------------------------------------------

    async def events(
        self,
        task_id: str,
        since_seq: int = 0,
        *,
        follow: bool = True,
        prev_hash: str | None = None,
    ) -> AsyncGenerator[TaskEvent, None]:
        """The task's events after ``since_seq``, each verified and delivered once, in order.

        With ``follow`` (the default) this is a live Server-Sent Events stream: it
        backfills, then waits for new events, reconnecting on its own (dropped
        connections, server restarts, ``axon.reconnect``, ``axon.lagged``), and
        ends after the terminal event. Without, it returns the events that exist
        now (NDJSON export pages) and ends.

        The hash chain is verified from event ``since_seq``: from the beginning for
        0; else from ``prev_hash`` (the hash of event ``since_seq``, if you kept
        it) or, by default, from that event as the server serves it now.

        Break out early inside ``contextlib.aclosing(client.events(...))`` so the
        connection is released at once.

        Raises:
            ChainBroken: an event does not continue the chain (tampered, missing,
                duplicated, reordered).
            TaskNotFound, CursorAhead: no such task / ``since_seq`` beyond its last event.
            EventsUnavailable: events after the cursor are gone (trimmed by hand).
            ServerUnreachable: the server stayed unreachable.
        """
        chain = EventChain(task_id, await self._anchor(task_id, since_seq, prev_hash))
        if follow:
            source = follow_stream(
                task_id,
                chain,
                open_stream=self._open_stream,
                get_task=self.get,
                backoff=self.backoff,
                reconnect_timeout_s=self.reconnect_timeout_s,
            )
        else:
            source = read_pages(task_id, chain, export_page=self._export_page)
        async with aclosing(source) as events:
            async for event in events:
                yield event

    async def read(self, task_id: str, since_seq: int = 0, *, limit: int = 1000) -> ExportPage:
        """One page of events after ``since_seq`` as exact bytes, not verified (NDJSON export).

        For callers that keep their own cursor and check the chain themselves (the
        MCP server does); ``events`` is the verified iterator.
        """
        if since_seq < 0 or not 1 <= limit <= 10_000:
            raise InvalidArgument("since_seq must be >= 0 and limit from 1 to 10000")
        return await self._export_page(task_id, since_seq, limit)

    async def export(self, task_id: str, path: str | os.PathLike[str]) -> int:
        """Write the task's NDJSON export to ``path``; return the number of events.

        Every page up to the head the server reports (``X-Axon-Last-Seq`` /
        ``X-Axon-Head-Seq``), written as served: each event's exact bytes and a
        newline. The chain is verified on the way, and against the task's
        ``last_hash`` when the export reaches it. The file is written next to
        ``path`` and renamed into place once complete.

        Raises:
            ChainBroken: the events do not form the task's chain.
        """
        chain = EventChain(task_id, GENESIS)
        target = anyio.Path(path)
        partial = target.with_name(f"{target.name}.partial")
        try:
            async with await anyio.open_file(partial, "wb") as out:
                while True:
                    page = await self._export_page(task_id, chain.head.seq, EXPORT_PAGE_EVENTS)
                    for raw in page.lines:
                        chain.feed(raw)
                    complete = check_page(task_id, page, chain)
                    await out.write(page.body)
                    if complete:
                        break
            task = await self.get(task_id)
            if task.last_seq == chain.head.seq:
                chain.check_head(ChainHead(seq=task.last_seq, hash=task.last_hash))
            await partial.replace(target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await partial.unlink(missing_ok=True)
            raise
        return chain.count

    async def _anchor(self, task_id: str, since_seq: int, prev_hash: str | None) -> ChainHead:
        """Where verification starts: event ``since_seq`` (seq and hash)."""
        _task_path(task_id)
        if since_seq < 0:
            raise InvalidArgument(f"since_seq must be >= 0, got {since_seq}")
        if prev_hash is not None and _HASH.fullmatch(prev_hash) is None:
            raise InvalidArgument("prev_hash must be 64 lowercase hex digits (a SHA-256)")
        if since_seq == 0:
            if prev_hash not in (None, GENESIS_HASH):
                raise InvalidArgument("prev_hash of seq 0 can only be 64 zeros")
            return GENESIS
        if prev_hash is not None:
            return ChainHead(seq=since_seq, hash=prev_hash)
        page = await self._export_page(task_id, since_seq - 1, 1)
        if not page.lines:
            raise CursorAhead(
                f"cursor {since_seq} is beyond the task's last event (seq {page.head_seq})",
                cursor=since_seq,
                last_seq=page.head_seq,
            )
        raw = page.lines[0]
        try:
            claimed = decode_event(raw).prev
        except InvalidEvent:
            claimed = GENESIS_HASH  # the verifier below says what is wrong with it
        # Trust that event's own prev, then check it is event ``since_seq`` of this task.
        verifier = ChainVerifier(task=task_id, start=ChainHead(seq=since_seq - 1, hash=claimed))
        verifier.feed(raw)
        return verifier.head

    # -- receipts ------------------------------------------------------------------

    async def receipt(self, task_id: str) -> str:
        """The finished task's receipt: a ``tlog-proof@v1`` of its terminal event.

        Raises:
            TaskNotFinished: the task is still queued or running.
            ReceiptsUnavailable: the server has no signing key.
        """
        return (await self._request("GET", f"{_task_path(task_id)}/receipt")).text

    async def proof(self, task_id: str, seq: int) -> str:
        """A ``tlog-proof@v1`` that event ``seq`` is in the task's signed log.

        Raises:
            EventNotFound: ``seq`` is beyond the task's last event.
        """
        if seq < 1:
            raise InvalidArgument(f"seq must be >= 1, got {seq}")
        return (await self._request("GET", f"{_task_path(task_id)}/events/{seq}/proof")).text

    async def checkpoint(self, task_id: str) -> str:
        """The latest signed checkpoint of the task's log (a C2SP signed note)."""
        return (await self._request("GET", f"{_task_path(task_id)}/checkpoint")).text

    async def receipt_key(self) -> builtins.list[str]:
        """The note verifier keys receipts verify with: the current one first."""
        text = (await self._request("GET", "/v1/receipt-key")).text
        return [line for line in text.splitlines() if line.strip()]

    # -- HTTP ----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request (safe to repeat: every caller's is) and return a 2xx response,
        retrying transient failures; otherwise raise the typed error."""
        failures = 0
        while True:
            error: AxonError
            try:
                response = await self._http.request(
                    method, path, params=params, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                error = self._unreachable(exc)
            except httpx.HTTPError as exc:  # not a transport failure: an unreadable answer
                raise _invalid(
                    self._redact(f"{method} {path}: {type(exc).__name__}: {exc}")
                ) from None
            else:
                if response.is_success:
                    return response
                error = _error_of(response)
                if not transient(error):
                    raise error
            if failures >= self.retries:
                raise error
            failures += 1
            await anyio.sleep(self.backoff.delay(failures))

    @asynccontextmanager
    async def _open_stream(self, task_id: str, after_seq: int) -> AsyncIterator[httpx.Response]:
        """One SSE response of the task's events after ``after_seq`` (one attempt: the
        caller reconnects); errors other than the answer's are httpx's."""
        headers = {
            "accept": "text/event-stream",
            "last-event-id": str(after_seq),
            "cache-control": "no-store",
        }
        path = f"{_task_path(task_id)}/events"
        async with self._http.stream(
            "GET", path, headers=headers, timeout=self._stream_timeout
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise _error_of(response)
            media = response.headers.get("content-type", "").partition(";")[0].strip()
            if media != "text/event-stream":
                raise _invalid(f"GET {path} answered {media!r}, not text/event-stream")
            yield response

    async def _export_page(self, task_id: str, since_seq: int, limit: int) -> ExportPage:
        """One NDJSON export response: events after ``since_seq``, at most ``limit``."""
        response = await self._request(
            "GET",
            f"{_task_path(task_id)}/events",
            params={"since_seq": str(since_seq), "limit": str(limit)},
            headers={"accept": "application/x-ndjson"},
        )
        try:
            last = int(response.headers["x-axon-last-seq"])
            head = int(response.headers["x-axon-head-seq"])
        except (KeyError, ValueError):
            raise _invalid("an NDJSON export answered without X-Axon-Last-Seq/Head-Seq") from None
        body = response.content
        if body and not body.endswith(b"\n"):
            raise _invalid("an NDJSON export body does not end with a newline")
        return ExportPage(body=body, last_seq=last, head_seq=head)

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ServerUnreachable(
            self._redact(f"cannot reach the Axon API at {self.url}: {reason}"), url=self.url
        )

    def _redact(self, text: str) -> str:
        """Never let the key through, whatever a library put in a message."""
        return text.replace(self._key, "<api key>")


class SyncClient:
    """A blocking ``Client``, for code without an event loop.

    It runs a ``Client`` on an event loop in a thread of its own (an anyio
    blocking portal); every method blocks until the call is done. Close it
    (``with SyncClient(...) as client:``, or ``close()``) to stop that thread.
    Do not call it from inside an async function: use ``Client`` there.

    Args:
        url, key, options: as for ``Client``.
    """

    def __init__(self, url: str, key: str, **options: Any) -> None:
        self._client = Client(url, key, **options)
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] = (
            anyio.from_thread.start_blocking_portal()
        )
        self._portal = self._portal_cm.__enter__()
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> SyncClient:
        """As ``Client.from_env``: ``AXON_URL`` and ``AXON_API_KEY``."""
        return cls(*_from_env(environ), **options)

    @property
    def url(self) -> str:
        """The API's base URL."""
        return self._client.url

    def __repr__(self) -> str:
        return f"SyncClient(url={self.url!r})"

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the event loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("this SyncClient is closed")
        return self._portal.call(function, *args)

    def _iterate(self, source: AsyncGenerator[T, None]) -> Generator[T, None, None]:
        """A blocking iterator over an async one, closing it when left early."""
        try:
            while True:
                item = self._call(_next_or_stop, source)
                if isinstance(item, _Exhausted):
                    return
                yield item
        finally:
            if not self._closed:
                self._portal.call(source.aclose)

    def start(
        self,
        adapter: str,
        args: dict[str, Any] | None = None,
        *,
        lane: str | None = None,
        timeout_s: float | None = None,
        name: str | None = None,
        max_attempts: int | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """``Client.start``."""
        return self._call(
            functools.partial(
                self._client.start,
                adapter,
                args,
                lane=lane,
                timeout_s=timeout_s,
                name=name,
                max_attempts=max_attempts,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    def get(self, task_id: str) -> Task:
        """``Client.get``."""
        return self._call(self._client.get, task_id)

    def list(
        self,
        state: TaskState | str | None = None,
        adapter: str | None = None,
        lane: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskList:
        """``Client.list``."""
        return self._call(self._client.list, state, adapter, lane, limit, cursor)

    def iter_tasks(
        self,
        state: TaskState | str | None = None,
        adapter: str | None = None,
        lane: str | None = None,
        page_size: int | None = None,
    ) -> Generator[Task, None, None]:
        """``Client.iter_tasks``."""
        return self._iterate(self._client.iter_tasks(state, adapter, lane, page_size))

    def cancel(self, task_id: str) -> Task:
        """``Client.cancel``."""
        return self._call(self._client.cancel, task_id)

    def events(
        self,
        task_id: str,
        since_seq: int = 0,
        *,
        follow: bool = True,
        prev_hash: str | None = None,
    ) -> Generator[TaskEvent, None, None]:
        """``Client.events``, as a blocking iterator (close it to leave early)."""
        return self._iterate(
            self._client.events(task_id, since_seq, follow=follow, prev_hash=prev_hash)
        )

    def export(self, task_id: str, path: str | os.PathLike[str]) -> int:
        """``Client.export``."""
        return self._call(self._client.export, task_id, path)

    def receipt(self, task_id: str) -> str:
        """``Client.receipt``."""
        return self._call(self._client.receipt, task_id)

    def proof(self, task_id: str, seq: int) -> str:
        """``Client.proof``."""
        return self._call(self._client.proof, task_id, seq)

    def checkpoint(self, task_id: str) -> str:
        """``Client.checkpoint``."""
        return self._call(self._client.checkpoint, task_id)

    def receipt_key(self) -> builtins.list[str]:
        """``Client.receipt_key``."""
        return self._call(self._client.receipt_key)


class _Exhausted:
    """What ``_next_or_stop`` returns at the end: StopAsyncIteration cannot cross the portal."""


_EXHAUSTED = _Exhausted()


async def _next_or_stop(source: AsyncIterator[T]) -> T | _Exhausted:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return _EXHAUSTED


def _from_env(environ: Mapping[str, str] | None) -> tuple[str, str]:
    """``AXON_URL`` (default ``DEFAULT_URL``) and ``AXON_API_KEY``."""
    env = os.environ if environ is None else environ
    key = env.get("AXON_API_KEY", "")
    if not key:
        raise ConfigError("set AXON_API_KEY to an Axon API key (axon keys create)")
    return env.get("AXON_URL") or DEFAULT_URL, key


def _task_path(task_id: str) -> str:
    if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
        raise InvalidTaskId(
            f"a task id is 1-64 characters of A-Z a-z 0-9 _ -, got {str(task_id)[:80]!r}",
            task_id=str(task_id)[:80],
        )
    return f"/v1/tasks/{task_id}"


def _decode(decoder: msgspec.json.Decoder[T], response: httpx.Response) -> T:
    try:
        return decoder.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _invalid(
            f"{response.request.method} {response.request.url.path} answered a body this "
            f"client cannot read: {exc}",
            status=response.status_code,
        ) from None


def _error_of(response: httpx.Response) -> AxonError:
    """The typed error of a non-2xx answer."""
    try:
        body = _error_decoder.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ApiError(
            f"{response.request.method} {response.request.url.path} answered HTTP "
            f"{response.status_code} without an Axon error body",
            status=response.status_code,
            error_code="http_error",
        )
    return error_for(response.status_code, body.error)


def _invalid(message: str, *, status: int = 200) -> ApiError:
    return ApiError(message, status=status, error_code="invalid_response")
