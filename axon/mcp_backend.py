"""What the MCP tools act on: Axon's services in this process, or an Axon API server.

The tools in ``axon/mcp_tools.py`` are written once against ``TaskBackend``.
``DirectBackend`` calls the services (catalog, store, tailer, receipts) as the
HTTP endpoints do, scoped to one principal: it serves ``/mcp`` inside the API
and ``axon mcp --redis``. ``HttpBackend`` goes through ``axon.Client`` with an
API key: ``axon mcp`` on a laptop talking to a remote deployment. Both check
the same things in the same order, so a tool answers the same either way.
"""

from __future__ import annotations

import builtins
import hashlib
from contextlib import aclosing
from typing import Any, Protocol

import anyio
import msgspec

from axon.apikeys import Principal, Role
from axon.client import Client
from axon.errors import CursorAhead, InvalidArgument, PermissionDenied
from axon.records import TaskSpec, TaskState
from axon.services import Services
from axon.wire import Task, TaskList

_encoder = msgspec.json.Encoder()


class StartRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What ``start_task`` asks for (``POST /v1/tasks``'s body plus its idempotency key)."""

    adapter: str
    args: dict[str, Any]
    lane: str | None = None
    timeout_s: float | None = None
    name: str | None = None
    idempotency_key: str | None = None


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    """Events after a cursor, as exact bytes, and the task's head when they were read."""

    raws: list[bytes]
    head_seq: int


class TaskBackend(Protocol):
    """The operations the MCP tools need, for one caller (tenant and role)."""

    @property
    def tenant(self) -> str:
        """Whose tasks these are (what per-tenant limits count)."""
        ...

    async def start(self, request: StartRequest) -> Task:
        """Create and queue a task (the same idempotency key and arguments: the same task)."""
        ...

    async def get(self, task_id: str) -> Task:
        """One task of the caller's tenant (``TaskNotFound`` otherwise)."""
        ...

    async def read(self, task_id: str, after_seq: int, limit: int) -> EventPage:
        """At most ``limit`` events after ``after_seq`` (``CursorAhead`` past the head)."""
        ...

    async def wait(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        """Return once the task has an event after ``after_seq``, or ``timeout_s`` passed."""
        ...

    async def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        """Ask for cancellation (idempotent); ``reason`` goes into the canceled event."""
        ...

    async def list(self, state: TaskState | None, limit: int, cursor: str | None) -> TaskList:
        """A page of the caller's tasks, newest first."""
        ...

    async def proof(self, task_id: str, seq: int | None) -> str:
        """The tlog-proof of event ``seq``, or the receipt (terminal event) for ``None``."""
        ...

    async def verifier_keys(self) -> builtins.list[str]:
        """Note verifier keys that receipts verify with, the current one first."""
        ...


class DirectBackend:
    """``TaskBackend`` on this process's services, acting as ``principal``."""

    def __init__(self, services: Services, principal: Principal) -> None:
        self.services = services
        self.principal = principal

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def _require(self, required: Role) -> None:
        if not self.principal.role.allows(required):
            raise PermissionDenied(
                f"a {self.principal.role.value} key cannot do this; "
                f"it needs the {required.value} role",
                role=self.principal.role.value,
                required=required.value,
            )

    async def start(self, request: StartRequest) -> Task:
        self._require(Role.WRITER)
        spec = TaskSpec(
            tenant=self.principal.tenant,
            adapter=request.adapter,
            args=request.args,
            lane=request.lane or "default",
            name=request.name,
            timeout_s=request.timeout_s,
        )
        fields = msgspec.to_builtins(request)
        fields.pop("idempotency_key", None)
        submitted = await self.services.catalog.submit(
            spec,
            idempotency_key=request.idempotency_key,
            body_digest=hashlib.sha256(_encoder.encode(fields)).hexdigest(),
        )
        return Task.of(submitted.task)

    async def get(self, task_id: str) -> Task:
        self._require(Role.READER)
        return Task.of(await self.services.catalog.get(self.principal.tenant, task_id))

    async def read(self, task_id: str, after_seq: int, limit: int) -> EventPage:
        task = await self.get(task_id)
        _check_cursor(after_seq, task.last_seq)
        raws = await self.services.store.read_raw(task.id, after_seq=after_seq, limit=limit)
        return EventPage(raws=raws, head_seq=max(task.last_seq, after_seq + len(raws)))

    async def wait(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            async with self.services.tailer.watch(task_id) as tail:
                # Subscribed first, then look: an event appended in between is
                # either seen by this read or announced to the tail.
                task = await self.get(task_id)
                if task.last_seq > after_seq or task.state.terminal:
                    return
                while tail.head is None or tail.head <= after_seq:
                    if tail.terminal_seq is not None:
                        return
                    await tail.wait_changed()

    async def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        self._require(Role.WRITER)
        record = await self.services.catalog.cancel(self.principal.tenant, task_id, reason=reason)
        return Task.of(record)

    async def list(self, state: TaskState | None, limit: int, cursor: str | None) -> TaskList:
        self._require(Role.READER)
        page = await self.services.catalog.list(
            self.principal.tenant, state=state, limit=limit, cursor=cursor
        )
        return TaskList(items=[Task.of(r) for r in page.items], next_cursor=page.next_cursor)

    async def proof(self, task_id: str, seq: int | None) -> str:
        task = await self.get(task_id)
        if seq is None:
            return await self.services.receipts.receipt(task.id)
        return await self.services.receipts.proof(task.id, seq)

    async def verifier_keys(self) -> builtins.list[str]:
        self._require(Role.READER)
        return self.services.receipts.verifier_keys()


class HttpBackend:
    """``TaskBackend`` through an Axon API server; the server checks role and tenant."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def tenant(self) -> str:
        return "api"  # one key, one tenant: the server knows which

    async def start(self, request: StartRequest) -> Task:
        return await self.client.start(
            request.adapter,
            request.args,
            lane=request.lane,
            timeout_s=request.timeout_s,
            name=request.name,
            idempotency_key=request.idempotency_key,
        )

    async def get(self, task_id: str) -> Task:
        return await self.client.get(task_id)

    async def read(self, task_id: str, after_seq: int, limit: int) -> EventPage:
        page = await self.client.read(task_id, after_seq, limit=limit)
        return EventPage(raws=page.lines, head_seq=page.head_seq)

    async def wait(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            task = await self.client.get(task_id)
            if task.last_seq > after_seq or task.state.terminal:
                return
            async with aclosing(self.client.events(task_id, after_seq)) as events:
                async for _ in events:
                    return

    async def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        return await self.client.cancel(task_id, reason=reason)

    async def list(self, state: TaskState | None, limit: int, cursor: str | None) -> TaskList:
        return await self.client.list(state=state, limit=limit, cursor=cursor)

    async def proof(self, task_id: str, seq: int | None) -> str:
        if seq is None:
            return await self.client.receipt(task_id)
        return await self.client.proof(task_id, seq)

    async def verifier_keys(self) -> builtins.list[str]:
        return await self.client.receipt_key()


def _check_cursor(after_seq: int, last_seq: int) -> None:
    if after_seq < 0:
        raise InvalidArgument("since_seq must be 0 or more", parameter="since_seq")
    if after_seq > last_seq:
        raise CursorAhead(
            f"cursor {after_seq} is beyond the task's last event (seq {last_seq})",
            cursor=after_seq,
            last_seq=last_seq,
        )
