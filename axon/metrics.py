"""Prometheus metrics: every metric Axon exports, the hooks that move them, and
the ``/metrics`` endpoint of each process.

Two kinds of metric:

* **process metrics** — counters, gauges and histograms the code moves as
  things happen (requests, appends, cancels, compaction, Redis errors). They
  live in prometheus_client's default registry; with ``PROMETHEUS_MULTIPROC_DIR``
  set (several uvicorn worker processes) prometheus_client keeps them in files
  there and ``render`` merges every process's files.
* **deployment gauges** — queue depth and age per lane, tasks by state, the
  compaction backlog — read from Redis when scraped (one pipelined round trip
  for the queue keys, one for the lane heads), so they cost nothing between
  scrapes. Every endpoint reports the same values: aggregate them with
  ``max``, not ``sum``.

Hooks on hot paths (``observe_append``) do one counter increment and one
histogram observation per append *batch*, never a Redis call. Label values
are bounded: route templates (never raw paths), lane names from the settings,
task states; no tenant id or task id ever becomes a label. See
``docs/observability.md`` for the reference.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from axon import tracing
from axon._version import __version__
from axon.errors import AxonError, ConfigError
from axon.records import TERMINAL_STATES, TaskState

if TYPE_CHECKING:
    from axon.compactor import CompactionReport
    from axon.settings import Settings
    from axon.store import Store

_log = logging.getLogger("axon.metrics")

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds; from the append target (p99 <= 2 ms) to slow HTTP requests."""

COMPONENT: ContextVar[str] = ContextVar("axon_component", default="other")
"""Which part of the process runs the current code (``api``, ``worker``, ``compactor``),
for the ``component`` label of Redis errors; each service sets it in its own task."""

# -- HTTP (the API process) -----------------------------------------------------

