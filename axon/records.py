"""The task record and its state machine (pure; no I/O).

    queued ──► running ──► succeeded | failed | canceled | timed_out
      │  ▲        │
      │  └────────┘  (reclaimed / handed back / retried)
      └──► canceled  (cancelled before it ran)

Terminal states are final. The same table is compiled into the append script,
so the store enforces it atomically; ``check_transition`` is the same rule for
code that wants to fail early with a clear message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

from axon.errors import IllegalTransition, TaskTerminal


class TaskState(enum.StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """True for the four final states."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED, TaskState.TIMED_OUT}
)

TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELED}),
    TaskState.RUNNING: frozenset(
        {
            TaskState.QUEUED,
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.CANCELED,
            TaskState.TIMED_OUT,
        }
    ),
}
"""Allowed state changes; a state absent from the keys has no way out."""


def check_transition(current: TaskState, target: TaskState) -> None:
    """Raise unless ``current -> target`` is allowed.

    Raises:
        TaskTerminal: ``current`` is final.
        IllegalTransition: the state machine has no such edge.
    """
    if current in TERMINAL_STATES:
        raise TaskTerminal(
            f"task is already {current.value}; terminal states are final",
            state=current.value,
        )
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(
            f"a {current.value} task cannot become {target.value}",
            state=current.value,
            target=target.value,
        )


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a caller asks for when it creates a task."""

    tenant: str
    adapter: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    lane: str = "default"
    name: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_s: float | None = None
    max_attempts: int = 1
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 300.0


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A task as stored in its Redis hash; ``from_hash`` is the only decoder (``created``
    builds a new task's record without a read)."""

    id: str
    tenant: str
    adapter: str
    args: dict[str, Any]
    lane: str
    name: str | None
    metadata: dict[str, str]
    timeout_s: float | None
    max_attempts: int
    retry_backoff_s: float
    retry_backoff_max_s: float
    state: TaskState
    created_ms: int
    updated_ms: int
    started_ms: int | None
    finished_ms: int | None
    attempt: int
    epoch: int
    lease_owner: str | None
    lease_deadline_ms: int | None
    cancel_requested: bool
    cancel_reason: str | None = None
    traceparent: str | None = None
    """W3C trace context of the span that created the task (tracing on), so the
    worker's span joins the same trace."""
    wall_ms: int
    events: int
    event_bytes: int
    head_seq: int
    head_hash: str

    @classmethod
    def created(
        cls,
        task_id: str,
        spec: TaskSpec,
        *,
        args: bytes,
        metadata: bytes,
        ts: int,
        head_hash: str,
        event_bytes: int,
        traceparent: str | None,
    ) -> TaskRecord:
        """The record of a task just created from ``spec`` (whose args and metadata
        were stored as the JSON ``args`` / ``metadata``), without reading it back:
        equal to what ``from_hash`` makes of the hash the create script wrote."""
        return cls(
            id=task_id,
            tenant=spec.tenant,
            adapter=spec.adapter,
            args=_json_object.decode(args),
            lane=spec.lane,
            name=spec.name or None,
            metadata=_json_str_map.decode(metadata),
            timeout_s=None if spec.timeout_s is None else float(spec.timeout_s),
            max_attempts=int(spec.max_attempts),
            retry_backoff_s=float(spec.retry_backoff_s),
            retry_backoff_max_s=float(spec.retry_backoff_max_s),
            state=TaskState.QUEUED,
            created_ms=ts,
            updated_ms=ts,
            started_ms=None,
            finished_ms=None,
            attempt=0,
            epoch=0,
            lease_owner=None,
            lease_deadline_ms=None,
            cancel_requested=False,
            traceparent=traceparent or None,
            wall_ms=0,
            events=1,
            event_bytes=event_bytes,
            head_seq=1,
            head_hash=head_hash,
        )

    @classmethod
    def from_hash(cls, task_id: str, fields: Mapping[bytes, bytes]) -> TaskRecord:
        """Build a record from ``HGETALL`` output (bytes keys and values)."""
        f = {k.decode(): v for k, v in fields.items()}

        def text(name: str) -> str | None:
            raw = f.get(name)
            return raw.decode() if raw else None

        def num(name: str) -> int | None:
            raw = f.get(name)
            return int(raw) if raw else None

        def real(name: str) -> float | None:
            raw = f.get(name)
            return float(raw) if raw else None

        return cls(
            id=task_id,
            tenant=text("tenant") or "",
            adapter=text("adapter") or "",
            args=_json_object.decode(f.get("args") or b"{}"),
            lane=text("lane") or "default",
            name=text("name"),
            metadata=_json_str_map.decode(f.get("metadata") or b"{}"),
            timeout_s=real("timeout_s"),
            max_attempts=num("max_attempts") or 1,
            retry_backoff_s=real("retry_backoff_s") or 1.0,
            retry_backoff_max_s=real("retry_backoff_max_s") or 300.0,
            state=TaskState(text("state") or "queued"),
            created_ms=num("created_ms") or 0,
            updated_ms=num("updated_ms") or 0,
            started_ms=num("started_ms"),
            finished_ms=num("finished_ms"),
            attempt=num("attempt") or 0,
            epoch=num("epoch") or 0,
            lease_owner=text("lease_owner"),
            lease_deadline_ms=num("lease_deadline_ms"),
            cancel_requested=f.get("cancel_requested") == b"1",
            cancel_reason=text("cancel_reason"),
            traceparent=text("traceparent"),
            wall_ms=num("wall_ms") or 0,
            events=num("events") or 0,
            event_bytes=num("bytes") or 0,
            head_seq=num("head_seq") or 0,
            head_hash=text("head_hash") or "",
        )


_json_object = msgspec.json.Decoder(dict[str, Any])
_json_str_map = msgspec.json.Decoder(dict[str, str])
