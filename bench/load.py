"""Load benchmark: sustained mixed load on one machine, the figures of the k6 scripts.

One run starts everything it measures: an embedded Valkey (or ``--redis-url``), the
API server (``axon serve`` in a subprocess), ``--workers`` worker processes (``axon
worker``, the ``mock`` adapter) and an API key. Then, for ``--duration`` seconds:

- **starts** tasks through ``POST /v1/tasks`` at a steady rate (an open model, like
  k6's constant-arrival-rate executor: a slow answer does not slow the next start),
  and **follows** each one over SSE from seq 0 to its terminal event;
- keeps ``--subscribers`` **watchers** attached to ``--watched-tasks`` long-running
  tasks that tick once a second;
- every ``--kill-every`` seconds **SIGKILLs a worker** and starts a replacement: its
  tasks come back through lease expiry on another worker;
- every ``--storm-every`` seconds a **resume storm**: a share of the watchers drop
  their connections at once, and reconnect at once with ``Last-Event-ID``;
- every second, samples **memory and CPU**: RSS of the API and worker processes,
  Valkey's ``used_memory`` and RSS, this process.

Every stream checks each frame's seq: it must be the previous one + 1 (a lower one is a
duplicate, a higher one a gap). At the end the watched tasks are cancelled, every
stream must have reached its terminal event, and every started task must be in a
terminal state in Redis. Figures: error rate (target 0), p50/p99 of task start (POST),
time to first event, start -> claimed, end to end (POST sent -> terminal event
received), resume, and memory over time, plus a PNG of the run. Results go to
``bench/results/load-<UTC timestamp>.{json,md,png}`` and ``load-latest.*``;
``bench/README.md`` explains each figure, ``k6/README.md`` the k6 scripts that report
the same against a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import psutil  # type: ignore[import-untyped]
from anyio.abc import TaskGroup

from axon.apikeys import KeyStore, Role
from axon.connection import open_store
from axon.embedded import ServerProcess, valkey_binary
from axon.settings import Settings
from axon.store import Store

# isort: split
from common import (
    RESULTS_DIR,
    ROOT,
    arguments,
    cell,
    delete_matching,
    machine_info,
    metric,
    metrics_markdown,
    percentile,
    plain_client,
    progress,
    publish,
    report_of,
    run_prefix,
)
from sse_client import raise_fd_limit

TENANT = "load"
TERMINAL = frozenset({b"succeeded", b"failed", b"canceled", b"timed_out"})
TS = re.compile(rb'"ts":(\d+)')
TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled", "timed_out"})
MB = 1 << 20
POST_CONNECTIONS = 128
"""Connections the generator sends starts on (and starts it sends at once)."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one run does."""

    duration_s: float = 600.0
    rate: float = 170.0
    subscribers: int = 2000
    watched_tasks: int = 100
    watch_interval_ms: int = 1000
    workers: int = 2
    concurrency: int = 200
    ticks: int = 3
    tick_ms: int = 100
    kill_every_s: float = 60.0
    storm_every_s: float = 45.0
    storm_fraction: float = 0.5
    storm_offline_s: float = 1.0
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    watchdog_s: float = 1.0
    max_in_flight: int = 500
    attach_concurrency: int = 200
    drain_timeout_s: float = 60.0


DEFAULT_PLAN = Plan()
QUICK_PLAN = Plan(
    duration_s=40.0,
    rate=50.0,
    subscribers=500,
    watched_tasks=25,
    kill_every_s=13.0,
    storm_every_s=10.0,
    drain_timeout_s=30.0,
)


# -- processes we start ---------------------------------------------------------------


class Proc:
    """A subprocess we started: its log, its readiness line, its memory and CPU."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        self.ps: Any = None  # psutil.Process
        self.killed_at: float | None = None

    async def start(self, ready: re.Pattern[str], limit_s: float = 60.0) -> re.Match[str]:
        """Start it and wait until its output matches ``ready``."""
        self.spawn()
        deadline = time.monotonic() + limit_s
        while True:
            match = ready.search(self.output())
            if match:
                return match
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: {self.output()[-1500:]}")
            await anyio.sleep(0.05)

    def spawn(self) -> None:
        """Start the process, its output going to its log."""
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ps = psutil.Process(self.popen.pid)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def rss(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except (psutil.Error, AttributeError):
            return 0

    def cpu_s(self) -> float:
        try:
            times = self.ps.cpu_times()
        except (psutil.Error, AttributeError):
            return 0.0
        return float(times.user + times.system)

    def kill(self) -> None:
        """SIGKILL, as a crash would (the process only, not its group)."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    async def stop(self, limit_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of the whole group."""
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + limit_s
        while popen.poll() is None:
            if time.monotonic() > deadline:
                break
            await anyio.sleep(0.05)
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


def child_env(url: str, prefix: str, plan: Plan) -> dict[str, str]:
    """The environment of the API and worker processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXON_")}
    env.update(
        REDIS_URL=url,
        AXON_KEY_PREFIX=prefix,
        AXON_WORKER_CONCURRENCY=str(plan.concurrency),
        AXON_HEARTBEAT_INTERVAL_S=str(plan.heartbeat_s),
        AXON_LEASE_TIMEOUT_S=str(plan.lease_s),
        AXON_WATCHDOG_INTERVAL_S=str(plan.watchdog_s),
        PYTHONUNBUFFERED="1",
    )
    return env


API_READY = re.compile(r"listening on http://[^:\s]+:(\d+)")
WORKER_READY = re.compile(r"ready: lanes")


class Workers:
    """The worker processes: start, SIGKILL one, replace it."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[Proc] = []
        self.started = 0

    async def add(self) -> Proc:
        self.started += 1
        proc = Proc(
            f"worker-{self.started}",
            [sys.executable, "-m", "axon", "worker", "--id", f"load-w{self.started}"],
            self.env,
            self.logs / f"worker-{self.started}.log",
        )
        self.procs.append(proc)
        await proc.start(WORKER_READY)
        return proc

    def alive(self) -> list[Proc]:
        return [p for p in self.procs if p.alive()]

    async def stop_all(self) -> None:
        for proc in self.procs:
            await proc.stop()


