"""The tenant-scoped task service behind the HTTP API: submit, get, cancel, list.

Every call names a tenant, and a tenant sees only its own tasks: another
tenant's task is answered exactly like a missing one (``TaskNotFound`` with
the same message), so ids cannot be probed across tenants.

Listing uses one sorted set per tenant (``KeySpace.tenant_tasks``) with score 0
and the task id as member. Task ids are ``t_`` + a ULID, so the set's
lexicographic order is creation order (to the millisecond) and "newest first,
after this cursor" is one ``ZREVRANGEBYLEX key (<cursor> - LIMIT 0 n``. A
submit adds the id to the index *before* it creates the task, so no created
task is ever missing from the index; an id whose record does not exist is
skipped by listings and, once it is old enough that no request can still be
creating it, removed.

Idempotency keys are stored by their SHA-256 only (a client may put something
sensitive in one), as ``<body digest> <task id>`` with ``SET NX EX``: the
first request with a key claims it and creates the task, later ones get that
task back, or ``IdempotencyConflict`` when their body differs.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from axon.errors import (
    IdempotencyConflict,
    InvalidArgument,
    InvalidCursor,
    InvalidTaskSpec,
    StoreUnavailable,
    TaskExists,
    TaskNotFound,
    TaskTerminal,
)
from axon.keys import TASK_ID_PATTERN, new_task_id
from axon.queue import Queue
from axon.records import TaskRecord, TaskSpec, TaskState
from axon.store import TENANT_PATTERN, now_ms, text_of

MAX_PAGE = 200
"""Largest ``limit`` a listing accepts."""

REPLAY_WAIT_S = 2.0
"""How long a repeated request waits for a concurrent first request to create its task."""

REPLAY_POLL_S = 0.02
"""Pause between looks at a task that a concurrent request is still creating."""

ORPHAN_AFTER_MS = 5 * 60 * 1000
"""Age of a task id past which a request that picked it can no longer be creating it.

