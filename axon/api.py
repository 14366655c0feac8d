"""The HTTP API: tasks under ``/v1``, their event streams, health and the OpenAPI document.

Endpoints call services only (``TaskCatalog``, ``Store``, ``Tailer``); domain
errors become HTTP errors here and nowhere else, always in the contract-5
body. See ``docs/api.md`` for the reference.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from axon.access import AccessMiddleware
from axon.apikeys import KeyStore, Principal, Role
from axon.connection import open_store
from axon.errors import (
    AxonError,
    CursorAhead,
    InvalidArgument,
    InvalidCursor,
    PermissionDenied,
)
from axon.logs import REQUEST_ID, bind_task
from axon.mcp_http import McpEndpoint
from axon.mcp_tools import WaitLimits
from axon.metrics import metrics_route, set_component
from axon.middleware import PRINCIPAL, STATUS, AuthMiddleware, BodyLimitMiddleware, error_body
from axon.notes import NoteSigner
from axon.openapi import openapi_document
from axon.records import TaskSpec, TaskState
from axon.services import Services
from axon.settings import Settings
from axon.sse import EventStream
from axon.store import Store
from axon.wire import (
    CreateTask,
    Health,
    Task,
    TaskList,
    cancel_task_decoder,
    create_task_decoder,
    encoder,
)

NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
EXPORT_MAX_EVENTS = 10_000
EXPORT_MAX_BYTES = 8 << 20
"""An NDJSON export response holds at most this many events / bytes (at least one event)."""

_log = logging.getLogger("axon.api")
_SEQ = re.compile(r"[0-9]{1,18}")
_PATH = re.compile(r"- at `(\$[^`]*)`")
_Body = TypeVar("_Body")


class _LateKeys:
    """The key store the auth middleware asks, resolved once the lifespan opened Redis."""

    def __init__(self) -> None:
        self.target: KeyStore | None = None

    async def authenticate(self, presented: str) -> Principal:
        if self.target is None:
            raise RuntimeError("the API is not started")
        return await self.target.authenticate(presented)


def create_app(
    settings: Settings, *, store: Store | None = None, signer: NoteSigner | None = None
) -> Starlette:
    """The ASGI application.

    With ``store`` the app uses it (and leaves closing it to the caller);
    otherwise the lifespan opens one from ``settings``. Either way the
    lifespan runs the shared live tailer and loads the Lua scripts. Without
    ``signer`` (the receipt key) everything but receipts is served; receipt
    routes answer 503 ``receipts_unavailable``.
    """
    late_keys = _LateKeys()
    mcp = McpEndpoint(WaitLimits(settings.mcp_max_waiting))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        set_component("api")  # Redis errors of the tailer and the MCP sessions
        async with _opened(settings, store) as opened:
            await opened.load_scripts()
            services = Services(settings, opened, signer)
            app.state.services = services
            late_keys.target = services.keys
            async with anyio.create_task_group() as group, mcp.run(services):
                await group.start(services.tailer.run)
                yield
                services.tailer.close()
                group.cancel_scope.cancel()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/tasks", tasks, methods=["GET", "POST"]),
        Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
        Route("/v1/tasks/{task_id}/events", task_events, methods=["GET"]),
        Route("/v1/tasks/{task_id}/events/{seq}/proof", event_proof, methods=["GET"]),
        Route("/v1/tasks/{task_id}/checkpoint", task_checkpoint, methods=["GET"]),
        Route("/v1/tasks/{task_id}/receipt", task_receipt, methods=["GET"]),
        Route("/v1/tasks/{task_id}/consistency", task_consistency, methods=["GET"]),
        Route("/v1/receipt-key", receipt_key, methods=["GET"]),
        Route("/mcp", mcp, methods=["GET", "POST", "DELETE"]),
    ]
    if settings.metrics_enabled:  # for a private network: see docs/observability.md
        routes.append(metrics_route(settings, lambda request: _services(request).store))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(AccessMiddleware),  # request id, access log, metrics: sees everything
            *_cors(settings),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
            Middleware(AuthMiddleware, keys=late_keys, prefixes=("/v1/", "/mcp")),
        ],
        exception_handlers={
            AxonError: _axon_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    # "/v1/tasks/" is a 404 in our error body, not a redirect that would resend the key.
    app.router.redirect_slashes = False
    app.state.mcp = mcp  # ApiServer.drain releases its long-polls and streams
    return app


def _cors(settings: Settings) -> list[Middleware]:
    """CORS for the configured browser origins, outermost so preflights need no key.

    Keys travel in the ``Authorization`` header, never in cookies, so credentials
    mode stays off: a page must hold the key itself (docs/sse.md, "Browsers").
    """
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                "X-Request-ID",
            ],
            expose_headers=[
                "Location",
                "Idempotent-Replayed",
                "X-Axon-Last-Seq",
                "X-Axon-Head-Seq",
                "X-Request-ID",
            ],
            max_age=600,
        )
    ]


@asynccontextmanager
async def _opened(settings: Settings, store: Store | None) -> AsyncIterator[Store]:
    if store is not None:
        yield store
        return
    async with open_store(settings) as opened:
        yield opened


# -- endpoints ---------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """The process is up (no dependency is checked)."""
    return _json(Health(status="ok"))


async def readyz(request: Request) -> Response:
    """Redis answers and every Lua script is loaded: ready to take traffic."""
    services = _services(request)
    try:
        await services.store.load_scripts()
    except AxonError as exc:
        return _json(Health(status="unavailable", checks={"redis": exc.message}), status=503)
    if not services.tailer.connected:
        checks = {"redis": "ok", "scripts": "loaded", "live_tail": "reconnecting"}
        return _json(Health(status="unavailable", checks=checks), status=503)
    return _json(
        Health(status="ok", checks={"redis": "ok", "scripts": "loaded", "live_tail": "ok"})
    )


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document, generated from the wire types."""
    return Response(openapi_document(), media_type="application/json")