# -- the SSE client ------------------------------------------------------------------


def stream_request(port: int, key: str, task: str, cursor: int | None) -> bytes:
    """GET of a task's event stream: from the beginning (``since_seq=0``), or resuming
    after ``cursor`` with ``Last-Event-ID`` as a browser's EventSource does."""
    path = f"/v1/tasks/{task}/events"
    lines = [
        f"GET {path}{'?since_seq=0' if cursor is None else ''} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream",
        f"Authorization: Bearer {key}",
    ]
    if cursor is not None:
        lines.append(f"Last-Event-ID: {cursor}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Stream(asyncio.Protocol):
    """One SSE connection: de-chunks the body, splits frames, tells its subscriber."""

    def __init__(self, sub: Subscriber, request: bytes) -> None:
        self.sub = sub
        sub.stream = self
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.in_body = False
        self.chunked = True
        self.raw = b""
        self.body = b""
        self.ended = False
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            header, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            status = header.split(b"\r\n", 1)[0]
            if not status.startswith(b"HTTP/1.1 200"):
                self.sub.on_http_error(f"{status.decode(errors='replace')} {data[:200]!r}")
                self.close()
                return
            self.chunked = b"transfer-encoding: chunked" in header.lower()
            self.in_body = True
        if self.chunked:
            data = self._dechunk(data)
        self.body += data
        end = self.body.rfind(b"\n\n")
        if end >= 0:
            complete, self.body = self.body[:end], self.body[end + 2 :]
            now = time.perf_counter()
            if not self.opened:
                self.opened = True
                self.sub.on_open(now)
            for frame in complete.split(b"\n\n"):
                if frame.startswith(b"id: "):
                    first = frame.index(b"\n")
                    second = frame.find(b"\n", first + 1)
                    kind = frame[first + 8 : second]  # after b"\nevent: "
                    if not self.sub.on_event(int(frame[4:first]), kind, now, frame):
                        self.close()  # the terminal event: nothing may follow it
                        return
                elif frame.startswith(b"event: axon."):
                    self.sub.on_control(frame[7 : frame.find(b"\n")].decode(errors="replace"))
        if self.ended:
            self.close()

    def _dechunk(self, data: bytes) -> bytes:
        buffer = self.raw + data if self.raw else data
        out: list[bytes] = []
        pos = 0
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buffer[pos:line_end].split(b";")[0], 16)
            if size == 0:
                self.ended = True
                pos = len(buffer)
                break
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            out.append(buffer[start : start + size])
            pos = start + size + 2
        self.raw = buffer[pos:]
        return b"".join(out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sub.on_closed(self)


class Subscriber:
    """Follows one task's events across reconnections; checks every seq."""

    def __init__(self, load: Load, task: str) -> None:
        self.load = load
        self.task = task
        self.last = 0
        self.done = False
        self.stream: Stream | None = None
        self.requested = 0.0
        self.resuming = False
        self.dropping = False
        self.failures = 0
        self.first_open = True

    async def connect(self) -> None:
        """Open (or reopen, after ``last``) the stream."""
        load = self.load
        cursor = self.last if self.last or self.resuming else None
        self.requested = time.perf_counter()
        load.sse_requests += 1
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: Stream(self, stream_request(load.port, load.key, self.task, cursor)),
                "127.0.0.1",
                load.port,
            )
        except OSError as exc:
            self.on_http_error(f"connect: {exc}")
            self.retry()

    def on_open(self, now: float) -> None:
        self.failures = 0
        if self.first_open:
            self.first_open = False
            self.load.record("first_byte_ms", (now - self.requested) * 1000, now)
        if self.resuming:
            self.resuming = False
            self.load.record("resume_ms", (now - self.requested) * 1000, now)

    def on_event(self, seq: int, kind: bytes, now: float, frame: bytes) -> bool:
        """An event frame; False after the terminal event (nothing may follow it)."""
        load = self.load
        load.events += 1
        if seq <= self.last:
            load.duplicates += 1
            return True
        if seq > self.last + 1:
            load.gaps += seq - self.last - 1
        self.last = seq
        if kind in TERMINAL:
            self.done = True
            stamp = TS.search(frame)
            if stamp is not None:
                load.record("terminal_delay_ms", time.time() * 1000 - int(stamp[1]), now)
            self.finished(kind, now)
            return False
        return True

    def finished(self, kind: bytes, now: float) -> None:
        """The terminal event arrived."""

    def on_control(self, kind: str) -> None:
        self.load.controls[kind] = self.load.controls.get(kind, 0) + 1

    def on_http_error(self, why: str) -> None:
        self.load.error("sse", why)
        self.failures += 1

    def on_closed(self, stream: Stream) -> None:
        if stream is not self.stream or self.dropping or self.done or self.load.closing:
            return
        # Ended without its terminal event (a control frame, an error, a server that went
        # away): reconnect after ``last`` like any SSE client, a little later each time.
        self.retry()

    def retry(self) -> None:
        """Reconnect soon, or give up after repeated failures."""
        self.load.reconnects += 1
        if self.failures > 5:
            self.load.error("sse", f"{self.task}: gave up after {self.failures} failures")
            self.done = True
            return
        delay = 0.2 * (1 + self.failures)
        self.load.group.start_soon(self._reconnect_later, delay)

    async def _reconnect_later(self, delay: float) -> None:
        await anyio.sleep(delay)
        await self.connect()