Creating a task takes a few commands, each bounded by the client's socket
timeout; five minutes leaves room for that and for clock skew between hosts.
An index entry or idempotency key naming a missing task this old is an orphan
(the request crashed, or its clean-up failed).
"""

_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_CROCKFORD_VALUE = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a tenant's tasks, newest first.

    A page may be shorter than the requested limit (even empty) when a filter
    is selective: keep asking with ``next_cursor`` and stop when it is ``None``.

    Attributes:
        items: the tasks on this page.
        next_cursor: pass it back to get the next page; ``None`` when there is nothing more.
    """

    items: list[TaskRecord]
    next_cursor: str | None


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a submit.

    Attributes:
        task: the task's record (for a replay, as it is now).
        replayed: True when an ``Idempotency-Key`` matched an earlier request,
            so no new task was created.
    """

    task: TaskRecord
    replayed: bool


class TaskCatalog:
    """Tasks as one tenant sees them, on top of a ``Queue``.

    Args:
        queue: the queue tasks are submitted to; ``queue.store`` is the store.
        idempotency_ttl_s: how long an ``Idempotency-Key`` is remembered.
    """

    def __init__(self, queue: Queue, *, idempotency_ttl_s: int = 86_400) -> None:
        if idempotency_ttl_s < 1:
            raise ValueError("idempotency_ttl_s must be at least 1")
        self.queue = queue
        self.store = queue.store
        self.keys = queue.store.keys
        self.idempotency_ttl_s = idempotency_ttl_s

    # -- submitting -----------------------------------------------------------------

    async def submit(
        self, spec: TaskSpec, *, idempotency_key: str | None = None, body_digest: str = ""
    ) -> Submitted:
        """Create a task for ``spec.tenant`` and queue it, at most once per idempotency key.

        With ``idempotency_key``, a request repeating an earlier one of the same
        tenant (within ``idempotency_ttl_s``) gets the earlier task back with
        ``replayed=True``. ``body_digest`` identifies the request body (the
        HTTP layer passes a hash of it); a repeat with another digest is a
        conflict. A repeat that arrives while the first request is still
        creating the task waits for it, up to ``REPLAY_WAIT_S``.

        Raises:
            InvalidTaskSpec: the spec is malformed or names an unknown lane.
            InvalidArgument: the idempotency key is not 1-255 printable ASCII characters.
            IdempotencyConflict: the key was used with a different body, or the
                request that used it first is still in progress.
        """
        _check_tenant(spec.tenant)
        if idempotency_key is None:
            return Submitted(task=await self._create(spec, new_task_id()), replayed=False)
        key = self.keys.idempotency(spec.tenant, _key_digest(idempotency_key))
        deadline = anyio.current_time() + REPLAY_WAIT_S
        while True:
            task_id = new_task_id()
            claimed = await self.store.call(
                self.store.redis.set(
                    key, f"{body_digest} {task_id}", nx=True, ex=self.idempotency_ttl_s
                )
            )
            if claimed:
                record = await self._create(spec, task_id, idempotency=key)
                return Submitted(task=record, replayed=False)
            replay = await self._replay(spec, key, body_digest, deadline)
            if replay is not None:
                return replay
            # The key vanished (it expired, or the first request failed and let go of it).
            if anyio.current_time() >= deadline:
                raise _in_progress()

    async def _replay(
        self, spec: TaskSpec, key: str, body_digest: str, deadline: float
    ) -> Submitted | None:
        """The task an existing idempotency key names; ``None`` if the key is gone."""
        while True:
            value = await self.store.call(self.store.redis.get(key))
            if value is None:
                return None
            stored_digest, _, task_id = text_of(value).rpartition(" ")
            if stored_digest != body_digest:
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request body"
                )
            with contextlib.suppress(TaskNotFound):
                return Submitted(task=await self.store.get_task(task_id), replayed=True)
            if _is_orphan(task_id):
                # The request that claimed the key died before creating its task. The
                # id is fixed by the key and creating a task by id happens at most once
                # (``TaskExists``), so creating it here cannot make a second task.
                return Submitted(task=await self._adopt(spec, task_id), replayed=True)
            if anyio.current_time() >= deadline:
                raise _in_progress()
            await anyio.sleep(REPLAY_POLL_S)

    async def _adopt(self, spec: TaskSpec, task_id: str) -> TaskRecord:
        """Create the task an orphaned idempotency key names, or read it if that raced."""
        try:
            return await self._create(spec, task_id)
        except TaskExists:
            return await self.store.get_task(task_id)

    async def _create(
        self, spec: TaskSpec, task_id: str, *, idempotency: str | None = None
    ) -> TaskRecord:
        """Create, index and queue the task (``Queue.submit``); undo the index on failure."""
        try:
            return await self.queue.submit(spec, task_id=task_id)
        except BaseException:
            # Also on cancellation: an idempotency key left pointing at a task that
            # never comes would answer "in progress" until it is an orphan.
            with anyio.CancelScope(shield=True):
                await self._forget(spec.tenant, task_id, idempotency)
            raise

    async def _forget(self, tenant: str, task_id: str, idempotency: str | None) -> None:
        """Drop the index entry (and idempotency key) of a task that was not created.

        Best effort: if Redis fails here too, the original error is the one to
        report; listings skip the entry and an orphaned key is adopted later.
        """
        with contextlib.suppress(StoreUnavailable):
            redis = self.store.redis
            if await self.store.call(redis.exists(self.keys.task(task_id))):
                return  # created after all (queueing failed): keep it findable
            await self.store.call(redis.zrem(self.keys.tenant_tasks(tenant), task_id))
            if idempotency is not None:
                await self.store.call(redis.delete(idempotency))

    # -- one task -------------------------------------------------------------------

    async def get(self, tenant: str, task_id: str) -> TaskRecord:
        """The record of one of ``tenant``'s tasks.

        Raises:
            InvalidTaskId: ``task_id`` is malformed.
            TaskNotFound: no such task, or it belongs to another tenant (the same error).
        """
        record = await self.store.get_task(task_id)
        if record.tenant != tenant:
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        return record

    async def cancel(self, tenant: str, task_id: str, *, reason: str | None = None) -> TaskRecord:
        """Cancel one of ``tenant``'s tasks and return its record after the request.

        Idempotent: a task that already finished (cancelled or not) is returned
        unchanged. A running task comes back still ``running`` with
        ``cancel_requested`` set; its worker writes ``canceled`` once it stopped.

        Raises:
            InvalidTaskId: ``task_id`` is malformed.
            TaskNotFound: no such task, or it belongs to another tenant (the same error).
            StaleHead: the task kept changing state under the call; try again.
        """
        record = await self.get(tenant, task_id)
        if record.state.terminal:
            return record
        with contextlib.suppress(TaskTerminal):
            await self.queue.cancel(task_id, reason=reason or "cancel requested")
        return await self.store.get_task(task_id)

    # -- listing --------------------------------------------------------------------

    async def list(
        self,
        tenant: str,
        *,
        state: TaskState | None = None,
        adapter: str | None = None,
        lane: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """A page of ``tenant``'s tasks, newest first, optionally filtered.

        One call looks at no more than ``max(limit * 10, 500)`` tasks, so with a
        selective filter a page may be shorter than ``limit``, even empty, while
        ``next_cursor`` is set: stop when ``next_cursor`` is ``None``, not when
        a page is short. Tasks created after the first page was read do not
        appear on later pages.

        Raises:
            InvalidArgument: ``limit`` is not between 1 and ``MAX_PAGE``.
            InvalidCursor: ``cursor`` is not a cursor this method returned.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}", limit=limit)
        if cursor is not None and (
            not isinstance(cursor, str) or TASK_ID_PATTERN.fullmatch(cursor) is None
        ):
            raise InvalidCursor(
                "malformed page cursor; pass back the next_cursor of an earlier page",
                cursor=str(cursor)[:80],
            )

        def wanted(record: TaskRecord) -> bool:
            return (
                record.tenant == tenant
                and (state is None or record.state is state)
                and (adapter is None or record.adapter == adapter)
                and (lane is None or record.lane == lane)
            )

        filtered = state is not None or adapter is not None or lane is not None
        budget = max(limit * 10, 500)
        index = self.keys.tenant_tasks(tenant)
        items: builtins.list[TaskRecord] = []
        scanned = 0
        last = cursor
        rounds = 0
        while True:
            need = limit - len(items)
            size = max(need, min(256, limit << rounds)) if filtered else need
            size = min(size, budget - scanned)
            rows = await self.store.call(
                self.store.redis.zrevrangebylex(
                    index, "+" if last is None else f"({last}", "-", start=0, num=size + 1
                )
            )
            ids = [text_of(row) for row in rows]
            more = len(ids) > size  # one id past this batch tells whether the index goes on
            batch = ids[:size]
            orphans = []
            for position, (task_id, record) in enumerate(
                zip(batch, await self._records(batch), strict=True)
            ):
                scanned += 1
                last = task_id
                if record is None:
                    if _is_orphan(task_id):
                        orphans.append(task_id)
                    continue
                if wanted(record):
                    items.append(record)
                    if len(items) == limit:
                        more = more or position < len(batch) - 1
                        break
            if orphans:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.call(self.store.redis.zrem(index, *orphans))
            if not more:
                return TaskPage(items=items, next_cursor=None)
            if len(items) == limit or scanned >= budget:
                return TaskPage(items=items, next_cursor=last)
            rounds += 1

    async def _records(self, task_ids: Sequence[str]) -> builtins.list[TaskRecord | None]:
        """The records of ``task_ids`` (``None`` where gone), with one pipeline of HGETALLs.

        Not a transaction: on Redis Cluster the pipeline is split by slot.
        """
        if not task_ids:
            return []
        pipe = self.store.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(self.keys.task(task_id))
        replies: builtins.list[Any] = await self.store.call(pipe.execute())
        return [
            TaskRecord.from_hash(task_id, fields) if fields else None
            for task_id, fields in zip(task_ids, replies, strict=True)
        ]


