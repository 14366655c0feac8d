"""Axon as MCP tools: start, watch, resume, cancel, list and prove tasks.

One ``MCPServer`` (the official SDK) with seven tools, written against
``TaskBackend`` so the same tools serve stdio (``axon mcp``) and Streamable
HTTP (``/mcp`` in the API). Every tool has an input schema, a structured
output schema and hints; every failure is a tool error whose text starts with
a stable code (``NOT_FOUND: ...``) and whose structured content is
``{"error": {"code", "message", "details"}}`` — never a stack trace.

Cursors are event seqs: ``stream_task(since_seq=N)`` returns the events after
N and ``next_seq``, the cursor for the next call. An agent that kept only its
last seq resumes with ``resume_task``; nothing is skipped or repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from axon._version import __version__
from axon.errors import ApiError, AxonError, RateLimited
from axon.events import decode_event, event_hash
from axon.mcp_backend import StartRequest, TaskBackend
from axon.records import TaskState
from axon.wire import Task

_log = logging.getLogger("axon.mcp")

MAX_WAIT_S = 60.0
"""Longest ``wait_s`` a ``stream_task`` call may ask for (agents call again for more)."""
MAX_EVENTS = 1000
"""Most events one ``stream_task`` call returns."""
MAX_PAGE_BYTES = 512 << 10
"""Event bytes one ``stream_task`` call returns at most (always at least one event)."""
PROGRESS_INTERVAL_S = 1.0
"""How often a waiting ``stream_task`` sends a progress notification (when asked to)."""

INSTRUCTIONS = """\
Axon runs long background tasks (shell commands, registered Python functions, \
mock tasks) and records every step as a hash-chained event. Start one with \
start_task, then read its events with stream_task(since_seq=<next_seq of the \
previous call>, wait_s=...) until finished is true. If you lose your session, \
resume_task(task_id, last_seq) continues exactly where you were. When a task \
has finished, get_task_receipt returns a signed proof of its outcome that \
anyone can verify offline."""

CODES: dict[str, str] = {
    "task_not_found": "NOT_FOUND",
    "event_not_found": "NOT_FOUND",
    "not_found": "NOT_FOUND",
    "invalid_cursor": "INVALID_CURSOR",
    "cursor_ahead": "INVALID_CURSOR",
    "events_unavailable": "EVENTS_UNAVAILABLE",
    "task_not_finished": "TASK_NOT_FINISHED",
    "permission_denied": "PERMISSION_DENIED",
    "unauthenticated": "UNAUTHENTICATED",
    "rate_limited": "RATE_LIMITED",
    "idempotency_conflict": "CONFLICT",
    "stale_head": "CONFLICT",
    "invalid_argument": "INVALID_ARGUMENT",
    "invalid_task_id": "INVALID_ARGUMENT",
    "invalid_task": "INVALID_ARGUMENT",
    "validation_error": "INVALID_ARGUMENT",
    "receipts_unavailable": "UNAVAILABLE",
    "store_unavailable": "UNAVAILABLE",
    "archive_unavailable": "UNAVAILABLE",
    "server_unreachable": "UNAVAILABLE",
    "durability_timeout": "UNAVAILABLE",
}
"""Stable MCP error codes for Axon's error codes; anything else is ``INTERNAL``."""


# -- outputs -------------------------------------------------------------------


class TaskStatus(BaseModel):
    """A task as an agent sees it."""

    task_id: str = Field(description="the task's id")
    state: str = Field(description="queued, running, succeeded, failed, canceled or timed_out")
    finished: bool = Field(description="true once the state is final")
    adapter: str
    lane: str
    name: str | None = None
    attempt: int = Field(description="attempts so far (a retried or reclaimed task has more)")
    max_attempts: int
    cancel_requested: bool
    created_ms: int = Field(description="Unix time in ms")
    started_ms: int | None = None
    finished_ms: int | None = None
    last_seq: int = Field(description="seq of the task's latest event")
    events: int = Field(description="events written")
    event_bytes: int = Field(description="bytes of events written")
    outcome: dict[str, Any] | None = Field(
        default=None,
        description="the final event's data (result, error, exit code, reason) once finished",
    )


