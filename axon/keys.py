"""Every Redis key Axon uses, in one place.

All keys of one task share the hash tag ``{<task id>}``, so every per-task
script touches a single slot and runs unchanged on Redis Cluster. Task ids are
restricted to ``[A-Za-z0-9_-]`` so they can never contain a brace and break
the tag.
"""

from __future__ import annotations

import os
import re
import time

from axon.errors import InvalidTaskId

TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_task_id(now_ms: int | None = None) -> str:
    """A new task id: ``t_`` + a ULID (48-bit ms timestamp, 80 random bits).

    Ids sort by creation time, which keeps listings and key scans readable.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "t_" + "".join(reversed(chars))


def check_task_id(task_id: str) -> str:
    """Return ``task_id`` if well-formed, else raise ``InvalidTaskId``."""
    if not isinstance(task_id, str) or TASK_ID_PATTERN.fullmatch(task_id) is None:
        raise InvalidTaskId(
            "task ids are 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
            task_id=str(task_id)[:80],
        )
    return task_id


class KeySpace:
    """Key formats under one prefix (``Settings.key_prefix``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "axon") -> None:
        self.prefix = prefix

    def task(self, task_id: str) -> str:
        """Hash holding the task record: state, lease, head, counters."""
        return f"{self.prefix}:{{{task_id}}}:task"

    def events(self, task_id: str) -> str:
        """Stream holding the task's events; entry id ``<seq>-0``, fields ``k`` and ``e``."""
        return f"{self.prefix}:{{{task_id}}}:events"

    def merkle(self, task_id: str) -> str:
        """Hash of the task's Merkle tree state: ``size`` (leaves hashed so far) and the
        latest signed checkpoint (``cp_size``, ``cp_root``, ``cp_note``)."""
        return f"{self.prefix}:{{{task_id}}}:merkle"

    def tree_chunk(self, task_id: str, chunk: int) -> str:
        """String of 32-byte stored tree hashes ``chunk * TREE_CHUNK_HASHES ..`` (``axon.tree``)."""
        return f"{self.prefix}:{{{task_id}}}:tree:{chunk}"

    def snapshot(self, task_id: str) -> str:
        """String: the task's compaction snapshot (JSON, ``axon.snapshots.Snapshot``)."""
        return f"{self.prefix}:{{{task_id}}}:snapshot"

    def compact_lock(self, task_id: str) -> str:
        """String: the compactor replica currently compacting the task (with a TTL)."""
        return f"{self.prefix}:{{{task_id}}}:compacting"

    def compactor_stats(self) -> str:
        """Hash of compactor totals: tasks compacted, events archived, bytes freed."""
        return f"{self.prefix}:compactor:stats"

    # -- the queue: every key under one hash tag, so queue scripts are single-slot --

    @property
    def queue_tag(self) -> str:
        """Hash tag shared by all queue keys (lanes, in-flight set, delays, signal, DLQ)."""
        return f"{self.prefix}:{{{self.prefix}.queue}}"

    def lane(self, name: str) -> str:
        """List of task ids waiting in lane ``name`` (oldest first)."""
        return f"{self.queue_tag}:lane:{name}"

    def inflight(self) -> str:
        """Sorted set: task id -> lease deadline (ms) of every claimed task."""
        return f"{self.queue_tag}:inflight"

    def delayed(self) -> str:
        """Sorted set: ``<lane>|<task id>`` -> due time (ms) of retries waiting out a backoff."""
        return f"{self.queue_tag}:delayed"

    def signal(self) -> str:
        """Stream with one entry per enqueue: idle workers block on it to wake up."""
        return f"{self.queue_tag}:signal"

    def dlq(self) -> str:
        """Stream of dead letters: tasks that failed for good, with the reason."""
        return f"{self.queue_tag}:dlq"

    def finished(self) -> str:
        """Sorted set: task id -> time (ms) its worker let go of it; the compactor's to-do list."""
        return f"{self.queue_tag}:finished"

    def cancel_channel(self) -> str:
        """Pub/Sub channel carrying the ids of tasks whose cancellation was requested."""
        return f"{self.prefix}:cancel"

    def tail_channel(self, task_id: str) -> str:
        """Pub/Sub channel the append script notifies with the task's new head seq.

        The append script derives it from the task key (``...:task`` -> ``...:tail``),
        so the two formats must stay in step.
        """
        return f"{self.prefix}:{{{task_id}}}:tail"

    # -- tenants and API keys: small keys outside any task's slot --

    def tenant_tasks(self, tenant: str) -> str:
        """Sorted set of a tenant's task ids (score 0, ids sort by creation time)."""
        return f"{self.prefix}:tenant:{{{tenant}}}:tasks"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        """String: body digest and task id of an ``Idempotency-Key`` (by its SHA-256)."""
        return f"{self.prefix}:tenant:{{{tenant}}}:idem:{key_digest}"

    def mcp_session(self, session_id: str) -> str:
        """Stream of one MCP session's outgoing messages, for Streamable HTTP resumability;
        entry fields ``s`` (the SSE stream: a request id or the GET stream) and ``m``."""
        return f"{self.prefix}:mcp:{{{session_id}}}:events"

    def mcp_session_owner(self, session_id: str) -> str:
        """String naming the principal (tenant and key id) that opened the MCP session."""
        return f"{self.prefix}:mcp:{{{session_id}}}:owner"

    def api_key(self, key_id: str) -> str:
        """Hash of one API key: tenant, role, SHA-256 of the secret, timestamps."""
        return f"{self.prefix}:apikey:{key_id}"

    def api_keys(self) -> str:
        """Set of every API key id."""
        return f"{self.prefix}:apikeys"
