"""Pure ASGI middleware of the HTTP API: error bodies, body size limit, authentication.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming responses pass
through untouched and cancellation reaches the endpoint.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axon.apikeys import Principal
from axon.errors import AxonError, RequestTooLarge, StoreUnavailable, Unauthenticated
from axon.wire import ErrorBody, ErrorDetail, encoder

PRINCIPAL = "axon.principal"
"""Scope key under which ``AuthMiddleware`` leaves the authenticated ``Principal``."""

STATUS: dict[str, int] = {
    "invalid_argument": 400,
    "invalid_cursor": 400,
    "invalid_task_id": 400,
    "malformed_json": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "task_not_found": 404,
    "event_not_found": 404,
    "key_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "task_exists": 409,
    "idempotency_conflict": 409,
    "cursor_ahead": 409,
    "task_terminal": 409,
    "illegal_transition": 409,
    "stale_head": 409,
    "task_not_finished": 409,
    "fenced": 409,
    "events_unavailable": 410,
    "request_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "invalid_task": 422,
    "invalid_event": 422,
    "event_too_large": 422,
    "validation_error": 422,
    "store_unavailable": 503,
    "archive_unavailable": 503,
    "receipts_unavailable": 503,
    "durability_timeout": 503,
    "durability_unsupported": 503,
}
"""HTTP status of each error code; codes absent here are 500s (a bug, not bad input)."""


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The contract-5 JSON body."""
    return encoder.encode(
        ErrorBody(error=ErrorDetail(code=code, message=message, details=details or {}))
    )


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete error response from ASGI code."""
    body = error_body(code, message, details)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Authenticator(Protocol):
    """What ``AuthMiddleware`` needs of a key store."""

    async def authenticate(self, presented: str) -> Principal:
        """The principal of a presented key; ``Unauthenticated`` when it is not valid."""
        ...


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before reading; a
    body without one (chunked) is counted as it arrives, and the endpoint's read
    raises ``RequestTooLarge`` at the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await send_error(send, 400, "invalid_argument", "Content-Length is malformed")
                    return
                if int(value) > limit:
                    await send_error(
                        send, 413, "request_too_large",
                        f"request body is larger than the limit of {limit} bytes",
                        {"limit": limit},
                    )  # fmt: skip
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise RequestTooLarge(
                        f"request body is larger than the limit of {limit} bytes", limit=limit
                    )
            return message

        await self.app(scope, counted, send)


class AuthMiddleware:
    """Authenticate ``/v1/`` and ``/mcp`` requests by ``Authorization: Bearer <api key>``.

    Keys never travel in URLs (contract 4), so no query parameter is looked at.
    The verified ``Principal`` is left in the scope for the endpoints, which
    check the role they need and scope every lookup to its tenant.
    """

    def __init__(
        self, app: ASGIApp, *, keys: Authenticator, prefixes: tuple[str, ...] = ("/v1/",)
    ) -> None:
        self.app = app
        self.keys = keys
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        challenge = [(b"www-authenticate", b'Bearer realm="axon"')]
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if not header or scheme.lower() != b"bearer" or not token.strip():
            await send_error(
                send, 401, "unauthenticated",
                "send an API key as 'Authorization: Bearer <key>'",
                headers=challenge,
            )  # fmt: skip
            return
        try:
            principal: Principal = await self.keys.authenticate(
                token.strip().decode("ascii", errors="replace")
            )
        except Unauthenticated as exc:
            await send_error(send, 401, exc.code, exc.message, headers=challenge)
            return
        except StoreUnavailable as exc:
            await send_error(send, 503, exc.code, exc.message)
            return
        except AxonError as exc:
            await send_error(send, 401, "unauthenticated", exc.message, headers=challenge)
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)
