"""The HTTP API's request and response bodies, as msgspec types.

Requests forbid unknown fields, so a typo (``timeout`` for ``timeout_s``) is a
422 rather than a silently ignored option. Every response field that may be
added later gets a default (msgspec "schema evolution"). ``/openapi.json`` is
generated from these same types, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from axon.records import TaskRecord, TaskState

Lane = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a lane name")]


class CreateTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/tasks``."""

    adapter: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=64, description="how the task runs: mock, shell, python, …"
        ),
    ]
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    lane: Lane | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)] | None = None
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class CancelTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Optional body of ``POST /v1/tasks/{id}/cancel``."""

    reason: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=500,
                description="why; it ends up in the task's canceled event",
            ),
        ]
        | None
    ) = None


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A task as the API shows it."""

    id: str
    state: TaskState
    adapter: str
    lane: str
    name: str | None = None
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_s: float | None = None
    attempt: int = 0
    max_attempts: int = 1
    cancel_requested: bool = False
    cancel_reason: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    last_seq: int = 0
    last_hash: str = ""
    events: int = 0
    event_bytes: int = 0
    stream_url: str = ""

    @classmethod
    def of(cls, record: TaskRecord) -> Task:
        """The API view of a stored record (tenant, lease and epoch are internal)."""
        return cls(
            id=record.id,
            state=record.state,
            adapter=record.adapter,
            lane=record.lane,
            name=record.name,
            args=record.args,
            metadata=record.metadata,
            timeout_s=record.timeout_s,
            attempt=record.attempt,
            max_attempts=record.max_attempts,
            cancel_requested=record.cancel_requested,
            cancel_reason=record.cancel_reason,
            created_ms=record.created_ms,
            updated_ms=record.updated_ms,
            started_ms=record.started_ms,
            finished_ms=record.finished_ms,
            last_seq=record.head_seq,
            last_hash=record.head_hash,
            events=record.events,
            event_bytes=record.event_bytes,
            stream_url=f"/v1/tasks/{record.id}/events",
        )


class TaskList(msgspec.Struct, frozen=True, kw_only=True):
    """A page of ``GET /v1/tasks``: newest first; continue with ``cursor=next_cursor``."""

    items: list[Task]
    next_cursor: str | None = None


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong: a stable ``code`` to switch on, a message for people, facts to act on."""

    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error response (contract 5)."""

    error: ErrorDetail


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``/healthz`` and ``/readyz``."""

    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


encoder = msgspec.json.Encoder()
create_task_decoder = msgspec.json.Decoder(CreateTask)
cancel_task_decoder = msgspec.json.Decoder(CancelTask)