async def tasks(request: Request) -> Response:
    """``/v1/tasks``: one route for both methods, so a 405 lists both in ``Allow``."""
    if request.method == "POST":
        return await create_task(request)
    return await list_tasks(request)


async def create_task(request: Request) -> Response:
    """``POST /v1/tasks``: create and enqueue a task (201); replays of an
    ``Idempotency-Key`` return the first task (200)."""
    principal = _principal(request, Role.WRITER)
    services = _services(request)
    _only(request.query_params.keys(), set())
    content_type = request.headers.get("content-type", "application/json")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise _HttpError(415, "unsupported_media_type", "send the body as application/json")
    body = await request.body()
    body_obj = _decode_create(body)
    spec = TaskSpec(
        tenant=principal.tenant,
        adapter=body_obj.adapter,
        args=body_obj.args,
        lane=body_obj.lane or "default",
        name=body_obj.name,
        metadata=body_obj.metadata,
        timeout_s=body_obj.timeout_s,
        max_attempts=body_obj.max_attempts,
    )
    key = request.headers.get("idempotency-key")
    submitted = await services.catalog.submit(
        spec,
        idempotency_key=key,
        body_digest=hashlib.sha256(body).hexdigest(),
    )
    task = Task.of(submitted.task)
    bind_task(task.id)  # the access log line of this request names the task
    headers = {"location": f"/v1/tasks/{task.id}"}
    if submitted.replayed:
        headers["idempotent-replayed"] = "true"
    return _json(task, status=200 if submitted.replayed else 201, headers=headers)


async def list_tasks(request: Request) -> Response:
    """``GET /v1/tasks``: the tenant's tasks, newest first, a page at a time."""
    principal = _principal(request, Role.READER)
    services = _services(request)
    query = request.query_params
    _only(query.keys(), {"state", "adapter", "lane", "limit", "cursor"})
    state = query.get("state")
    if state is not None and state not in TaskState.__members__.values():
        raise InvalidArgument(
            f"state must be one of {', '.join(s.value for s in TaskState)}", parameter="state"
        )
    limit = _int_param(query.get("limit"), "limit", default=50, low=1, high=200)
    page = await services.catalog.list(
        principal.tenant,
        state=TaskState(state) if state is not None else None,
        adapter=query.get("adapter"),
        lane=query.get("lane"),
        limit=limit,
        cursor=query.get("cursor"),
    )
    return _json(TaskList(items=[Task.of(r) for r in page.items], next_cursor=page.next_cursor))


async def get_task(request: Request) -> Response:
    """``GET /v1/tasks/{id}``: one task."""
    principal = _principal(request, Role.READER)
    _only(request.query_params.keys(), set())
    record = await _services(request).catalog.get(principal.tenant, request.path_params["task_id"])
    return _json(Task.of(record))