def _check_tenant(tenant: str) -> None:
    # The tenant becomes part of key names (and their hash tag) before the store
    # validates the rest of the spec, so it is checked first, the store's way.
    if not isinstance(tenant, str) or TENANT_PATTERN.fullmatch(tenant) is None:
        raise InvalidTaskSpec(
            "tenant must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'", field="tenant"
        )


def _key_digest(idempotency_key: str) -> str:
    """Hex SHA-256 of a valid idempotency key; the key itself is never stored."""
    if not isinstance(idempotency_key, str) or _IDEMPOTENCY_KEY.fullmatch(idempotency_key) is None:
        raise InvalidArgument("Idempotency-Key must be 1-255 printable ASCII characters")
    return hashlib.sha256(idempotency_key.encode("ascii")).hexdigest()


def _in_progress() -> IdempotencyConflict:
    return IdempotencyConflict("a request with this Idempotency-Key is still in progress")


def _is_orphan(task_id: str) -> bool:
    """True if ``task_id`` is a ``new_task_id`` older than ``ORPHAN_AFTER_MS``."""
    created = _id_ms(task_id)
    return created is not None and now_ms() - created > ORPHAN_AFTER_MS


def _id_ms(task_id: str) -> int | None:
    """The creation time (unix ms) in a ``new_task_id``; ``None`` for other ids."""
    if len(task_id) != 28 or not task_id.startswith("t_"):
        return None
    value = 0
    for char in task_id[2:12]:  # 10 base-32 digits: the 48-bit timestamp (top 2 bits zero)
        digit = _CROCKFORD_VALUE.get(char)
        if digit is None:
            return None
        value = value * 32 + digit
    return value
