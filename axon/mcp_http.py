"""``/mcp``: the MCP tools over Streamable HTTP, inside the API, with the API's keys.

Both protocol eras the SDK speaks are served at one path:

* **2026-07-28** (SDK 2.x clients): every request stands alone; no session.
* **2025-11-25** (SDK 1.x clients): sessions, with SSE event ids and
  ``Last-Event-ID`` resumption. Every message a session sends is stored in a
  Redis stream of that session (``RedisEventStore``) before it is written to
  the wire, so a client whose connection dropped gets everything it missed.
  The session itself lives in the replica that opened it; a client that
  reconnects to **another** replica with ``Last-Event-ID`` is served from
  Redis here (``_replay_elsewhere``): the missed messages, then new ones as
  the owning replica stores them, until the response that ends the stream.

Authentication is the API's own middleware (bearer API keys); this module
turns the principal into the SDK's user so a session answers only to the key
that opened it, and the tools act as that key's tenant and role.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    MCP_SESSION_ID_HEADER,
    EventCallback,
    EventId,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
    StreamId,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import JSONRPCError, JSONRPCMessage, JSONRPCResponse
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from axon.apikeys import Principal
from axon.errors import AxonError
from axon.mcp_backend import DirectBackend, TaskBackend
from axon.mcp_tools import WaitLimits, build_server
from axon.middleware import PRINCIPAL, send_error
from axon.services import Services
from axon.store import Store, text_of

_log = logging.getLogger("axon.mcp")
# The SDK logs every session's opening and closing at INFO; one line per agent
# session is noise in an API's log. Its warnings and errors still show.
logging.getLogger("mcp").setLevel(logging.WARNING)
_messages: TypeAdapter[JSONRPCMessage] = TypeAdapter(JSONRPCMessage)

SESSION_TTL_S = 3600
"""How long a session's stored messages outlive its last message (seconds)."""
SESSION_MAX_MESSAGES = 10_000
"""Messages kept per session (oldest trimmed first)."""
REMOTE_TAIL_S = 300.0
"""Longest a replica serving another replica's session waits for new messages."""


def owner_of(principal: Principal) -> str:
    """The identity a session is bound to: tenant and key id (never the key)."""
    return f"{principal.tenant}/{principal.key_id}"


class RedisEventStore(EventStore):
    """The SDK's ``EventStore`` for one session, on a Redis stream.

    Event ids are ``<session id>.<stream entry id>``, so any replica can find
    the session and the position from ``Last-Event-ID`` alone.
    """

    def __init__(self, store: Store, session_id: str, owner: str) -> None:
        self.store = store
        self.session_id = session_id
        self.owner = owner
        self._key = store.keys.mcp_session(session_id)
        self._owner_key = store.keys.mcp_session_owner(session_id)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        body = (
            b""
            if message is None
            else _messages.dump_json(message, by_alias=True, exclude_unset=True)
        )
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.xadd(
            self._key,
            {"s": stream_id, "m": body},
            maxlen=SESSION_MAX_MESSAGES,
            approximate=True,
        )
        pipe.expire(self._key, SESSION_TTL_S)
        pipe.set(self._owner_key, self.owner, ex=SESSION_TTL_S)
        replies = await self.store.call(pipe.execute())
        return f"{self.session_id}.{text_of(replies[0])}"

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        position = _position(last_event_id, self.session_id)
        if position is None:
            return None
        stream_id = await _stream_of(self.store, self._key, position)
        if stream_id is None:
            return None
        async for entry_id, message in _after(self.store, self._key, position, stream_id):
            await send_callback(EventMessage(message, f"{self.session_id}.{entry_id}"))
        return stream_id


class SessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, giving each session its own ``RedisEventStore``."""

    def __init__(self, server: MCPServer, store: Store) -> None:
        super().__init__(
            app=server._lowlevel_server,  # the SDK's documented way to mount one server
            event_store=None,
            json_response=False,
            stateless=False,
            security_settings=None,  # bearer keys, not cookies: no DNS-rebinding exposure
        )
        self.store = store

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            owner = requestor["client_id"] if requestor else ""
            transport._event_store = RedisEventStore(self.store, transport.mcp_session_id, owner)
        return transport

    def holds(self, session_id: str) -> bool:
        """Whether this replica runs the session."""
        return session_id in self._server_instances


class McpEndpoint:
    """The ASGI app mounted at ``/mcp`` (behind the API's auth middleware)."""

    def __init__(self, wait_limits: WaitLimits | None = None) -> None:
        self.wait_limits = wait_limits or WaitLimits()
        self.manager: SessionManager | None = None
        self.services: Services | None = None

    @asynccontextmanager
    async def run(self, services: Services) -> AsyncIterator[None]:
        """Serve sessions while the block runs (called from the API's lifespan)."""
        self.services = services
        self.wait_limits.draining = anyio.Event()
        server = build_server(self._backend_of, limits=self.wait_limits)
        self.manager = SessionManager(server, services.store)
        async with self.manager.run():
            yield
        self.manager = None

    def drain(self) -> None:
        """Let the server stop without waiting on agents: waiting long-polls return now
        (with what they have; the agent calls again, on another replica) and sessions'
        standalone streams close (clients reconnect). Call it on the server's loop."""
        if self.wait_limits.draining is not None:
            self.wait_limits.draining.set()
        if self.manager is not None:
            for transport in list(self.manager._server_instances.values()):
                transport.close_standalone_sse_stream()

    async def _backend_of(self, ctx: Context) -> TaskBackend:
        request = ctx.request_context.request
        principal = request.scope.get(PRINCIPAL) if isinstance(request, Request) else None
        if principal is None or self.services is None:
            raise AxonError("this MCP request carries no authenticated key")
        return DirectBackend(self.services, principal)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        manager = self.manager
        if manager is None:
            await send_error(send, 503, "store_unavailable", "the MCP endpoint is not started")
            return
        principal: Principal = scope[PRINCIPAL]
        owner = owner_of(principal)
        # The SDK binds a session to the user that opened it; we give it ours.
        scope["user"] = AuthenticatedUser(
            AccessToken(token=principal.key_id, client_id=owner, scopes=[principal.role.value])
        )
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        session_id = headers.get(MCP_SESSION_ID_HEADER)
        last_event_id = headers.get("last-event-id")
        if (
            scope["method"] == "GET"
            and session_id
            and last_event_id
            and not manager.holds(session_id)
            and await _replay_elsewhere(manager.store, session_id, last_event_id, owner, send)
        ):
            return
        await manager.handle_request(scope, receive, send)


# -- serving another replica's session ----------------------------------------------


async def _replay_elsewhere(
    store: Store, session_id: str, last_event_id: str, owner: str, send: Send
) -> bool:
    """Resume a stream of a session that another replica runs; False if Redis has none."""
    position = _position(last_event_id, session_id)
    if position is None:
        return False
    stored_owner = await store.call(store.redis.get(store.keys.mcp_session_owner(session_id)))
    if stored_owner is None or text_of(stored_owner) != owner:
        return False  # unknown here too (or not yours): the SDK answers 404
    key = store.keys.mcp_session(session_id)
    stream_id = await _stream_of(store, key, position)
    if stream_id is None:
        return False
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache, no-transform"),
                (b"x-accel-buffering", b"no"),
                (MCP_SESSION_ID_HEADER.encode(), session_id.encode()),
            ],
        }
    )
    cursor = position
    ended = False
    with anyio.move_on_after(REMOTE_TAIL_S):
        while not ended:
            async for entry_id, message in _after(store, key, cursor, stream_id):
                cursor = entry_id
                data = _messages.dump_json(message, by_alias=True, exclude_unset=True)
                frame = f"id: {session_id}.{entry_id}\nevent: message\ndata: ".encode()
                frame += data + b"\n\n"
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                if stream_id != GET_STREAM_KEY and isinstance(
                    message, JSONRPCResponse | JSONRPCError
                ):
                    ended = True  # the response (or error) that ends this request's stream
                    break
            if ended or stream_id == GET_STREAM_KEY:
                break
            await _wait_newer(store, key, cursor)
            await send(
                {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
            )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def _wait_newer(store: Store, key: str, cursor: str) -> None:
    """Block (briefly: it holds a pooled connection) until an entry after ``cursor`` exists."""
    await store.call(store.redis.xread({key: cursor}, count=1, block=1000))


# -- the session stream -----------------------------------------------------------


def _position(event_id: str, session_id: str) -> str | None:
    """The stream entry id inside an event id of ``session_id`` (None if not one)."""
    session, _, entry = event_id.strip().rpartition(".")
    if session != session_id or not entry:
        return None
    ms, _, seq = entry.partition("-")
    if not (ms.isdigit() and seq.isdigit()):
        return None
    return entry


async def _stream_of(store: Store, key: str, position: str) -> str | None:
    """Which SSE stream the entry at ``position`` belongs to."""
    rows = await store.call(store.redis.xrange(key, min=position, max=position, count=1))
    if not rows:
        return None
    return text_of(_fields(rows[0][1])[b"s"])


async def _after(
    store: Store, key: str, position: str, stream_id: str
) -> AsyncIterator[tuple[str, Any]]:
    """Messages of ``stream_id`` stored after ``position``, in order (priming rows skipped)."""
    cursor = position
    while True:
        rows = await store.call(store.redis.xrange(key, min=f"({cursor}", count=500))
        if not rows:
            return
        for raw_id, raw_fields in rows:
            cursor = text_of(raw_id)
            fields = _fields(raw_fields)
            if text_of(fields[b"s"]) != stream_id or not fields.get(b"m"):
                continue
            try:
                message = _messages.validate_json(fields[b"m"])
            except ValueError:
                _log.warning("skipping an unreadable stored MCP message in %s", key)
                continue
            yield cursor, message


def _fields(raw: Any) -> dict[bytes, bytes]:
    """A stream entry's fields: the store's XRANGE replies are flat lists, unparsed."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))
