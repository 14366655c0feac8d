"""Per-request observability at the HTTP edge: request id, access log, metrics, span.

``AccessMiddleware`` is the outermost middleware of the API (pure ASGI, so SSE
responses stream through untouched). For each HTTP request it

* takes the ``X-Request-ID`` header when it is a sane id (1-128 characters of
  ``A-Z a-z 0-9 . _ : -``), otherwise makes one, puts it in the logging context
  (``axon.logs.REQUEST_ID``) and echoes it in the response's ``X-Request-ID``;
* puts the task id of ``/v1/tasks/{task_id}...`` paths in the logging context;
* starts the request's trace span when tracing is on (``axon.tracing``);
* when the response is over, counts it in ``axon_http_requests_total`` by
  method, route *template* and status, and writes one access log line.

Nothing from the headers but the request id is kept: never ``Authorization``.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axon import metrics, tracing
from axon.logs import REQUEST_ID, TASK_ID
from axon.middleware import PRINCIPAL

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_TASK_PATH = re.compile(r"/v1/tasks/([A-Za-z0-9_-]{1,64})(?:/|$)")
CLIENT_GONE = 499
"""Status recorded for a request whose client left before any response was sent."""

_log = logging.getLogger("axon.access")


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's ``X-Request-ID`` if it is well-formed, else a new random id."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _VALID_ID.fullmatch(value) is not None:
                return value.decode("ascii")
            break
    return os.urandom(16).hex()


class AccessMiddleware:
    """Request id, access log, request metrics and trace span (see module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope["headers"])
        # Each request runs in its own asyncio task, so these stay with this request
        # (and are still set when an error handler outside this middleware logs).
        REQUEST_ID.set(request_id)
        metrics.set_component("api")
        path: str = scope["path"]
        match = _TASK_PATH.match(path)
        if match is not None:
            TASK_ID.set(match.group(1))
        method: str = scope["method"]
        span = tracing.start_server_span(method, path, scope["headers"])
        echo = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 0
        answered = 0.0

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = time.perf_counter()
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = status or 500
            raise
        finally:
            status = status or CLIENT_GONE
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = (answered or time.perf_counter()) - started
            metrics.observe_http(method, route, status, seconds)
            if span is not None:
                tracing.end_server_span(
                    span, method=method, route=route, status=status, request_id=request_id
                )
            if _log.isEnabledFor(logging.INFO):
                fields = {
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                }
                principal = scope.get(PRINCIPAL)
                if principal is not None:  # the key's public id, never the key
                    fields["key_id"] = principal.key_id
                _log.info("%s %s %d", method, path, status, extra=fields)