class Follower(Subscriber):
    """Follows one task it started, from seq 0 to its terminal event."""

    def __init__(self, load: Load, task: str, posted: float) -> None:
        super().__init__(load, task)
        self.posted = posted
        self.first = True
        self.claimed = False

    def on_event(self, seq: int, kind: bytes, now: float, frame: bytes) -> bool:
        load = self.load
        if self.first:
            self.first = False
            load.record("ttfe_ms", (now - self.requested) * 1000, now)
        if kind == b"claimed" and not self.claimed:
            self.claimed = True
            load.record("claimed_ms", (now - self.posted) * 1000, now)
        return super().on_event(seq, kind, now, frame)

    def finished(self, kind: bytes, now: float) -> None:
        load = self.load
        load.record("e2e_ms", (now - self.posted) * 1000, now)
        load.bucket(now)["completed"] += 1
        load.outcomes[kind.decode()] = load.outcomes.get(kind.decode(), 0) + 1
        load.following -= 1


class Watcher(Subscriber):
    """A long-lived subscriber of a watched task: dropped and resumed by the storms."""

    def finished(self, kind: bytes, now: float) -> None:
        self.load.watchers_done += 1

    def drop(self) -> None:
        """Cut the connection as a network failure would."""
        if self.stream is not None and self.stream.transport is not None:
            self.dropping = True
            self.stream.transport.abort()

    async def resume(self) -> None:
        self.dropping = False
        self.resuming = True
        await self.connect()


# -- the load ------------------------------------------------------------------------


SERIES = (
    "post_ms",
    "first_byte_ms",
    "ttfe_ms",
    "claimed_ms",
    "e2e_ms",
    "terminal_delay_ms",
    "resume_ms",
)
"""Latency series, milliseconds: task start (POST); SSE request -> first body bytes (the
``retry:`` line) and -> first event frame; POST sent -> ``claimed`` frame; POST sent ->
terminal frame; the terminal event's ``ts`` -> its frame read by a subscriber (wall
clocks, one machine); a storm's reconnect -> first body bytes."""