async def cancel_task(request: Request) -> Response:
    """``POST /v1/tasks/{id}/cancel``: ask for cancellation (202; idempotent)."""
    principal = _principal(request, Role.WRITER)
    _only(request.query_params.keys(), set())
    body = await request.body()
    reason = _decode_body(cancel_task_decoder, body).reason if body.strip() else None
    record = await _services(request).catalog.cancel(
        principal.tenant, request.path_params["task_id"], reason=reason
    )
    return _json(Task.of(record), status=202)


async def task_events(request: Request) -> Response | EventStream:
    """``GET /v1/tasks/{id}/events``: SSE (backfill then live) or an NDJSON export page."""
    principal = _principal(request, Role.READER)
    services = _services(request)
    query = request.query_params
    _only(query.keys(), {"since_seq", "limit"})
    record = await services.catalog.get(principal.tenant, request.path_params["task_id"])
    accept = _negotiate(request.headers.get("accept", "*/*"))
    cursor = _cursor(request)
    if cursor > record.head_seq:
        raise CursorAhead(
            f"cursor {cursor} is beyond the task's last event (seq {record.head_seq})",
            cursor=cursor,
            last_seq=record.head_seq,
        )
    if accept == EVENT_STREAM:
        if "limit" in query:
            raise InvalidArgument("limit applies to NDJSON exports only", parameter="limit")
        return EventStream(
            store=services.store,
            tailer=services.tailer,
            task_id=record.id,
            cursor=cursor,
            finished=record.state.terminal and cursor >= record.head_seq,
            options=services.stream_options,
        )
    limit = _int_param(query.get("limit"), "limit", default=1000, low=1, high=EXPORT_MAX_EVENTS)
    lines: list[bytes] = []
    size = 0
    full = False
    while not full and len(lines) < limit:
        raws = await services.store.read_raw(
            record.id, after_seq=cursor + len(lines), limit=min(1000, limit - len(lines))
        )
        if not raws:
            break
        for raw in raws:
            if lines and size + len(raw) + 1 > EXPORT_MAX_BYTES:
                full = True
                break
            lines.append(raw)
            size += len(raw) + 1
    last = cursor + len(lines)
    body = b"".join(line + b"\n" for line in lines)
    return Response(
        body,
        media_type=NDJSON,
        headers={
            "x-axon-last-seq": str(last),
            "x-axon-head-seq": str(max(record.head_seq, last)),
            "cache-control": "no-store",
        },
    )


async def task_checkpoint(request: Request) -> Response:
    """``GET /v1/tasks/{id}/checkpoint``: the latest signed checkpoint (a C2SP signed note)."""
    principal = _principal(request, Role.READER)
    _only(request.query_params.keys(), set())
    services = _services(request)
    record = await services.catalog.get(principal.tenant, request.path_params["task_id"])
    checkpoint = await services.receipts.checkpoint(record.id)
    return _text(checkpoint.note)


async def event_proof(request: Request) -> Response:
    """``GET /v1/tasks/{id}/events/{seq}/proof``: a C2SP ``tlog-proof@v1`` for one event."""
    principal = _principal(request, Role.READER)
    _only(request.query_params.keys(), set())
    raw_seq = request.path_params["seq"]
    if _SEQ.fullmatch(raw_seq) is None or int(raw_seq) < 1:
        raise InvalidArgument(
            f"seq must be a positive integer, got {raw_seq[:40]!r}", parameter="seq"
        )
    services = _services(request)
    record = await services.catalog.get(principal.tenant, request.path_params["task_id"])
    proof = await services.receipts.proof(record.id, int(raw_seq))
    return _text(proof, filename=f"{record.id}-{int(raw_seq)}.tlog-proof")


async def task_receipt(request: Request) -> Response:
    """``GET /v1/tasks/{id}/receipt``: the proof of a finished task's terminal event."""
    principal = _principal(request, Role.READER)
    _only(request.query_params.keys(), set())
    services = _services(request)
    record = await services.catalog.get(principal.tenant, request.path_params["task_id"])
    receipt = await services.receipts.receipt(record.id)
    return _text(receipt, filename=f"{record.id}.tlog-proof")


async def task_consistency(request: Request) -> Response:
    """``GET /v1/tasks/{id}/consistency?from=M&to=N``: RFC 6962 consistency proof (JSON)."""
    principal = _principal(request, Role.READER)
    query = request.query_params
    _only(query.keys(), {"from", "to"})
    services = _services(request)
    record = await services.catalog.get(principal.tenant, request.path_params["task_id"])
    high = 10**18
    old = _int_param(query.get("from"), "from", default=1, low=1, high=high)
    new = _int_param(query.get("to"), "to", default=record.head_seq, low=1, high=high)
    return _json(await services.receipts.consistency(record.id, old, new))


