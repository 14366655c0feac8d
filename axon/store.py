"""The task store: task records and their event logs in Redis.

This is the only module that talks to Redis about tasks. It runs the Lua
scripts that create tasks and append batches, reads events by seq, and waits
for new ones. It never builds event bytes itself for appends: those come
ready-made from the writer (``axon.writer``), so bytes are produced once and
stored exactly as built.

Entry ids of a task's stream are ``<seq>-0``, so "every event after seq N" is
one ``XRANGE key N+1 +`` and a live tail is one ``XREAD ... N-0``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from axon import lua, metrics, tracing
from axon.archive import Archive, decode_segment, open_archive
from axon.autopipeline import AutoPipelines
from axon.chain import ChainHead
from axon.errors import (
    ArchiveUnavailable,
    DurabilityTimeout,
    DurabilityUnsupported,
    EventsUnavailable,
    Fenced,
    IllegalTransition,
    InvalidEvent,
    InvalidTaskSpec,
    LeaseLive,
    StaleHead,
    StoreUnavailable,
    TaskExists,
    TaskNotFound,
    TaskTerminal,
)
from axon.events import GENESIS_HASH, build_event, encode_data, event_hash, kind_of
from axon.keys import KeySpace, check_task_id, new_task_id
from axon.records import TaskRecord, TaskSpec, TaskState
from axon.settings import Settings
from axon.snapshots import Snapshot, decode_snapshot

RedisClient = Redis | RedisCluster

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
TENANT_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
CANCEL_REASON_MAX = 500
"""Characters of a cancel reason kept on the record (longer ones are cut)."""

MUTABLE_FIELDS = frozenset(
    {
        "lease_owner",
        "lease_deadline_ms",
        "attempt",
        "cancel_requested",
        "cancel_reason",
        "error",
        "wall_ms",
    }
)
"""Record fields a transition may set; state, epoch, head and counters move only by script."""


class StoredEvent:
    """One event as stored: its seq and its exact bytes; its kind on demand.

    Reading the kind out of the bytes costs about a microsecond, so a page read
    does not pay it for consumers that never look (verification, export); the
    first ``.kind`` computes and keeps it.
    """

    __slots__ = ("_kind", "raw", "seq")

    def __init__(self, seq: int, raw: bytes, kind: str | None = None) -> None:
        self.seq = seq
        self.raw = raw
        self._kind = kind

    @property
    def kind(self) -> str:
        """The event's ``kind``."""
        if self._kind is None:
            self._kind = kind_of(self.raw)
        return self._kind

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return self.seq == other.seq and self.raw == other.raw

    def __hash__(self) -> int:
        return hash((self.seq, self.raw))

    def __repr__(self) -> str:
        return f"StoredEvent(seq={self.seq}, kind={self.kind!r}, raw=<{len(self.raw)} bytes>)"


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """A state change written in the same script as the batch that carries it.

    Attributes:
        to: the target state; the state machine decides whether it is allowed.
        new_epoch: a new fencing token (must be higher), e.g. when a worker claims.
        fields: record fields to set (empty string deletes), from ``MUTABLE_FIELDS``.
        lease_expired_before: only if the task's lease deadline is earlier than this
            (unix ms); otherwise ``LeaseLive``. How a watchdog takes over safely.
        release: with a terminal ``to``, on a single server (``Store.one_server``),
            also take the task out of the in-flight set and list it for the
            compactor in the same script (what ``Queue.release`` does); ignored on
            a cluster, where the caller releases it afterwards.
    """

    to: TaskState
    new_epoch: int | None = None
    fields: dict[str, str] = msgspec.field(default_factory=dict)
    lease_expired_before: int | None = None
    release: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.fields) - MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"transition cannot set record fields {sorted(unknown)}")


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the CLI and strict durability need to know about the server."""

    server: str
    version: str
    aof_enabled: bool
    waitaof: bool


def now_ms() -> int:
    """Wall-clock unix milliseconds, the ``ts`` of events and record timestamps."""
    return time.time_ns() // 1_000_000


def text_of(value: Any) -> str:
    """A Redis reply value as text (clients keep replies as bytes for the event bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """Task records and event logs on one Redis server or Redis Cluster.

    Args:
        redis: client for ordinary commands (``decode_responses`` must be off).
        settings: limits, key prefix and durability mode.
        blocking: client for blocking reads; by default ``redis``. Give it its own
            pool in servers, so a parked ``XREAD`` never holds a connection an
            ordinary command waits for.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        settings: Settings,
        blocking: RedisClient | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.redis = redis
        self.blocking = blocking if blocking is not None else redis
        self.settings = settings
        self.archive: Archive = (
            archive if archive is not None else open_archive(settings.archive_path())
        )
        self.keys = KeySpace(settings.key_prefix)
        self._cluster = isinstance(redis, RedisCluster)
        # Concurrent commands share round trips on a single server (axon.autopipeline).
        self._pipe = None if isinstance(redis, RedisCluster) else AutoPipelines(redis)

    # -- task records -------------------------------------------------------

    async def create_task(
        self, spec: TaskSpec, *, task_id: str | None = None, lane_key: str | None = None
    ) -> TaskRecord:
        """Create a queued task and append its first event, ``queued``, atomically.

        With ``lane_key`` (single server only: ``one_server``), the same
        script also lists the task for its tenant and pushes it onto that lane,
        waking idle workers: a whole submit in one round trip.

        Raises:
            InvalidTaskSpec: tenant, adapter, lane, args or metadata are malformed.
            TaskExists: ``task_id`` is taken.
        """
        task_id = new_task_id() if task_id is None else check_task_id(task_id)
        check_spec(spec)
        limit = self.settings.max_event_bytes
        try:
            args = encode_data(spec.args, max_bytes=limit)
        except InvalidEvent as exc:
            raise InvalidTaskSpec(f"args: {exc.message}", field="args", **exc.details) from None
        try:
            metadata = encode_data(spec.metadata, max_bytes=limit)
        except InvalidEvent as exc:
            raise InvalidTaskSpec(
                f"metadata: {exc.message}", field="metadata", **exc.details
            ) from None
        ts = now_ms()
        first = {"adapter": spec.adapter, "lane": spec.lane, "attempt": 0}
        if spec.name is not None:
            first["name"] = spec.name
        raw = build_event(
            task=task_id,
            seq=1,
            prev=GENESIS_HASH,
            ts=ts,
            kind="queued",
            data=encode_data(first, max_bytes=limit),
            max_bytes=limit,
        )
        fields: list[Any] = [
            "tenant", spec.tenant, "adapter", spec.adapter, "args", args,
            "lane", spec.lane, "metadata", metadata,
            "max_attempts", spec.max_attempts,
            "retry_backoff_s", repr(spec.retry_backoff_s),
            "retry_backoff_max_s", repr(spec.retry_backoff_max_s),
        ]  # fmt: skip
        if spec.name is not None:
            fields += ["name", spec.name]
        if spec.timeout_s is not None:
            fields += ["timeout_s", repr(spec.timeout_s)]
        traceparent = tracing.current_traceparent()  # None unless tracing is on
        if traceparent is not None:
            fields += ["traceparent", traceparent]
        keys = [self.keys.task(task_id), self.keys.events(task_id)]
        if lane_key is not None:
            if self._cluster:
                raise ValueError("a cluster cannot create and enqueue in one script")
            keys += [self.keys.tenant_tasks(spec.tenant), lane_key, self.keys.signal()]
        digest = event_hash(raw)
        reply = await self.run_script(lua.CREATE, keys, [task_id, raw, digest, ts, *fields])
        if text_of(reply[0]) == "exists":
            raise TaskExists(f"task {task_id} already exists", task_id=task_id)
        metrics.task_created()
        # The script wrote exactly these fields; build the record here rather than
        # spend a round trip reading it back.
        return TaskRecord.created(
            task_id,
            spec,
            args=args,
            metadata=metadata,
            ts=ts,
            head_hash=digest,
            event_bytes=len(raw),
            traceparent=traceparent,
        )

    async def get_task(self, task_id: str) -> TaskRecord:
        """The task's current record.

        Raises:
            TaskNotFound: no such task.
        """
        check_task_id(task_id)
        fields = await self.call(self.command("HGETALL", self.keys.task(task_id)))
        if not fields:
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        return TaskRecord.from_hash(task_id, fields)

    async def head(self, task_id: str) -> ChainHead:
        """The last seq of the task's log and the hash of that event's bytes.

        Raises:
            TaskNotFound: no such task.
        """
        check_task_id(task_id)
        seq, digest = await self.call(
            self.command("HMGET", self.keys.task(task_id), "head_seq", "head_hash")
        )
        if seq is None:
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        return ChainHead(seq=int(seq), hash=text_of(digest))

    async def request_cancel(self, task_id: str, *, reason: str | None = None) -> TaskState:
        """Raise the task's cancel flag and return the state it had.

        ``reason`` is kept on the record (the first one given) for the worker's
        ``canceled`` event.

        Raises:
            TaskNotFound: no such task.
            TaskTerminal: the task already finished; nothing to cancel.
        """
        check_task_id(task_id)
        reply = await self.run_script(
            lua.CANCEL, [self.keys.task(task_id)], [now_ms(), (reason or "")[:CANCEL_REASON_MAX]]
        )
        status = text_of(reply[0])
        if status == "not_found":
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        if status == "terminal":
            state = text_of(reply[1])
            raise TaskTerminal(f"task {task_id} already {state}", task_id=task_id, state=state)
        return TaskState(text_of(reply[1]))

    # -- appending ----------------------------------------------------------

    async def append_built(
        self,
        task_id: str,
        events: Sequence[tuple[str, bytes]],
        *,
        expected: ChainHead,
        epoch: int,
        transition: Transition | None = None,
        last_hash: str | None = None,
    ) -> ChainHead:
        """Append ready-built events (kind, bytes) after ``expected``, all or nothing.

        The bytes must continue the chain from ``expected``; the writer
        guarantees that (and may pass ``last_hash``, the hash of the last event's
        bytes, which it computed while chaining them). Returns the new head once
        Redis applied the batch (and, in strict durability, once the AOF fsync was
        confirmed).

        Raises:
            StaleHead: the log's head is not ``expected`` (details: ``head_seq``, ``head_hash``).
            Fenced: ``epoch`` is not the task's current epoch.
            TaskTerminal: the task already finished.
            IllegalTransition: the state machine forbids ``transition``.
            TaskNotFound: no such task.
            DurabilityUnsupported / DurabilityTimeout: strict mode could not confirm the fsync.
        """
        if not events:
            raise ValueError("append_built needs at least one event")
        new_hash = event_hash(events[-1][1]) if last_hash is None else last_hash
        args: list[Any] = [expected.seq, expected.hash, epoch, new_hash]
        if transition is None:
            args += ["", "", now_ms(), "", 0]
        else:
            epoch_arg = "" if transition.new_epoch is None else transition.new_epoch
            guard = transition.lease_expired_before
            args += [
                transition.to.value,
                epoch_arg,
                now_ms(),
                "" if guard is None else guard,
                len(transition.fields),
            ]
            for name, value in transition.fields.items():
                args += [name, value]
        for kind, raw in events:
            args += [kind, raw]
        keys = [self.keys.task(task_id), self.keys.events(task_id)]
        if transition is not None and transition.release and not self._cluster:
            keys += [self.keys.inflight(), self.keys.finished()]
        reply = await self.run_script(lua.APPEND, keys, args)
        status = text_of(reply[0])
        if status == "ok":
            return ChainHead(seq=int(reply[1]), hash=new_hash)
        raise _append_error(task_id, status, reply, epoch=epoch, expected=expected)

    # -- reading ------------------------------------------------------------

    async def read(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` events with seq > ``after_seq``, in order: one range read.

        An empty list means the reader is caught up with the head. Events the
        compactor moved out of Redis come from the archive, and a page that
        starts there continues in Redis.

        Raises:
            TaskNotFound: no such task.
            EventsUnavailable: events right after ``after_seq`` are neither in Redis
                nor in the archive.
            ArchiveUnavailable: the archive that holds them cannot be read.
        """
        check_task_id(task_id)
        if after_seq < 0 or limit < 1:
            raise ValueError("after_seq must be >= 0 and limit >= 1")
        key = self.keys.events(task_id)
        events = parse_entries(
            await self.call(self.redis.xrange(key, min=f"{after_seq + 1}-0", count=limit))
        )
        if not events:
            # Caught up, or was everything after the cursor trimmed? The head says;
            # but an append may land between the two reads, so read the range again
            # once the head is known: events up to that head exist unless trimmed.
            head = await self.head(task_id)
            if head.seq <= after_seq:
                return []
            events = parse_entries(
                await self.call(self.redis.xrange(key, min=f"{after_seq + 1}-0", count=limit))
            )
            if not events:
                archived = await self._read_archived(task_id, after_seq, limit)
                if archived:
                    return archived
                raise EventsUnavailable(
                    f"events after seq {after_seq} of task {task_id} are not in Redis",
                    task_id=task_id,
                    after_seq=after_seq,
                    head_seq=head.seq,
                )
        if events[0].seq != after_seq + 1:
            archived = await self._read_archived(task_id, after_seq, limit)
            if archived:
                return archived
            raise EventsUnavailable(
                f"events {after_seq + 1}..{events[0].seq - 1} of task {task_id} are not in Redis",
                task_id=task_id,
                after_seq=after_seq,
                first_available=events[0].seq,
            )
        return events

    async def snapshot(self, task_id: str) -> Snapshot | None:
        """The task's compaction snapshot, or None if nothing was compacted yet.

        Raises:
            ArchiveUnavailable: the stored record is not a snapshot (corrupted).
        """
        raw = await self.call(self.redis.get(self.keys.snapshot(check_task_id(task_id))))
        if raw is None:
            return None
        try:
            return decode_snapshot(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ArchiveUnavailable(
                f"the snapshot record of task {task_id} is corrupted: {exc}", task_id=task_id
            ) from None

    async def _read_archived(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[StoredEvent] | None:
        """Events ``after_seq + 1 ..`` from archive segments (at most ``limit``), or None
        when the snapshot does not cover ``after_seq + 1``."""
        snapshot = await self.snapshot(task_id)
        if snapshot is None or after_seq >= snapshot.archived_to:
            return None
        events: list[StoredEvent] = []
        seq = after_seq + 1
        while len(events) < limit and seq <= snapshot.archived_to:
            segment = snapshot.segment_for(seq)
            if segment is None:
                raise ArchiveUnavailable(
                    f"the snapshot of task {task_id} lists no segment holding seq {seq}",
                    task_id=task_id,
                    seq=seq,
                )
            lines = decode_segment(await self.archive.get(segment.ref))
            if len(lines) != segment.last - segment.first + 1:
                raise ArchiveUnavailable(
                    f"archive segment {segment.ref} holds {len(lines)} events, "
                    f"not {segment.last - segment.first + 1}",
                    ref=segment.ref,
                )
            offset = seq - segment.first
            take = lines[offset : offset + limit - len(events)]
            if not take:  # a segment shorter than its snapshot entry says (checked above)
                raise ArchiveUnavailable(
                    f"archive segment {segment.ref} does not hold seq {seq}", ref=segment.ref
                )
            events.extend(StoredEvent(seq + i, raw) for i, raw in enumerate(take))
            seq += len(take)
        if len(events) < limit:  # fill the page from Redis: a short page means "caught up"
            events += await self.read(
                task_id, after_seq=snapshot.archived_to, limit=limit - len(events)
            )
        return events

    async def read_raw(self, task_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[bytes]:
        """Like ``read``, but only the bytes of events ``after_seq + 1 ..`` in order.

        For readers that stream pages out (SSE backfill, export) and have no use
        for an object per event.
        """
        check_task_id(task_id)
        if after_seq < 0 or limit < 1:
            raise ValueError("after_seq must be >= 0 and limit >= 1")
        rows = await self.call(
            self.redis.xrange(self.keys.events(task_id), min=f"{after_seq + 1}-0", count=limit)
        )
        if rows:
            first, last = _entry_seq(rows[0][0]), _entry_seq(rows[-1][0])
            if first == after_seq + 1 and last - first + 1 == len(rows):
                return [
                    fields[b"e"] if isinstance(fields, dict) else fields[1] for _, fields in rows
                ]
        return [event.raw for event in await self.read(task_id, after_seq=after_seq, limit=limit)]

    async def iter_events(
        self, task_id: str, *, after_seq: int = 0, page_size: int = 1000
    ) -> AsyncIterator[StoredEvent]:
        """Every event after ``after_seq`` up to the current head, a page at a time."""
        while True:
            page = await self.read(task_id, after_seq=after_seq, limit=page_size)
            for event in page:
                yield event
            if len(page) < page_size:
                return
            after_seq = page[-1].seq

    async def wait_events(
        self, task_id: str, *, after_seq: int, timeout_ms: int, limit: int = 1000
    ) -> list[StoredEvent]:
        """Block until events with seq > ``after_seq`` exist (or the timeout passes).

        Returns them (up to ``limit``), or an empty list on timeout. Runs on the
        blocking client. It does not detect trimmed events; follow up with
        ``read`` when the first seq returned is not ``after_seq + 1``.
        """
        check_task_id(task_id)
        key = self.keys.events(task_id)
        reply = await self.call(
            self.blocking.xread({key: f"{after_seq}-0"}, count=limit, block=max(timeout_ms, 1))
        )
        return parse_entries(xread_entries(reply))

    # -- server -------------------------------------------------------------

    async def server_info(self) -> ServerInfo:
        """Server flavour and version, whether AOF is on, and whether WAITAOF exists."""
        info: dict[str, Any] = await self.call(self.redis.info("server"))
        persistence: dict[str, Any] = await self.call(self.redis.info("persistence"))
        if self._cluster:  # RedisCluster answers {node: {...}} ... or a merged dict
            info = _first_node(info)
            persistence = _first_node(persistence)
        server = "valkey" if "valkey_version" in info else "redis"
        version = str(info.get("valkey_version") or info.get("redis_version") or "")
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2]) or (0, 0)
        return ServerInfo(
            server=server,
            version=version,
            aof_enabled=bool(int(persistence.get("aof_enabled", 0))),
            waitaof=server == "valkey" or parts >= (7, 2),
        )

    async def load_scripts(self) -> None:
        """Load every Lua script into the script cache (every primary of a cluster).

        Scripts also load themselves on first use; doing it up front makes a
        server that refuses scripts (ACLs, a replica) fail readiness instead of
        the first request.
        """
        for script in lua.ALL:
            await self.call(self.redis.script_load(script.source))

    # -- plumbing -----------------------------------------------------------

    async def call(self, awaitable: Any) -> Any:
        """Await a Redis call, turning Redis failures into ``StoreUnavailable``.

        That covers an unreachable server and one that refuses the command
        (OOM under noeviction, READONLY after a failover, MISCONF, LOADING, …).
        """
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError) as exc:
            metrics.redis_error()
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        except ResponseError as exc:
            metrics.redis_error()
            raise StoreUnavailable(f"Redis refused the command: {exc}") from exc

    def pipeline_statistics(self) -> tuple[int, int] | None:
        """(pipelines, commands) sent by auto-pipelining so far; None on a cluster."""
        return None if self._pipe is None else self._pipe.statistics()

    @property
    def one_server(self) -> bool:
        """Whether every key is on one server (not a cluster), so one script may touch a
        task's keys and the queue's: ``create_task`` can enqueue, a terminal transition
        can release."""
        return not self._cluster

    def command(self, *args: Any) -> Any:
        """One command (``"HGETALL", key``), as an awaitable for ``call``.

        On a single server it is auto-pipelined with the commands other tasks issue
        at the same moment (``axon.autopipeline``); on a cluster it is sent alone.
        """
        if self._pipe is not None:
            return self._pipe.execute(*args)
        return self.redis.execute_command(*args)

    async def _run(self, script: lua.Script, keys: list[str], args: list[Any]) -> Any:
        pipe = self._pipe
        if pipe is None:
            return await self.call(script.run(self.redis, keys, args))
        try:
            return await self.call(pipe.execute("EVALSHA", *script.evalsha_args(keys, args)))
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, NoScriptError):
                raise
        return await self.call(pipe.execute("EVAL", *script.eval_args(keys, args)))

    async def run_script(self, script: lua.Script, keys: list[str], args: list[Any]) -> Any:
        """Run a script that writes, honouring the durability mode."""
        if self.settings.durability == "strict":
            return await self._run_strict(script, keys, args)
        return await self._run(script, keys, args)

    async def _run_strict(self, script: lua.Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` and WAITAOF on the same connection, so the wait covers the write."""
        settings = self.settings
        waitaof = ("WAITAOF", 1, settings.durability_replicas, settings.durability_timeout_ms)
        reply, waited = await self.call(self._pipeline_on_key(keys[0], script, keys, args, waitaof))
        if isinstance(reply, Exception):
            raise StoreUnavailable(f"Redis refused the command: {reply}") from reply
        if isinstance(waited, ResponseError):
            raise DurabilityUnsupported(
                f"strict durability needs WAITAOF and appendonly enabled: {waited} "
                "(the events were appended but their fsync is unconfirmed)",
                server_error=str(waited),
                appended=text_of(reply[0]) == "ok",
            )
        local, replicas = int(waited[0]), int(waited[1])
        if local < 1 or replicas < settings.durability_replicas:
            raise DurabilityTimeout(
                f"fsync not confirmed within {settings.durability_timeout_ms} ms "
                f"(local {local}/1, replicas {replicas}/{settings.durability_replicas}); "
                "the events were appended",
                local=local,
                replicas=replicas,
            )
        return reply

    async def _pipeline_on_key(
        self, key: str, script: lua.Script, keys: list[str], args: list[Any], tail: tuple[Any, ...]
    ) -> tuple[Any, Any]:
        for use_sha in (True, False):
            head = (
                ("EVALSHA", *script.evalsha_args(keys, args))
                if use_sha
                else ("EVAL", *script.eval_args(keys, args))
            )
            if isinstance(self.redis, RedisCluster):
                node = self.redis.get_node_from_key(key)
                if node is None:
                    raise StoreUnavailable(f"no cluster node serves key {key}")
                commands = [PipelineCommand(0, *head), PipelineCommand(1, *tail)]
                await node.execute_pipeline(commands)
                results = [c.result for c in commands]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.execute_command(*head)
                    pipe.execute_command(*tail)
                    results = await pipe.execute(raise_on_error=False)
            if isinstance(results[0], NoScriptError):
                continue
            return results[0], results[1]
        raise StoreUnavailable("script could not be loaded")  # pragma: no cover


def check_spec(spec: TaskSpec) -> None:
    """Raise ``InvalidTaskSpec`` unless tenant, adapter, lane and the numbers are well-formed."""
    if TENANT_PATTERN.fullmatch(spec.tenant) is None:
        raise InvalidTaskSpec("tenant must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    for what, value in (("adapter", spec.adapter), ("lane", spec.lane)):
        if NAME_PATTERN.fullmatch(value) is None:
            raise InvalidTaskSpec(
                f"{what} must be 1-64 characters of a-z, 0-9, '_', '.', '-', "
                "starting with a letter",
                field=what,
            )
    if spec.name is not None and not 0 < len(spec.name) <= 200:
        raise InvalidTaskSpec("name must be 1-200 characters", field="name")
    if spec.max_attempts < 1:
        raise InvalidTaskSpec("max_attempts must be at least 1", field="max_attempts")
    if spec.timeout_s is not None and not 0 < spec.timeout_s < 10**7:
        raise InvalidTaskSpec("timeout_s must be positive", field="timeout_s")
    if not 0 < spec.retry_backoff_s <= spec.retry_backoff_max_s < 10**7:
        raise InvalidTaskSpec(
            "retry backoff must satisfy 0 < retry_backoff_s <= retry_backoff_max_s",
            field="retry_backoff_s",
        )


def xread_entries(reply: Any) -> list[Any]:
    """The entries of a one-stream ``XREAD`` reply, whatever shape redis-py gives it.

    RESP2 raw or parsed: ``[[key, entries]]``; RESP3: ``{key: entries}`` (parsed:
    ``{key: [entries]}``); nothing on timeout.
    """
    if not reply:
        return []
    if isinstance(reply, dict):
        entries = next(iter(reply.values()))
        if entries and isinstance(entries[0], list) and isinstance(entries[0][0], list):
            entries = entries[0]
        return list(entries)
    return list(reply[0][1])


def parse_entries(rows: Any) -> list[StoredEvent]:
    """Stream entries to events; takes raw replies (``[id, [b"e", bytes]]``, as our
    own clients return them) and redis-py's parsed ones (``(id, {b"e": bytes})``)."""
    if not rows:
        return []
    raws = [fields[b"e"] if isinstance(fields, dict) else fields[1] for _, fields in rows]
    first, last = _entry_seq(rows[0][0]), _entry_seq(rows[-1][0])
    if last - first + 1 == len(rows):  # ids rise strictly, so these are exactly contiguous
        seqs: Any = range(first, last + 1)
    else:
        seqs = [_entry_seq(entry_id) for entry_id, _ in rows]
    return [StoredEvent(seq, raw) for seq, raw in zip(seqs, raws, strict=True)]


def _entry_seq(entry_id: bytes) -> int:
    return int(entry_id[: entry_id.index(b"-")])


def _first_node(info: dict[str, Any]) -> dict[str, Any]:
    values = list(info.values())
    if values and all(isinstance(v, dict) for v in values):
        return dict(values[0])
    return info


def _append_error(
    task_id: str, status: str, reply: Any, *, epoch: int, expected: ChainHead
) -> Exception:
    if status == "stale":
        seq, digest = int(reply[1]), text_of(reply[2])
        return StaleHead(
            f"task {task_id} head is seq {seq}, not the expected {expected.seq}",
            task_id=task_id,
            head_seq=seq,
            head_hash=digest,
        )
    if status == "fenced":
        current = int(reply[1])
        return Fenced(
            f"task {task_id} is at epoch {current}; a writer at epoch {epoch} lost its lease",
            task_id=task_id,
            epoch=epoch,
            current_epoch=current,
        )
    if status == "terminal":
        state = text_of(reply[1])
        return TaskTerminal(f"task {task_id} already {state}", task_id=task_id, state=state)
    if status == "not_found":
        return TaskNotFound(f"task {task_id} not found", task_id=task_id)
    if status == "lease_live":
        deadline = int(reply[1])
        return LeaseLive(
            f"task {task_id} lease is live until {deadline}", task_id=task_id, deadline_ms=deadline
        )
    if status == "illegal":
        state, target = text_of(reply[1]), text_of(reply[2])
        return IllegalTransition(
            f"a {state} task cannot become {target}", task_id=task_id, state=state, target=target
        )
    return InvalidEvent(f"batch rejected: {text_of(reply[1])}", task_id=task_id)