HTTP_REQUESTS = Counter(
    "axon_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "axon_http_request_duration_seconds",
    "Seconds from a request's arrival to its response headers (for SSE: time to attach).",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
SSE_SUBSCRIBERS = Gauge(
    "axon_sse_subscribers",
    "Open SSE event streams (backfilling or live).",
    multiprocess_mode="livesum",
)

# -- tasks and events -----------------------------------------------------------

TASKS_CREATED = Counter("axon_tasks_created_total", "Tasks created (API, MCP or CLI).")
TASKS_FINISHED = Counter(
    "axon_tasks_finished_total",
    "Tasks that reached a terminal state, by state, counted by the process that wrote it.",
    ["state"],
)
EVENTS_APPENDED = Counter(
    "axon_events_appended_total", "Events appended to task logs (every kind, including state)."
)
APPEND_DURATION = Histogram(
    "axon_append_duration_seconds",
    "Seconds one append batch took (script call, lost-race retries, strict fsync wait); "
    "its _count is the number of batches.",
    buckets=LATENCY_BUCKETS,
)
LEASES_RECLAIMED = Counter(
    "axon_leases_reclaimed_total",
    "Expired leases a watchdog took over, by what it did with the task "
    "(requeued, failed: no attempts left, canceled: a cancel was pending).",
    ["outcome"],
)
CANCEL_DURATION = Histogram(
    "axon_cancel_duration_seconds",
    "Seconds from a worker learning of a cancel request to the task's canceled event.",
    buckets=LATENCY_BUCKETS,
)

# -- compaction -----------------------------------------------------------------

COMPACTION_TASKS = Counter("axon_compaction_tasks_total", "Task compactions committed.")
COMPACTION_EVENTS = Counter(
    "axon_compaction_events_archived_total", "Events moved from Redis into archive segments."
)
COMPACTION_BYTES = Counter(
    "axon_compaction_bytes_archived_total", "Event bytes written to archive segments."
)
COMPACTION_FREED = Counter(
    "axon_compaction_redis_bytes_freed_total", "Redis memory freed by trimming archived events."
)
COMPACTION_FAILURES = Counter(
    "axon_compaction_failures_total", "Task compactions that failed (retried next pass)."
)
COMPACTION_PASSES = Histogram(
    "axon_compaction_pass_duration_seconds",
    "Seconds per compaction pass; its _count is the number of passes.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)

# -- Redis ----------------------------------------------------------------------

REDIS_ERRORS = Counter(
    "axon_redis_errors_total",
    "Redis commands that failed (unreachable, timed out or refused), by component.",
    ["component"],
)

_FINISHED = {state: TASKS_FINISHED.labels(state=state.value) for state in TERMINAL_STATES}
_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


# -- hooks ------------------------------------------------------------------------


def set_component(name: str) -> None:
    """Label Redis errors of the current asyncio task (and those it starts) ``name``."""
    COMPONENT.set(name)


def redis_error() -> None:
    """Count a failed Redis command of the current component."""
    REDIS_ERRORS.labels(component=COMPONENT.get()).inc()


def task_created() -> None:
    """A task and its first event (``queued``) were written."""
    TASKS_CREATED.inc()
    EVENTS_APPENDED.inc()


def observe_append(
    task_id: str, first_seq: int, events: int, started_ns: int, to: TaskState | None
) -> None:
    """One append batch landed: ``events`` events from ``first_seq``, begun at
    ``started_ns`` (``time.perf_counter_ns``), ending the task if ``to`` is terminal."""
    elapsed = time.perf_counter_ns() - started_ns
    EVENTS_APPENDED.inc(events)
    APPEND_DURATION.observe(elapsed / 1e9)
    if to is not None and to in _FINISHED:
        _FINISHED[to].inc()
    if tracing.enabled():
        tracing.append_span(task_id, first_seq, events, elapsed, to.value if to else "")


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """One HTTP request answered."""
    labels = (method if method in _METHODS else "other", route, str(status))
    HTTP_REQUESTS.labels(*labels).inc()
    HTTP_DURATION.labels(*labels).observe(seconds)


def observe_cancel(since: float | None) -> None:
    """A run stopped for a cancel request ended in ``canceled``; ``since`` is the
    ``time.monotonic()`` at which the worker learned of the request."""
    if since is not None:
        CANCEL_DURATION.observe(max(0.0, time.monotonic() - since))


def observe_compaction(report: CompactionReport) -> None:
    """One compaction pass finished."""
    COMPACTION_TASKS.inc(report.tasks_compacted)
    COMPACTION_EVENTS.inc(report.events_archived)
    COMPACTION_BYTES.inc(report.bytes_archived)
    COMPACTION_FREED.inc(report.redis_bytes_freed)
    COMPACTION_FAILURES.inc(report.failed)
    COMPACTION_PASSES.observe(report.seconds)


# -- deployment gauges (read from Redis at scrape time) ---------------------------


class DeploymentSnapshot:
    """Queue and task gauges of the whole deployment, read from Redis by ``refresh``
    and served by ``collect`` (a prometheus_client custom collector)."""

    def __init__(self, lanes: tuple[str, ...]) -> None:
        self.lanes = lanes
        self.ok = False
        self.depth: dict[str, int] = {}
        self.oldest_age_s: dict[str, float] = {}
        self.delayed = 0
        self.inflight = 0
        self.compaction_pending = 0

    async def refresh(self, store: Store, *, timeout_s: float = 2.0) -> None:
        """Read the queue keys (two pipelined round trips); on failure ``ok`` is False
        and the gauges are left out of the exposition rather than reported stale."""
        self.ok = False
        with anyio.move_on_after(timeout_s):
            try:
                await self._read(store)
                self.ok = True
            except (AxonError, OSError) as exc:
                _log.warning("metrics: could not read the queue gauges from Redis: %s", exc)

    async def _read(self, store: Store) -> None:
        keys, redis = store.keys, store.redis
        async with redis.pipeline(transaction=False) as pipe:
            for lane in self.lanes:
                pipe.llen(keys.lane(lane))
                pipe.lindex(keys.lane(lane), 0)
            pipe.zcard(keys.delayed())
            pipe.zcard(keys.inflight())
            pipe.zcard(keys.finished())
            replies = await store.call(pipe.execute())
        heads: dict[str, str] = {}
        for i, lane in enumerate(self.lanes):
            self.depth[lane] = int(replies[2 * i])
            if replies[2 * i + 1] is not None:
                head = replies[2 * i + 1]
                heads[lane] = head.decode() if isinstance(head, bytes) else str(head)
        self.delayed, self.inflight, self.compaction_pending = (int(r) for r in replies[-3:])
        self.oldest_age_s = dict.fromkeys(self.lanes, 0.0)
        if heads:
            # A queued task's updated_ms is when it (re-)entered the queue: nothing
            # appends to a task while it waits.
            async with redis.pipeline(transaction=False) as pipe:
                for task_id in heads.values():
                    pipe.hget(keys.task(task_id), "updated_ms")
                stamps = await store.call(pipe.execute())
            now_ms = time.time() * 1000
            for lane, stamp in zip(heads, stamps, strict=True):
                if stamp is not None:
                    self.oldest_age_s[lane] = max(0.0, (now_ms - int(stamp)) / 1000)

    def collect(self) -> Iterator[Metric]:
        """The gauges of the last ``refresh`` (prometheus_client collector protocol)."""
        info = GaugeMetricFamily(
            "axon_build_info", "Axon version of this process.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "axon_redis_up",
            "1 if this scrape read the deployment gauges from Redis, else 0.",
            value=1 if self.ok else 0,
        )
        if not self.ok:
            return
        depth = GaugeMetricFamily(
            "axon_queue_depth", "Tasks waiting in each lane.", labels=["lane"]
        )
        age = GaugeMetricFamily(
            "axon_queue_oldest_age_seconds",
            "Seconds the task at the head of each lane has waited (0 when empty).",
            labels=["lane"],
        )
        for lane in self.lanes:
            depth.add_metric([lane], self.depth.get(lane, 0))
            age.add_metric([lane], self.oldest_age_s.get(lane, 0.0))
        yield depth
        yield age
        tasks = GaugeMetricFamily(
            "axon_tasks",
            "Unfinished tasks by state: queued (in a lane), delayed (waiting out a retry "
            "backoff), running (claimed, in the in-flight set). Finished tasks are counted "
            "by axon_tasks_finished_total.",
            labels=["state"],
        )
        tasks.add_metric(["queued"], sum(self.depth.values()))
        tasks.add_metric(["delayed"], self.delayed)
        tasks.add_metric(["running"], self.inflight)
        yield tasks
        yield GaugeMetricFamily(
            "axon_compaction_pending_tasks",
            "Finished tasks on the compactor's list (due or waiting out their retention).",
            value=self.compaction_pending,
        )


# -- exposition ---------------------------------------------------------------------


def multiprocess() -> bool:
    """Whether prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
    was set when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Exposition:
    """The collectors of one scrape: this process's (or every process's) metrics
    plus the deployment gauges."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


async def render(settings: Settings, store: Store | None) -> bytes:
    """The text exposition of this process (every process in multiprocess mode),
    with fresh deployment gauges when ``store`` is given."""
    base: Any = REGISTRY
    if multiprocess():
        base = CollectorRegistry()
        MultiProcessCollector(base)  # type: ignore[no-untyped-call]
    snapshot = DeploymentSnapshot(settings.lanes)
    if store is not None:
        await snapshot.refresh(store)
    return generate_latest(_Exposition(base, snapshot))


def metrics_route(settings: Settings, store_of: Callable[[Request], Store | None]) -> Route:
    """``GET /metrics``: the exposition, behind ``Authorization: Bearer
    <metrics_token>`` when a token is configured."""
    expected = (
        f"Bearer {settings.metrics_token}".encode() if settings.metrics_token is not None else None
    )

    async def endpoint(request: Request) -> Response:
        if expected is not None:
            presented = request.headers.get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(presented, expected):
                from axon.middleware import error_body  # avoids an import cycle

                return Response(
                    error_body("unauthenticated", "send 'Authorization: Bearer <metrics token>'"),
                    401,
                    headers={"www-authenticate": 'Bearer realm="axon-metrics"'},
                    media_type="application/json",
                )
        body = await render(settings, store_of(request))
        return Response(body, headers={"cache-control": "no-store"}, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", endpoint, methods=["GET"])


# -- the worker's and the compactor's own endpoint ------------------------------------


async def serve(
    settings: Settings,
    store: Store,
    *,
    port: int,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` (and ``GET /healthz``) on ``settings.metrics_host:port``
    until cancelled; reports the bound port to ``task_status`` (``port=0`` picks one).

    Raises:
        ConfigError: the address cannot be bound.
    """

    import uvicorn  # only processes that serve metrics need it

    class _Server(uvicorn.Server):
        """uvicorn without signal handlers of its own: the CLI handles signals."""

        def capture_signals(self) -> Any:
            return contextlib.nullcontext()

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = Starlette(routes=[metrics_route(settings, lambda _: store), Route("/healthz", healthz)])
    config = uvicorn.Config(
        app,
        host=settings.metrics_host,
        port=port,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    failed = anyio.Event()

    async def run_server() -> None:
        try:
            with anyio.CancelScope(shield=True):  # it stops when told to, not mid-request
                await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind
            pass
        failed.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run_server)
        try:
            with anyio.fail_after(30):
                while not server.started:
                    if failed.is_set():
                        raise ConfigError(
                            f"cannot serve metrics on {settings.metrics_host}:{port} "
                            "(address in use or not available)"
                        )
                    await anyio.sleep(0.01)
            bound = int(server.servers[0].sockets[0].getsockname()[1])
            task_status.started(bound)
            await anyio.sleep_forever()
        finally:
            server.should_exit = True