async def receipt_key(request: Request) -> Response:
    """``GET /v1/receipt-key``: the note verifier keys receipts verify with, one per line
    (the current signing key first, then earlier keys still trusted)."""
    _principal(request, Role.READER)
    _only(request.query_params.keys(), set())
    services = _services(request)
    keys = services.receipts.verifier_keys()
    return _text("".join(f"{key}\n" for key in keys))


# -- helpers -----------------------------------------------------------------


def _text(body: str, *, filename: str | None = None) -> Response:
    headers = {"cache-control": "no-store"}
    if filename is not None:
        headers["content-disposition"] = f'attachment; filename="{filename}"'
    return Response(body, media_type="text/plain; charset=utf-8", headers=headers)


class _HttpError(AxonError):
    """An error that exists only at the HTTP edge (media types)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self.http_code = code


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _principal(request: Request, required: Role) -> Principal:
    principal: Principal = request.scope[PRINCIPAL]
    if not principal.role.allows(required):
        raise PermissionDenied(
            f"a {principal.role.value} key cannot do this; it needs the {required.value} role",
            role=principal.role.value,
            required=required.value,
        )
    return principal


def _decode_create(body: bytes) -> CreateTask:
    return _decode_body(create_task_decoder, body)


def _decode_body(decoder: msgspec.json.Decoder[_Body], body: bytes) -> _Body:
    if not body.strip():
        raise _HttpError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        path = match.group(1) if match else "$"
        raise _HttpError(422, "validation_error", text, path=path) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _HttpError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def _negotiate(accept: str) -> str:
    """SSE or NDJSON from the ``Accept`` header (NDJSON for ``*/*`` or none)."""
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for media in offered:
        if media == EVENT_STREAM:
            return EVENT_STREAM
        if media in (NDJSON, "application/*", "*/*", ""):
            return NDJSON
    raise _HttpError(
        406,
        "not_acceptable",
        f"events are served as {EVENT_STREAM} (SSE) or {NDJSON} (export)",
        offered=[EVENT_STREAM, NDJSON],
    )


def _cursor(request: Request) -> int:
    """The resume cursor: ``Last-Event-ID`` if present (it wins), else ``since_seq``, else 0."""
    header = request.headers.get("last-event-id")
    if header is not None:
        source, raw = "Last-Event-ID", header.strip()
    else:
        source, raw = "since_seq", request.query_params.get("since_seq", "0")
    if _SEQ.fullmatch(raw) is None:
        raise InvalidCursor(
            f"{source} must be a seq: a whole number >= 0 (got {raw[:40]!r})", source=source
        )
    return int(raw)


def _int_param(raw: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if _SEQ.fullmatch(raw) is None or not low <= int(raw) <= high:
        raise InvalidArgument(f"{name} must be a whole number from {low} to {high}", parameter=name)
    return int(raw)


def _only(names: Any, allowed: set[str]) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        accepted = f"allowed: {', '.join(sorted(allowed))}" if allowed else "this takes none"
        raise InvalidArgument(
            f"unknown query parameter {unknown[0][:64]!r}; {accepted}", parameter=unknown[0][:64]
        )


def _json(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encoder.encode(value), status, headers, media_type="application/json")


def _error(status: int, code: str, message: str, details: dict[str, Any]) -> Response:
    return Response(error_body(code, message, details), status, media_type="application/json")


async def _axon_error(request: Request, exc: Exception) -> Response:
    error = cast("AxonError", exc)  # registered for AxonError only
    if isinstance(error, _HttpError):
        return _error(error.status, error.http_code, error.message, error.details)
    return _error(STATUS.get(error.code, 500), error.code, error.message, error.details)


async def _http_error(request: Request, exc: Exception) -> Response:
    exc = cast("HTTPException", exc)  # registered for HTTPException only
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(
        exc.status_code, str(exc.detail)
    )
    return Response(
        error_body(code, message, {"path": request.url.path}),
        exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    message = "the server failed; this is a bug, please report it"
    response = _error(500, "internal_error", message, {})
    request_id = REQUEST_ID.get()  # sent outside AccessMiddleware, which echoes it otherwise
    if request_id is not None:
        response.headers["x-request-id"] = request_id
    return response