@dataclass
class Load:
    """Everything the load generator counts."""

    plan: Plan
    port: int
    key: str
    group: TaskGroup
    t0: float = 0.0
    buckets: dict[int, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SERIES})
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    controls: dict[str, int] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    followers: list[Follower] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)
    watched: list[str] = field(default_factory=list)
    posts: int = 0
    sse_requests: int = 0
    events: int = 0
    in_flight: int = 0
    following: int = 0
    dropped: int = 0
    late_starts: int = 0
    gaps: int = 0
    duplicates: int = 0
    reconnects: int = 0
    watchers_done: int = 0
    closing: bool = False
    post_gate: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(POST_CONNECTIONS))
    kills: list[dict[str, Any]] = field(default_factory=list)
    storms: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def bucket(self, now: float) -> dict[str, Any]:
        second = max(0, int(now - self.t0))
        found = self.buckets.get(second)
        if found is None:
            found = self.buckets[second] = {"started": 0, "completed": 0, "errors": 0}
            for name in SERIES:
                found[name] = []
        return found

    def record(self, series: str, value_ms: float, now: float) -> None:
        self.samples[series].append(value_ms)
        self.bucket(now)[series].append(value_ms)

    def error(self, kind: str, why: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.bucket(time.perf_counter())["errors"] += 1
        if len(self.error_samples) < 20:
            now = time.perf_counter()
            self.error_samples.append(f"t={self.at(now)} s {kind}: {why}"[:300])

    def at(self, now: float) -> float:
        return round(now - self.t0, 2)


async def start_task(
    load: Load, client: httpx.AsyncClient, body: dict[str, Any], due: float | None = None
) -> str | None:
    """One ``POST /v1/tasks``, timed from ``due`` (default: now); the task id, or None
    after counting the error. At most ``POST_CONNECTIONS`` are sent at once: the others
    wait here, not in httpx's pool, whose queue costs O(waiting x connections) per
    request and would make the generator the bottleneck."""
    sent = time.perf_counter() if due is None else due
    load.posts += 1
    try:
        async with load.post_gate:
            response = await client.post("/v1/tasks", json=body)
    except httpx.HTTPError as exc:
        load.error("post", f"{type(exc).__name__}: {exc}")
        return None
    now = time.perf_counter()
    if response.status_code != 201:
        load.error("post", f"{response.status_code} {response.text[:200]}")
        return None
    load.record("post_ms", (now - sent) * 1000, now)
    load.bucket(now)["started"] += 1
    task_id: str = response.json()["id"]
    load.started.append(task_id)
    return task_id


async def start_and_follow(load: Load, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    load.in_flight += 1
    posted = time.perf_counter()
    try:
        task_id = await start_task(load, client, body, due=posted)
    finally:
        load.in_flight -= 1
    if task_id is None:
        return
    follower = Follower(load, task_id, posted)
    load.followers.append(follower)
    load.following += 1
    await follower.connect()


async def starter(load: Load, client: httpx.AsyncClient) -> None:
    """Start tasks at ``rate`` for ``duration_s``: an open model; a start whose time
    comes while ``max_in_flight`` starts are pending is dropped (and counted)."""
    plan = load.plan
    body = {
        "adapter": "mock",
        "args": {"count": plan.ticks, "interval_ms": plan.tick_ms},
        "max_attempts": 5,
    }
    total = int(plan.rate * plan.duration_s)
    interval = 1.0 / plan.rate
    for i in range(total):
        due = load.t0 + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await anyio.sleep(delay)
        elif delay < -0.05:
            load.late_starts += 1
        if load.in_flight >= plan.max_in_flight:
            load.dropped += 1
            continue
        load.group.start_soon(start_and_follow, load, client, body)


async def killer(load: Load, workers: Workers) -> None:
    """Every ``kill_every_s``: SIGKILL a random worker, start a replacement."""
    plan = load.plan
    k = 1
    while k * plan.kill_every_s < plan.duration_s:
        await anyio.sleep(max(0.0, load.t0 + k * plan.kill_every_s - time.perf_counter()))
        k += 1
        alive = workers.alive()
        if not alive:
            continue
        victim = random.choice(alive)
        now = time.perf_counter()
        victim.kill()
        victim.killed_at = now
        progress(f"SIGKILLed {victim.name} (pid {victim.popen.pid if victim.popen else '?'})")
        replacement = await workers.add()
        load.kills.append(
            {
                "t_s": load.at(now),
                "worker": victim.name,
                "replacement": replacement.name,
                "replacement_ready_s": round(time.perf_counter() - now, 2),
            }
        )


async def storms(load: Load) -> None:
    """Every ``storm_every_s``: drop a share of the watchers at once, wait
    ``storm_offline_s``, reconnect them all at once with ``Last-Event-ID``."""
    plan = load.plan
    k = 1
    while plan.storm_every_s > 0 and k * plan.storm_every_s < plan.duration_s:
        await anyio.sleep(max(0.0, load.t0 + k * plan.storm_every_s - time.perf_counter()))
        k += 1
        live = [w for w in load.watchers if not w.done and w.stream is not None]
        victims = random.sample(live, int(len(live) * plan.storm_fraction))
        mark = len(load.samples["resume_ms"])
        errors0 = sum(load.errors.values())
        dups0, gaps0 = load.duplicates, load.gaps
        now = time.perf_counter()
        for watcher in victims:
            watcher.drop()
        await anyio.sleep(plan.storm_offline_s)
        async with anyio.create_task_group() as group:
            for watcher in victims:
                group.start_soon(watcher.resume)
        deadline = time.perf_counter() + 30
        while len(load.samples["resume_ms"]) - mark < len(victims):
            if time.perf_counter() > deadline:
                break
            await anyio.sleep(0.05)
        resumed = sorted(load.samples["resume_ms"][mark:])
        storm = {
            "t_s": load.at(now),
            "dropped": len(victims),
            "resumed": len(resumed),
            "resume_p50_ms": round(percentile(resumed, 0.5), 1) if resumed else None,
            "resume_p99_ms": round(percentile(resumed, 0.99), 1) if resumed else None,
            "resume_max_ms": round(resumed[-1], 1) if resumed else None,
            "errors": sum(load.errors.values()) - errors0,
            "new_duplicates": load.duplicates - dups0,
            "new_gaps": load.gaps - gaps0,
        }
        load.storms.append(storm)
        progress(
            f"resume storm: {storm['dropped']} dropped, {storm['resumed']} resumed, p50 "
            f"{storm['resume_p50_ms']} / p99 {storm['resume_p99_ms']} ms"
        )


async def sampler(load: Load, api: Proc, workers: Workers, store: Store, done: anyio.Event) -> None:
    """Once a second: memory and CPU of every process, what the load has open."""
    client = plain_client(store)
    valkey_pid = int((await client.info("server"))["process_id"])
    valkey = psutil.Process(valkey_pid)
    me = psutil.Process()

    def cpu_of(process: Any) -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def machine_busy() -> float:
        times = psutil.cpu_times()
        return float(times.user + times.nice + times.system + times.irq + times.softirq)

    def worker_cpu() -> float:
        return sum(p.cpu_s() for p in workers.procs if p.alive())

    last = {
        "api": api.cpu_s(),
        "workers": worker_cpu(),
        "valkey": cpu_of(valkey),
        "loadgen": cpu_of(me),
        "machine": machine_busy(),
    }
    last_t = time.perf_counter()
    last_workers = {p.name for p in workers.alive()}
    while not done.is_set():
        with anyio.move_on_after(1.0):
            await done.wait()
        now = time.perf_counter()
        memory: dict[str, Any] = await client.info("memory")
        alive = workers.alive()
        names = {p.name for p in alive}
        current = {
            "api": api.cpu_s(),
            "workers": worker_cpu(),
            "valkey": cpu_of(valkey),
            "loadgen": cpu_of(me),
            "machine": machine_busy(),
        }
        span = now - last_t
        cpu = {}
        for name, value in current.items():
            delta = value - last[name]
            if name == "workers" and names != last_workers:
                delta = max(0.0, delta)  # a worker died or joined: its total came or went
            cpu[name] = round(max(0.0, delta) / span, 3)
        cpu["other"] = round(
            max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine")), 3
        )
        last, last_t, last_workers = current, now, names
        try:
            valkey_rss = int(valkey.memory_info().rss)
        except psutil.Error:
            valkey_rss = 0
        load.timeline.append(
            {
                "t_s": load.at(now),
                "api_rss_mb": round(api.rss() / MB, 1),
                "workers_rss_mb": round(sum(p.rss() for p in alive) / MB, 1),
                "workers": len(alive),
                "valkey_used_mb": round(int(memory["used_memory"]) / MB, 1),
                "valkey_rss_mb": round(valkey_rss / MB, 1),
                "loadgen_rss_mb": round(int(me.memory_info().rss) / MB, 1),
                "cpu": cpu,
                "watchers_open": sum(
                    1
                    for w in load.watchers
                    if w.stream is not None and w.stream.opened and not w.done and not w.dropping
                ),
                "following": load.following,
                "in_flight_posts": load.in_flight,
                "started_total": len(load.started),
            }
        )


async def attach_watchers(load: Load, client: httpx.AsyncClient) -> None:
    """Start the watched tasks and attach the watchers (a few hundred at a time)."""
    plan = load.plan
    body = {
        "adapter": "mock",
        "args": {"forever": True, "interval_ms": plan.watch_interval_ms},
        "max_attempts": 100,
        "timeout_s": plan.duration_s + 3600,
        "name": "load-watched",
    }
    for _ in range(plan.watched_tasks):
        task_id = await start_task(load, client, body)
        if task_id is None:
            raise RuntimeError(f"could not start a watched task: {load.error_samples}")
        load.watched.append(task_id)
    load.started.clear()  # the flow's tasks only; watched tasks are checked apart
    load.watchers = [
        Watcher(load, load.watched[i % len(load.watched)]) for i in range(plan.subscribers)
    ]
    gate = anyio.Semaphore(plan.attach_concurrency)

    async def attach(watcher: Watcher) -> None:
        async with gate:
            await watcher.connect()
            deadline = time.perf_counter() + 30
            while watcher.stream is None or not watcher.stream.opened:
                if watcher.done or time.perf_counter() > deadline:
                    return
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        for watcher in load.watchers:
            group.start_soon(attach, watcher)


async def wait_until(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.perf_counter() + limit_s
    while not condition():
        if time.perf_counter() > deadline:
            return False
        await anyio.sleep(0.1)
    return True


async def final_states(store: Store, task_ids: list[str]) -> dict[str, str]:
    """Every task's state in Redis (one pipeline per 1,000 tasks)."""
    client = plain_client(store)
    states: dict[str, str] = {}
    for i in range(0, len(task_ids), 1000):
        chunk = task_ids[i : i + 1000]
        async with client.pipeline(transaction=False) as pipe:
            for task_id in chunk:
                pipe.hget(store.keys.task(task_id), "state")
            replies = await pipe.execute()
        for task_id, state in zip(chunk, replies, strict=True):
            states[task_id] = state.decode() if state else "missing"
    return states


# -- the run -------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "samples": len(ordered),
        "p50_ms": round(percentile(ordered, 0.5), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
    }


async def run(
    url: str, embedded: bool, plan: Plan, directory: Path, quick: bool
) -> tuple[dict[str, Any], Load]:
    started_utc = datetime.now(UTC).replace(microsecond=0)
    prefix = run_prefix()
    fd_limit = raise_fd_limit()
    settings = Settings(redis_url=url, key_prefix=prefix)
    env = child_env(url, prefix, plan)
    logs = directory / "logs"
    logs.mkdir()
    async with open_store(settings) as store:
        machine = await machine_info(
            store, embedded=embedded, open_file_limit=fd_limit, uvloop=True
        )
        key, _ = await KeyStore(store).create(TENANT, Role.WRITER, name="load bench")
        api = Proc(
            "api",
            [sys.executable, "-m", "axon", "serve", "--host", "127.0.0.1", "--port", "0"],
            env,
            logs / "api.log",
        )
        workers = Workers(env, logs)
        try:
            port = int((await api.start(API_READY))[1])
            for _ in range(plan.workers):
                await workers.add()
            progress(
                f"API on port {port}, {plan.workers} workers (concurrency {plan.concurrency}); "
                f"key prefix {prefix}"
            )
            load = await drive(plan, port, key, api, workers, store)
        finally:
            await workers.stop_all()
            await api.stop()
        states = await final_states(store, load.started + load.watched)
        if not embedded:
            deleted = await delete_matching(plain_client(store), f"{prefix}:*")
            progress(f"deleted this run's {deleted:,} keys")
    report = assemble(plan, load, states, started_utc, machine, quick)
    report["results"]["log_errors"] = log_errors(logs)
    return report, load


LOG_ERROR = re.compile(
    r'Traceback|"level": ?"(WARNING|ERROR|CRITICAL)"'
    r"|^(WARNING|ERROR|CRITICAL)\b|\b(ERROR|CRITICAL):"
)
"""A warning or an error: JSON log lines by level, plain ones by their prefix."""


def log_errors(logs: Path, limit: int = 40) -> list[str]:
    """Lines of the API's and workers' logs that look like errors (the logs themselves
    go away with the run's temporary directory)."""
    found: list[str] = []
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if LOG_ERROR.search(line) and len(found) < limit:
                found.append(f"{path.stem}: {line[:400]}")
    return found


async def drive(plan: Plan, port: int, key: str, api: Proc, workers: Workers, store: Store) -> Load:
    """The load itself: watchers, then starts, kills and storms for ``duration_s``."""
    # Idle connections are dropped after 2 s, before uvicorn's keep-alive timeout (5 s)
    # closes them: reusing one the server is closing is a client-side race (a ReadError
    # on a request the server may never have seen), not something the run measures.
    limits = httpx.Limits(
        max_connections=POST_CONNECTIONS,
        max_keepalive_connections=POST_CONNECTIONS,
        keepalive_expiry=2.0,
    )
    async with (
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            limits=limits,
            timeout=30.0,
        ) as client,
        anyio.create_task_group() as group,
    ):
        load = Load(plan=plan, port=port, key=key, group=group, t0=time.perf_counter())
        progress(f"attaching {plan.subscribers:,} watchers to {plan.watched_tasks} tasks ...")
        await attach_watchers(load, client)
        opened = sum(1 for w in load.watchers if w.stream is not None and w.stream.opened)
        progress(
            f"{opened:,} watchers attached; load for {plan.duration_s:g} s at "
            f"{plan.rate:g} starts/s"
        )
        load.t0 = time.perf_counter()
        load.buckets.clear()
        for series in load.samples.values():
            series.clear()
        sampling_done = anyio.Event()
        group.start_soon(sampler, load, api, workers, store, sampling_done)
        async with anyio.create_task_group() as phases:
            phases.start_soon(starter, load, client)
            phases.start_soon(killer, load, workers)
            phases.start_soon(storms, load)
            await anyio.sleep(plan.duration_s)
        progress(
            f"load phase over: {len(load.started):,} started; waiting for every follower "
            "to see its terminal event ..."
        )
        await wait_until(lambda: load.in_flight == 0, 60)
        complete = await wait_until(
            lambda: all(f.done for f in load.followers), plan.drain_timeout_s
        )
        if not complete:
            progress("drain timeout: some followers did not see a terminal event")
        for task_id in load.watched:
            try:
                response = await client.post(f"/v1/tasks/{task_id}/cancel")
                if response.status_code != 202:
                    load.error("cancel", f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                load.error("cancel", f"{type(exc).__name__}: {exc}")
        await wait_until(lambda: all(w.done for w in load.watchers), 30)
        sampling_done.set()
        load.closing = True
        for sub in [*load.followers, *load.watchers]:
            if sub.stream is not None:
                sub.stream.close()
        group.cancel_scope.cancel()
    return load


def assemble(
    plan: Plan,
    load: Load,
    states: dict[str, str],
    started_utc: datetime,
    machine: dict[str, Any],
    quick: bool,
) -> dict[str, Any]:
    """The report: totals, errors, latency summaries, kills, storms, the timeline."""
    flow = load.started
    by_state: dict[str, int] = {}
    for task_id in flow:
        by_state[states[task_id]] = by_state.get(states[task_id], 0) + 1
    lost = [t for t in flow if states[t] not in TERMINAL_STATES]
    not_succeeded = [t for t in flow if states[t] in TERMINAL_STATES and states[t] != "succeeded"]
    watched_states: dict[str, int] = {}
    for task_id in load.watched:
        watched_states[states[task_id]] = watched_states.get(states[task_id], 0) + 1
    watched_lost = [t for t in load.watched if states[t] not in TERMINAL_STATES]
    followers_incomplete = sum(1 for f in load.followers if not f.done)
    watchers_incomplete = sum(1 for w in load.watchers if not w.done)
    http_errors = sum(load.errors.values())
    errors = {
        "http": dict(load.errors),
        "http_total": http_errors,
        "gaps": load.gaps,
        "duplicates": load.duplicates,
        "lost_tasks": len(lost) + len(watched_lost),
        "tasks_not_succeeded": len(not_succeeded),
        "streams_without_terminal": followers_incomplete + watchers_incomplete,
        "samples": load.error_samples,
        "lost_sample": (lost + watched_lost)[:10],
    }
    error_count = (
        http_errors
        + load.gaps
        + load.duplicates
        + len(lost)
        + len(watched_lost)
        + len(not_succeeded)
        + followers_incomplete
        + watchers_incomplete
    )
    operations = load.posts + load.sse_requests
    duration = plan.duration_s
    timeline = []
    for row in load.timeline:
        bucket = load.buckets.get(int(row["t_s"]) - 1, {})
        entry = dict(row)
        entry["started"] = bucket.get("started", 0)
        entry["completed"] = bucket.get("completed", 0)
        entry["errors"] = bucket.get("errors", 0)
        for series in SERIES:
            values = sorted(bucket.get(series, []))
            entry[series] = (
                [round(percentile(values, 0.5), 2), round(percentile(values, 0.99), 2)]
                if values
                else None
            )
        timeline.append(entry)
    memory = {}
    for name in (
        "api_rss_mb",
        "workers_rss_mb",
        "valkey_used_mb",
        "valkey_rss_mb",
        "loadgen_rss_mb",
    ):
        values = [row[name] for row in load.timeline]
        if values:
            memory[name] = {"first": values[0], "max": max(values), "last": values[-1]}
    completed = sum(load.outcomes.values())
    width = 5 if duration >= 120 else 2
    results = {
        "totals": {
            "started": len(flow),
            "completed_seen": completed,
            "outcomes_seen": load.outcomes,
            "final_states": by_state,
            "watched_final_states": watched_states,
            "start_rate_per_s": round(len(flow) / duration, 1),
            "posts": load.posts,
            "sse_requests": load.sse_requests,
            "events_received": load.events,
            "dropped_starts": load.dropped,
            "late_starts": load.late_starts,
            "reconnects": load.reconnects,
            "control_frames": load.controls,
        },
        "errors": errors,
        "error_count": error_count,
        "error_rate": round(error_count / operations, 6) if operations else None,
        "latency": {series: summary(load.samples[series]) for series in SERIES},
        "memory": memory,
        "kills": load.kills,
        "storms": load.storms,
        "latency_windows": {"width_s": width, "windows": windows(load, width)},
        "timeline": timeline,
    }
    report = report_of(
        "load",
        started_utc,
        quick=quick,
        plan=asdict(plan),
        machine=machine,
        results=results,
    )
    report["metrics"] = metrics(report)
    return report


def metrics(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary table."""
    results, plan = report["results"], report["plan"]
    totals, errors, lat = results["totals"], results["errors"], results["latency"]
    memory = results["memory"]
    rows = [
        metric(
            "error rate (errors / requests)",
            results["error_rate"],
            None,
            "0",
            results["error_rate"] == 0,
        ),
        metric(
            "errors: HTTP / gaps / duplicates / lost tasks / not succeeded / streams cut",
            f"{errors['http_total']} / {errors['gaps']} / {errors['duplicates']} / "
            f"{errors['lost_tasks']} / {errors['tasks_not_succeeded']} / "
            f"{errors['streams_without_terminal']}",
            None,
            "all 0",
            results["error_count"] == 0,
        ),
        metric("tasks started (POST 201)", totals["started"], None, ""),
        metric("start rate achieved vs asked (tasks/s)", totals["start_rate_per_s"], plan["rate"]),
        metric(
            "starts dropped (generator at its in-flight cap)",
            totals["dropped_starts"],
            None,
            "0",
            totals["dropped_starts"] == 0,
        ),
    ]
    labels = {
        "post_ms": "task start, POST /v1/tasks (ms)",
        "first_byte_ms": "attach, SSE request -> first body bytes (ms)",
        "ttfe_ms": "time to first event, SSE request -> first event frame (ms)",
        "claimed_ms": "start -> claimed event received (ms)",
        "e2e_ms": f"end to end, POST sent -> terminal event received (ms; {plan['ticks']} "
        f"ticks x {plan['tick_ms']} ms of work)",
        "terminal_delay_ms": "terminal event ts -> its frame at a subscriber (ms, 1 ms clock)",
        "resume_ms": "resume, reconnect with Last-Event-ID -> stream open (ms)",
    }
    for series, label in labels.items():
        s = lat[series]
        rows.append(metric(f"{label} p50", s["p50_ms"]))
        rows.append(metric(f"{label} p99", s["p99_ms"]))
    names = {
        "api_rss_mb": "API process RSS (MB)",
        "workers_rss_mb": "worker processes' RSS, all (MB)",
        "valkey_used_mb": "Valkey used_memory (MB)",
    }
    for name, label in names.items():
        m = memory.get(name)
        if m:
            rows.append(
                metric(f"{label}: first / max / last", f"{m['first']} / {m['max']} / {m['last']}")
            )
    return rows


def markdown(report: dict[str, Any], png: str) -> str:
    results, plan, machine = report["results"], report["plan"], report["machine"]
    totals = results["totals"]
    where = "embedded, started by the bench" if machine["embedded"] else "external"
    lines = [
        f"# Load benchmark, {report['started_utc']}",
        "",
        f"Server {machine['server']} {machine['server_version']} ({where}); Python "
        f"{machine['python']}; {machine['cpu_count']} CPUs; axon {machine['axon']} (git "
        f"{machine['git']}); {'quick' if report['quick'] else 'default'} run, "
        f"{report['duration_s']:.0f} s in all; load average at start {machine['loadavg']}.",
        f"Command: `{report.get('command', 'python bench/load.py')}`.",
        "",
        f"Plan: {plan['duration_s']:g} s at {plan['rate']:g} starts/s (`mock`, "
        f"{plan['ticks']} ticks x {plan['tick_ms']} ms); {plan['subscribers']:,} watchers on "
        f"{plan['watched_tasks']} tasks ticking every {plan['watch_interval_ms']} ms; "
        f"{plan['workers']} workers x concurrency {plan['concurrency']} (heartbeat "
        f"{plan['heartbeat_s']} s, lease {plan['lease_s']} s); a worker SIGKILLed every "
        f"{plan['kill_every_s']:g} s; a resume storm ({plan['storm_fraction']:.0%} of the "
        f"watchers, {plan['storm_offline_s']:g} s offline) every {plan['storm_every_s']:g} s.",
        "",
        *metrics_markdown(report["metrics"]),
        "",
        f"- Final states of the started tasks (Redis): {totals['final_states']}; watched "
        f"tasks: {totals['watched_final_states']}.",
        f"- Requests: {totals['posts']:,} POSTs, {totals['sse_requests']:,} SSE requests, "
        f"{totals['events_received']:,} event frames received; "
        f"{totals['reconnects']} unplanned reconnects; control frames "
        f"{totals['control_frames'] or 'none'}; {totals['late_starts']} starts more than "
        "50 ms late.",
    ]
    valkey = results["memory"].get("valkey_used_mb")
    if valkey and totals["started"]:
        grown = (
            (valkey["last"] - valkey["first"]) * MB / (totals["started"] + plan["watched_tasks"])
        )
        lines.append(
            f"- Valkey's used_memory grew {valkey['last'] - valkey['first']:.1f} MB over the "
            f"load: {grown / 1024:.1f} KB per task started (its record, events and tree stay "
            "in Redis: no compactor runs here)."
        )
    for kill in results["kills"]:
        lines.append(
            f"- t={kill['t_s']} s: SIGKILL {kill['worker']}; {kill['replacement']} ready "
            f"{kill['replacement_ready_s']} s later."
        )
    for storm in results["storms"]:
        lines.append(
            f"- t={storm['t_s']} s: resume storm, {storm['dropped']} dropped, "
            f"{storm['resumed']} resumed: p50 {cell(storm['resume_p50_ms'])} / p99 "
            f"{cell(storm['resume_p99_ms'])} / max {cell(storm['resume_max_ms'])} ms; errors "
            f"{storm['errors']}, gaps {storm['new_gaps']}, duplicates "
            f"{storm['new_duplicates']}."
        )
    if results["errors"]["samples"]:
        lines.append(f"- Error samples: {results['errors']['samples'][:5]}")
    if results.get("log_errors"):
        lines.append(
            f"- {len(results['log_errors'])} error-like lines in the API's and workers' logs "
            f"(in the JSON); the first: `{results['log_errors'][0][:200]}`"
        )
    cpu = [row["cpu"] for row in results["timeline"]]
    if cpu:
        shares = {k: round(sum(c[k] for c in cpu) / len(cpu), 2) for k in cpu[0]}
        lines.append(
            f"- Mean CPU, in cores: API {shares['api']}, workers {shares['workers']}, Valkey "
            f"{shares['valkey']}, this load generator {shares['loadgen']}, everything else on "
            f"the machine {shares['other']} (of {machine['cpu_count']}). Absolute figures "
            "from a shared machine are noisy; the error counts are the point."
        )
    lines += ["", f"![the run]({png})", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput, latencies, memory and CPU over time; worker kills and storms marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, plan = report["results"], report["plan"]
    rows = results["timeline"]
    t = [row["t_s"] for row in rows]
    fig, axes = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    ax = axes[0]
    ax.plot(t, [row["started"] for row in rows], label="started/s", lw=1)
    ax.plot(t, [row["completed"] for row in rows], label="completed/s", lw=1)
    ax.axhline(plan["rate"], color="grey", ls=":", lw=1, label="asked")
    errs = [(row["t_s"], row["errors"]) for row in rows if row["errors"]]
    if errs:
        ax.scatter(
            [e[0] for e in errs],
            [e[1] for e in errs],
            color="red",
            s=12,
            label="errors/s",
            zorder=3,
        )
    ax.set_ylabel("tasks/s")
    ax.set_title(
        f"axon load: {plan['rate']:g} starts/s, {plan['subscribers']:,} watchers, "
        f"{plan['workers']} workers ({report['started_utc']})"
    )
    ax = axes[1]
    window = results["latency_windows"]["width_s"]
    styles = {"post_ms": "POST", "ttfe_ms": "first event", "e2e_ms": "end to end"}
    buckets = results["latency_windows"]["windows"]
    for series, label in styles.items():
        points = [(w["t_s"], w[series]) for w in buckets if w[series] is not None]
        if points:
            line = ax.plot(
                [p[0] for p in points], [p[1][1] for p in points], lw=1, label=f"{label} p99"
            )[0]
            ax.plot(
                [p[0] for p in points],
                [p[1][0] for p in points],
                lw=1,
                ls="--",
                color=line.get_color(),
                label=f"{label} p50",
            )
    storms = results["storms"]
    if storms:
        ax.scatter(
            [s["t_s"] for s in storms],
            [s["resume_p99_ms"] or 0 for s in storms],
            marker="^",
            color="purple",
            label="resume p99 (storm)",
            zorder=3,
        )
    ax.set_yscale("log")
    ax.set_ylabel(f"ms (per {window} s)")
    ax = axes[2]
    for name, label in (
        ("api_rss_mb", "API RSS"),
        ("workers_rss_mb", "workers RSS (all)"),
        ("valkey_used_mb", "Valkey used_memory"),
        ("loadgen_rss_mb", "load generator RSS"),
    ):
        ax.plot(t, [row[name] for row in rows], label=label, lw=1)
    ax.set_ylabel("MB")
    ax = axes[3]
    for name in ("api", "workers", "valkey", "loadgen", "other"):
        ax.plot(t, [row["cpu"][name] for row in rows], label=name, lw=1)
    ax.set_ylabel("CPU (cores)")
    ax.set_xlabel("seconds into the load")
    for i, ax in enumerate(axes):
        for kill in results["kills"]:
            ax.axvline(
                kill["t_s"],
                color="red",
                ls="--",
                lw=0.8,
                label="worker SIGKILL" if kill is results["kills"][0] else None,
            )
        for storm in storms:
            ax.axvline(
                storm["t_s"],
                color="purple",
                ls=":",
                lw=0.8,
                label="resume storm" if storm is storms[0] and i != 1 else None,
            )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def windows(load: Load, width: int) -> list[dict[str, Any]]:
    """p50/p99 of each latency series per ``width`` seconds of the load (``t_s`` is the
    window's end), from every sample that fell into the window."""
    last = max(load.buckets, default=-1)
    out = []
    for start in range(0, last + 1, width):
        entry: dict[str, Any] = {"t_s": start + width}
        for series in SERIES:
            values = sorted(
                v
                for s in range(start, start + width)
                for v in load.buckets.get(s, {}).get(series, [])
            )
            entry[series] = (
                [round(percentile(values, 0.5), 2), round(percentile(values, 0.99), 2)]
                if values
                else None
            )
        out.append(entry)
    return out


def rate_of(text: str) -> float:
    """``170``, ``170/s`` or ``10200/min``: tasks per second."""
    value, _, unit = text.partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0}.get(unit)
    if per is None:
        raise ValueError(f"bad rate {text!r}")
    rate = float(value) / per
    if rate <= 0:
        raise ValueError("the rate must be positive")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = arguments("Load benchmark (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="a run of about 60 s")
    parser.add_argument("--duration", type=float, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=rate_of, help="task starts per second, e.g. 170/s")
    parser.add_argument("--subscribers", type=int, help="watchers kept attached (2000)")
    parser.add_argument("--watched-tasks", type=int, help="tasks the watchers follow (100)")
    parser.add_argument("--workers", type=int, help="worker processes (2)")
    parser.add_argument("--concurrency", type=int, help="tasks per worker at once (200)")
    parser.add_argument("--ticks", type=int, help="tick events per started task (3)")
    parser.add_argument("--tick-ms", type=int, help="pause before each tick (100 ms)")
    parser.add_argument(
        "--kill-every", type=float, help="SIGKILL a worker every N s (60; 0: never)"
    )
    parser.add_argument("--storm-every", type=float, help="resume storm every N s (45; 0: never)")
    parser.add_argument("--storm-fraction", type=float, help="share of watchers dropped (0.5)")
    parser.add_argument("--lease", type=float, help="worker lease timeout, s (10)")
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    overrides = {
        "duration_s": args.duration,
        "rate": args.rate,
        "subscribers": args.subscribers,
        "watched_tasks": args.watched_tasks,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "ticks": args.ticks,
        "tick_ms": args.tick_ms,
        "kill_every_s": args.kill_every,
        "storm_every_s": args.storm_every,
        "storm_fraction": args.storm_fraction,
        "lease_s": args.lease,
    }
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if args.lease is not None:
        plan = replace(plan, heartbeat_s=plan.lease_s / 5, watchdog_s=plan.lease_s / 10)
    if plan.kill_every_s <= 0:
        plan = replace(plan, kill_every_s=plan.duration_s + 1)
    if plan.workers < 1 or plan.watched_tasks < 1 or plan.subscribers < 0:
        parser.error("--workers and --watched-tasks must be positive")

    with tempfile.TemporaryDirectory(prefix="axon-bench-load-") as tmp:
        directory = Path(tmp)
        server: ServerProcess | None = None
        if args.redis_url:
            url = args.redis_url
        else:
            server = ServerProcess(
                valkey_binary(), directory / "valkey", args=["--appendonly", "no"]
            )
            progress(f"starting embedded valkey-server on port {server.port} ...")
            server.start()
            url = server.url
        try:
            report, _load = anyio.run(
                run,
                url,
                server is not None,
                plan,
                directory,
                args.quick,
                backend="asyncio",
                backend_options={"use_uvloop": True},
            )
        finally:
            if server is not None:
                server.stop()
                progress("embedded server stopped")
    report["command"] = " ".join(["python", "bench/load.py", *(argv or sys.argv[1:])])
    stamp = report["started_utc"].replace("-", "").replace(":", "")
    png = RESULTS_DIR / f"load-{stamp}.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(report, png)
    shutil.copyfile(png, RESULTS_DIR / "load-latest.png")
    publish("load", report, markdown(report, png.name))
    progress(f"wrote {png}")
    return 0 if report["results"]["error_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