class Started(BaseModel):
    """What ``start_task`` returns."""

    task_id: str
    state: str
    cursor: int = Field(description="pass as since_seq to stream_task to read every event")


class EventItem(BaseModel):
    """One event, parsed, with its place in the hash chain."""

    seq: int = Field(description="1, 2, 3, … in order, no gaps")
    kind: str = Field(description="queued, claimed, stdout, progress, succeeded, …")
    ts: int = Field(description="Unix time in ms")
    data: dict[str, Any]
    prev: str = Field(description="SHA-256 (hex) of the previous event's exact bytes")
    hash: str = Field(description="SHA-256 (hex) of this event's exact bytes")
    raw: str | None = Field(
        default=None, description="the event's exact bytes (only with include_raw)"
    )


class EventBatch(BaseModel):
    """What ``stream_task`` and ``resume_task`` return."""

    task_id: str
    events: list[EventItem]
    next_seq: int = Field(description="the cursor for the next call (seq of the last event here)")
    last_seq: int = Field(description="seq of the task's latest event when this was read")
    state: str
    finished: bool = Field(
        description="true when the task is final and every event was returned: stop reading"
    )


class TaskPage(BaseModel):
    """What ``list_tasks`` returns."""

    tasks: list[TaskStatus]
    next_cursor: str | None = Field(
        default=None, description="pass as cursor for the next page; null when there is none"
    )


class Receipt(BaseModel):
    """What ``get_task_receipt`` returns."""

    task_id: str
    seq: int | None = Field(default=None, description="the proven event (null: the outcome)")
    proof: str = Field(description="a C2SP tlog-proof@v1 file: the event and a signed checkpoint")
    verifier_key: str = Field(description="the note verifier key the proof is signed with")
    verifier_keys: list[str] = Field(description="every key currently trusted (rotation)")
    how_to_verify: str


# -- the server -----------------------------------------------------------------

BackendOf = Callable[[Context], Awaitable[TaskBackend]]
"""Finds the backend (and so the tenant and role) of the caller of a tool call."""

_TaskId = Annotated[str, Field(description="the task's id, as start_task returned it")]
_MaxEvents = Annotated[int, Field(description="at most this many events", ge=1, le=MAX_EVENTS)]
_WaitS = Annotated[
    float,
    Field(
        description="if there is nothing new yet, wait up to this long for the next "
        "event (long-poll); 0 returns at once",
        ge=0,
        le=MAX_WAIT_S,
    ),
]


def build_server(backend_of: BackendOf, *, limits: WaitLimits | None = None) -> MCPServer:
    """The MCP server with Axon's tools; ``backend_of`` resolves each call's caller."""
    waits = limits or WaitLimits()
    server: MCPServer = MCPServer(
        "axon",
        title="Axon",
        version=__version__,
        instructions=INSTRUCTIONS,
        website_url="https://github.com/axon-tasks/axon",
        middleware=[_coded_errors],
    )

    @server.tool(
        title="Start a background task",
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    )
    async def start_task(
        ctx: Context,
        adapter: Annotated[
            str, Field(description="how it runs: mock, shell, python or docker", max_length=64)
        ],
        args: Annotated[
            dict[str, Any],
            Field(
                description="the adapter's arguments, e.g. shell: {'argv': ['make', 'test']}; "
                "mock: {'count': 5, 'interval_ms': 100}; python: {'function': 'resize', ...}"
            ),
        ],
        lane: Annotated[
            str | None, Field(description="high, default or low (default: default)")
        ] = None,
        timeout_s: Annotated[
            float | None, Field(description="run time limit in seconds", gt=0, le=7 * 86_400)
        ] = None,
        name: Annotated[str | None, Field(description="a label for people", max_length=64)] = None,
        idempotency_key: Annotated[
            str | None,
            Field(
                description="retry-safe key: calling again with the same key and arguments "
                "returns the same task instead of starting another",
                min_length=1,
                max_length=255,
            ),
        ] = None,
    ) -> Annotated[CallToolResult, Started]:
        """Start a long-running task in the background and return its id at once.

        The task is queued and a worker runs it; every step it takes becomes an
        event. Read the events with stream_task(task_id, since_seq=cursor) and
        keep the returned next_seq as your position. Use idempotency_key when
        you might retry this call, so a retry never starts a second task.
        """

        async def run() -> BaseModel:
            backend = await backend_of(ctx)
            request = StartRequest(
                adapter=adapter,
                args=args,
                lane=lane,
                timeout_s=timeout_s,
                name=name,
                idempotency_key=idempotency_key,
            )
            task = await backend.start(request)
            return Started(task_id=task.id, state=task.state.value, cursor=0)

        return await _answer(run)

    @server.tool(
        title="Get a task's status",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    async def get_task_status(
        ctx: Context, task_id: _TaskId
    ) -> Annotated[CallToolResult, TaskStatus]:
        """A task's state, timestamps, attempt, latest event seq and counters; once it
        finished, its outcome (result, error or exit code). Cheap: call it any time."""

        async def run() -> BaseModel:
            backend = await backend_of(ctx)
            return await _status(backend, await backend.get(task_id))

        return await _answer(run)

    @server.tool(
        title="Read a task's events",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    async def stream_task(
        ctx: Context,
        task_id: _TaskId,
        since_seq: Annotated[
            int,
            Field(
                description="return events after this seq: 0 for all, else the next_seq "
                "of your previous call",
                ge=0,
            ),
        ] = 0,
        max_events: _MaxEvents = 100,
        wait_s: _WaitS = 0,
        include_raw: Annotated[
            bool, Field(description="also return each event's exact bytes (to verify hashes)")
        ] = False,
    ) -> Annotated[CallToolResult, EventBatch]:
        """Read a task's events after since_seq, in order, each exactly once.

        Returns the events, next_seq (pass it as since_seq next time) and
        finished (stop when true). With wait_s, a call that finds nothing new
        waits for the next event and returns as soon as it arrives.
        """

        async def run() -> BaseModel:
            backend = await backend_of(ctx)
            return await _read(
                ctx, backend, waits, task_id, since_seq, max_events, wait_s, include_raw
            )

        return await _answer(run)

    @server.tool(
        title="Resume reading a task",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    async def resume_task(
        ctx: Context,
        task_id: _TaskId,
        last_seq: Annotated[
            int,
            Field(description="the seq of the last event you received (0 if none)", ge=0),
        ],
        max_events: _MaxEvents = 100,
        wait_s: _WaitS = 0,
    ) -> Annotated[CallToolResult, EventBatch]:
        """Pick up a task where you left off after losing your session: the events
        after last_seq, exactly as stream_task(since_seq=last_seq) returns them."""

        async def run() -> BaseModel:
            backend = await backend_of(ctx)
            return await _read(ctx, backend, waits, task_id, last_seq, max_events, wait_s, False)

        return await _answer(run)

    @server.tool(
        title="Cancel a task",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True
        ),
    )
    async def cancel_task(
        ctx: Context,
        task_id: _TaskId,
        reason: Annotated[
            str | None,
            Field(description="why; recorded in the task's canceled event", max_length=500),
        ] = None,
    ) -> Annotated[CallToolResult, TaskStatus]:
        """Cancel a task. A queued task is canceled at once; a running one is stopped
        (its process killed) and its last event is 'canceled' — state stays
        'running' with cancel_requested until then. A finished task is unchanged."""

        async def run() -> BaseModel:
            backend = await backend_of(ctx)
            return await _status(backend, await backend.cancel(task_id, reason=reason))

        return await _answer(run)

    @server.tool(
        title="List tasks",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    async def list_tasks(
        ctx: Context,
        state: Annotated[
            Literal["queued", "running", "succeeded", "failed", "canceled", "timed_out"] | None,
            Field(description="only tasks in this state"),
        ] = None,
        limit: Annotated[int, Field(description="at most this many", ge=1, le=200)] = 20,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
    ) -> Annotated[CallToolResult, TaskPage]:
        """Your tasks, newest first, a page at a time (follow next_cursor)."""

        async def run() -> BaseModel:
            backend = await backend_of(ctx)
            page = await backend.list(TaskState(state) if state else None, limit, cursor)
            return TaskPage(
                tasks=[_summary(task) for task in page.items], next_cursor=page.next_cursor
            )

        return await _answer(run)

    @server.tool(
        title="Get a task's receipt",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    async def get_task_receipt(
        ctx: Context,
        task_id: _TaskId,
        seq: Annotated[
            int | None,
            Field(description="prove this event instead of the task's outcome", ge=1),
        ] = None,
    ) -> Annotated[CallToolResult, Receipt]:
        """A signed, offline-verifiable proof (C2SP tlog-proof) that the task's log
        holds its outcome event — or event seq — under a signed checkpoint.
        Without seq the task must have finished (else TASK_NOT_FINISHED)."""

        async def run() -> BaseModel:
            backend = await backend_of(ctx)
            proof = await backend.proof(task_id, seq)
            keys = await backend.verifier_keys()
            how = (
                "Save proof to receipt.tlog-proof and run: axon verify receipt.tlog-proof "
                f"--key '{keys[0]}' (add --events EXPORT.ndjson to check the whole log); "
                "no server or network is needed."
            )
            return Receipt(
                task_id=task_id,
                seq=seq,
                proof=proof,
                verifier_key=keys[0],
                verifier_keys=keys,
                how_to_verify=how,
            )

        return await _answer(run)

    return server


# -- tool bodies ------------------------------------------------------------------


class WaitLimits:
    """Bounds long-polls per tenant in this process: each one holds a subscription."""

    def __init__(self, per_tenant: int = 64) -> None:
        self.per_tenant = per_tenant
        self._waiting: dict[str, int] = {}
        self.draining: anyio.Event | None = None
        """Set when the server drains: every wait returns at once (the agent calls again,
        on another replica)."""

    def enter(self, tenant: str) -> None:
        """Count one more waiting call of ``tenant``, or raise ``RateLimited``."""
        if self._waiting.get(tenant, 0) >= self.per_tenant:
            raise RateLimited(
                f"{self.per_tenant} stream_task calls of this tenant are already waiting; "
                "retry shortly or call with wait_s=0",
                limit=self.per_tenant,
            )
        self._waiting[tenant] = self._waiting.get(tenant, 0) + 1

    def leave(self, tenant: str) -> None:
        """One waiting call of ``tenant`` returned."""
        left = self._waiting.get(tenant, 1) - 1
        if left:
            self._waiting[tenant] = left
        else:
            self._waiting.pop(tenant, None)


async def _read(
    ctx: Context,
    backend: TaskBackend,
    waits: WaitLimits,
    task_id: str,
    since_seq: int,
    max_events: int,
    wait_s: float,
    include_raw: bool,
) -> EventBatch:
    page = await backend.read(task_id, since_seq, max_events)
    task: Task | None = None
    if not page.raws and wait_s > 0:
        task = await backend.get(task_id)
        if not task.state.terminal:
            tenant = backend.tenant
            waits.enter(tenant)
            try:
                await _wait(ctx, backend, task_id, since_seq, wait_s, waits.draining)
            finally:
                waits.leave(tenant)
            page = await backend.read(task_id, since_seq, max_events)
            task = None
    if task is None:
        task = await backend.get(task_id)
    items: list[EventItem] = []
    size = 0
    for raw in page.raws:
        if items and size + len(raw) > MAX_PAGE_BYTES:
            break
        size += len(raw)
        event = decode_event(raw)
        items.append(
            EventItem(
                seq=event.seq,
                kind=event.kind,
                ts=event.ts,
                data=event.data,
                prev=event.prev,
                hash=event_hash(raw),
                raw=raw.decode() if include_raw else None,
            )
        )
    next_seq = items[-1].seq if items else since_seq
    last_seq = max(task.last_seq, page.head_seq, next_seq)
    return EventBatch(
        task_id=task.id,
        events=items,
        next_seq=next_seq,
        last_seq=last_seq,
        state=task.state.value,
        finished=task.state.terminal and next_seq >= task.last_seq,
    )


async def _wait(
    ctx: Context,
    backend: TaskBackend,
    task_id: str,
    since_seq: int,
    wait_s: float,
    draining: anyio.Event | None,
) -> None:
    """Wait for an event after ``since_seq`` (or a drain); tick progress notifications
    if asked for."""
    meta = ctx.request_context.meta
    wants_progress = meta is not None and meta.get("progress_token") is not None
    async with anyio.create_task_group() as group:
        if wants_progress:

            async def tick() -> None:
                waited = 0.0
                while True:
                    await anyio.sleep(PROGRESS_INTERVAL_S)
                    waited = min(wait_s, waited + PROGRESS_INTERVAL_S)
                    await ctx.report_progress(
                        waited, wait_s, f"waiting for events after seq {since_seq}"
                    )

            group.start_soon(tick)
        if draining is not None:

            async def drained(event: anyio.Event) -> None:
                await event.wait()
                group.cancel_scope.cancel()

            group.start_soon(drained, draining)
        await backend.wait(task_id, since_seq, wait_s)
        group.cancel_scope.cancel()


async def _status(backend: TaskBackend, task: Task) -> TaskStatus:
    outcome: dict[str, Any] | None = None
    if task.state.terminal and task.last_seq > 0:
        page = await backend.read(task.id, task.last_seq - 1, 1)
        if page.raws:
            outcome = decode_event(page.raws[0]).data
    return _summary(task, outcome)


def _summary(task: Task, outcome: dict[str, Any] | None = None) -> TaskStatus:
    return TaskStatus(
        task_id=task.id,
        state=task.state.value,
        finished=task.state.terminal,
        adapter=task.adapter,
        lane=task.lane,
        name=task.name,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        cancel_requested=task.cancel_requested,
        created_ms=task.created_ms,
        started_ms=task.started_ms,
        finished_ms=task.finished_ms,
        last_seq=task.last_seq,
        events=task.events,
        event_bytes=task.event_bytes,
        outcome=outcome,
    )


async def _answer(run: Callable[[], Awaitable[BaseModel]]) -> CallToolResult:
    """Run a tool body: its model as structured content, or an Axon error as a tool error."""
    try:
        result = await run()
    except AxonError as exc:
        # Through the HTTP API, a code this client has no class for arrives as ApiError.
        code = exc.error_code if isinstance(exc, ApiError) else exc.code
        return error_result(CODES.get(code, "INTERNAL"), exc.message, exc.details)
    except Exception:
        _log.exception("an MCP tool failed")
        return error_result("INTERNAL", "the server failed; this is a bug, please report it", {})
    return CallToolResult(
        content=[TextContent(type="text", text=result.model_dump_json(exclude_none=True))],
        structured_content=result.model_dump(mode="json"),
    )


async def _coded_errors(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Give the SDK's own tool errors (arguments that fail the input schema) a code too."""
    result = await call_next(ctx)
    if ctx.method != "tools/call":
        return result
    wire = (
        result.model_dump(by_alias=True, mode="json", exclude_none=True)
        if isinstance(result, CallToolResult)
        else result
    )
    if not isinstance(wire, dict) or not wire.get("isError") or "structuredContent" in wire:
        return result
    text = " ".join(
        str(block.get("text", "")) for block in wire.get("content") or [] if isinstance(block, dict)
    )
    lines = [line for line in text.splitlines() if "errors.pydantic.dev" not in line]
    return error_result("INVALID_ARGUMENT", "\n".join(lines).strip(), {})


def error_result(code: str, message: str, details: dict[str, Any]) -> CallToolResult:
    """A tool error an agent can act on: ``CODE: message`` plus the same as structure."""
    safe = {k: v for k, v in details.items() if isinstance(v, str | int | float | bool)}
    return CallToolResult(
        content=[TextContent(type="text", text=f"{code}: {message}")],
        structured_content={"error": {"code": code, "message": message, "details": safe}},
        is_error=True,
    )
