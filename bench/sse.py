"""SSE benchmark: Axon's shared live tails against one blocking XREAD per subscriber.

One run, one Valkey, and for each subscriber count N (1k, 5k, 10k by default):

(1) live fan-out: an API process (``axon serve``, then the naive server of
    ``bench/naive_sse.py`` as the reference) with N SSE subscribers spread over M
    tasks, attached at the head; then one load phase per rate, in which a producer
    appends at a steady aggregate rate, stamping ``t_ns`` into each event right
    before the append, and the load clients (``bench/sse_client.py``, a few
    processes) note the arrival of every frame. Reported per phase: append ->
    client latency p50/p99/max, delivered/expected, CPU; per scenario: the API
    process's RSS per subscriber and the Redis connections it holds;
(2) attach: with 1,000 subscribers attached, new connections one at a time
    (connect -> first byte, -> first event frame), then a burst opened at once;
(3) backfill: one task of 100,000 events read by one SSE client from seq 0,
    against paging the same stream with raw ``XRANGE``.

``bench/README.md`` explains each measurement. Results go to
``bench/results/sse-<UTC timestamp>.{json,md}`` and ``sse-latest.{json,md}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import psutil  # type: ignore[import-untyped]

from axon.apikeys import KeyStore, Role
from axon.connection import connect, open_store
from axon.embedded import ServerProcess, valkey_binary
from axon.events import GENESIS_HASH, build_event, encode_data
from axon.keys import new_task_id
from axon.records import TaskSpec
from axon.settings import Settings
from axon.store import Store, now_ms
from axon.writer import EventWriter

# isort: split
import sse_client
from common import (
    arguments,
    at_least,
    at_most,
    cell,
    delete_matching,
    machine_cpu_s,
    machine_info,
    metric,
    metrics_markdown,
    package_version,
    percentile,
    plain_client,
    progress,
    publish,
    ratio,
    read_raw,
    report_of,
    run_prefix,
    sample_server,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TENANT = "bench"
EVENT_KIND = "tick"
EVENTS_PATH = "/v1/tasks/{task}/events?since_seq={since}"
READ_PAGE = 1000

TARGET_P99_1K_MS = 25.0
TARGET_P99_10K_MS = 100.0
"""PRODUCT.md: emit -> SSE client latency p99 <= 25 ms at 1,000 subscribers, <= 100 ms at 10,000."""
TARGET_KB_PER_SUBSCRIBER = 30.0
TARGET_LIVE_SUBSCRIBERS = 10_000
TARGET_TAIL_CONNECTIONS = 1
"""PRODUCT.md: 10,000 live subscribers per API process at <= 30 KB each, one Redis
connection for all live tails."""
TARGET_BACKFILL_RATIO = 0.5
TARGET_ATTACH_P95_MS = 50.0
"""PRODUCT.md: backfill to one SSE client >= 0.5 x raw XRANGE; attach (first byte) p95 <= 50 ms."""

SINGLE_TASK_MAX = 1000
"""The one-task shape (every subscriber gets every event) runs at the smallest count if
it is at most this: at 10 events/s that is up to 10,000 frames/s from one process."""
FD_RESERVE = 256
"""File descriptors a process needs besides its sockets to clients and to Redis."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one run does."""

    subscribers: tuple[int, ...] = (1000, 5000, 10_000)
    tasks: int = 100
    rates: tuple[float, ...] = (20.0, 100.0)
    single_task: bool = True
    single_task_rates: tuple[float, ...] = (2.0, 10.0)
    duration_s: float = 15.0
    workers: int = 2
    concurrency: int = 16
    burst: int = 500
    attach_probes: int = 200
    attach_at: int = 1000
    backfill_events: int = 100_000
    backfill_passes: int = 3
    payload: int = 256
    drain_timeout_s: float = 20.0
    gc_stats: bool = False


DEFAULT_PLAN = Plan()
QUICK_PLAN = Plan(
    subscribers=(1000,),
    rates=(100.0,),
    single_task=False,
    duration_s=5.0,
    attach_probes=50,
    backfill_events=20_000,
    backfill_passes=2,
)


def fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    return sse_client.raise_fd_limit()


# -- the servers under test ----------------------------------------------------------


class ApiProcess:
    """An API server process we started: ``axon serve`` or the naive reference."""

    def __init__(
        self, kind: str, url: str, prefix: str, directory: Path, *, gc_stats: bool = False
    ) -> None:
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self.log_path = directory / f"{kind}-{time.monotonic_ns()}.log"
        self.gc_path = self.log_path.with_suffix(".gc.json") if gc_stats else None
        self.popen: subprocess.Popen[bytes] | None = None
        self.process: Any = None  # psutil.Process
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start it and wait for its "listening on" line."""
        if self.kind == "axon":
            argv = [sys.executable, "-m", "axon", "serve", "--host", "127.0.0.1", "--port", "0"]
        else:
            argv = [sys.executable, str(BENCH / "naive_sse.py"), "--port", "0"]
        if self.gc_path is not None:
            argv = [sys.executable, __file__, GC_WRAP, str(self.gc_path), *argv[1:]]
        self._spawn(argv)
        pattern = re.compile(r"listening on http://[^:]+:(\d+)")
        deadline = time.monotonic() + timeout_s
        while True:
            match = pattern.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match[1])
                break
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server did not start: {self.log_tail()}")
            await anyio.sleep(0.05)
        self.process = psutil.Process(self.pid)

    def _spawn(self, argv: list[str]) -> None:
        env = dict(os.environ, REDIS_URL=self.url, AXON_KEY_PREFIX=self.prefix)
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def gc_stats(self) -> dict[str, Any] | None:
        """The server's garbage-collection counters (only with ``--gc-stats``)."""
        if self.gc_path is None:
            return None
        try:
            stats: dict[str, Any] = json.loads(self.gc_path.read_text())
        except (OSError, ValueError):
            return None
        return stats

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def rss_kb(self) -> float:
        return float(self.process.memory_info().rss) / 1024

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def redis_connections(self, redis_port: int) -> int:
        """Established TCP connections of this process to the Redis port."""
        return sum(
            1
            for c in self.process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED
        )

    def client_connections(self) -> int:
        """Established TCP connections accepted on the API port."""
        return sum(
            1
            for c in self.process.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == self.port and c.status == psutil.CONN_ESTABLISHED
        )

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (``axon serve`` drains), then SIGKILL; returns the exit code."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            if not await anyio.to_thread.run_sync(_waited, popen, timeout_s):
                os.killpg(popen.pid, signal.SIGKILL)
                await anyio.to_thread.run_sync(_waited, popen, None)
        return popen.returncode


def _waited(popen: subprocess.Popen[bytes], timeout_s: float | None) -> bool:
    """Wait for ``popen`` to exit; False if it is still running after ``timeout_s``."""
    try:
        popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


# -- the servers' garbage collector (--gc-stats) ------------------------------------

GC_WRAP = "--gc-wrapped"
"""``python bench/sse.py --gc-wrapped STATS_FILE <script or -m module> ARGS...`` runs a
server with a ``gc.callbacks`` hook that times every collection; STATS_FILE is rewritten
every 0.25 s. Only with ``--gc-stats``: the hook costs a little."""
GC_PAUSE_LOGGED_MS = 5.0


def gc_wrapped(argv: list[str]) -> None:
    """Run ``argv`` (a script path or ``-m module``) in this process with GC timing."""
    import gc
    import runpy
    import threading

    out = Path(argv[0])
    stats: dict[str, Any] = {"count": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "pauses": []}
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        generation = int(info["generation"])
        stats["count"][generation] += 1
        stats["seconds"][generation] += took
        if took * 1000 >= GC_PAUSE_LOGGED_MS:
            stats["pauses"].append((round(time.time(), 3), generation, round(took * 1000, 1)))
            del stats["pauses"][:-5000]

    def dump() -> None:
        while True:
            time.sleep(0.25)
            snapshot = {**stats, "now": time.time(), "pauses": list(stats["pauses"])}
            out.with_suffix(".tmp").write_text(json.dumps(snapshot))
            out.with_suffix(".tmp").replace(out)

    gc.callbacks.append(timed)
    threading.Thread(target=dump, daemon=True).start()
    target = argv[1:]
    if target[0] == "-m":
        sys.argv = target[1:]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        runpy.run_path(target[0], run_name="__main__")


def gc_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """Collections, seconds and the longest pause between two ``gc_stats`` readings."""
    if before is None or after is None:
        return None
    window = [p for p in after["pauses"] if before["now"] < p[0] <= after["now"]]
    seconds = [round(b - a, 3) for a, b in zip(before["seconds"], after["seconds"], strict=True)]
    return {
        "collections": [b - a for a, b in zip(before["count"], after["count"], strict=True)],
        "seconds": seconds,
        "total_s": round(sum(seconds), 3),
        "max_pause_ms": max((p[2] for p in window), default=0.0),
        "pauses_over_50ms": sum(1 for p in window if p[2] > 50),
    }


# -- the load clients ----------------------------------------------------------------


class ClientPool:
    """The load-client worker processes of one scenario (``bench/sse_client.py``)."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes

    @classmethod
    async def start(cls, count: int) -> ClientPool:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(BENCH / "sse_client.py"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 27,
            )
            for _ in range(count)
        ]
        return cls(processes)

    async def ask(self, commands: Sequence[dict[str, Any]], timeout_s: float = 180.0) -> list[
        dict[str, Any]
    ]:  # fmt: skip
        """Send one command to each worker and wait for all answers."""

        async def one(process: asyncio.subprocess.Process, command: dict[str, Any]) -> Any:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write(json.dumps(command).encode() + b"\n")
            await process.stdin.drain()
            line = await process.stdout.readline()
            if not line:
                raise RuntimeError(f"load client {process.pid} exited ({command['op']})")
            return json.loads(line)

        with anyio.fail_after(timeout_s):
            replies: list[dict[str, Any]] = await asyncio.gather(
                *(one(p, c) for p, c in zip(self.processes, commands, strict=True))
            )
        return replies

    async def ask_all(self, command: dict[str, Any], timeout_s: float = 180.0) -> list[
        dict[str, Any]
    ]:  # fmt: skip
        return await self.ask([command] * len(self.processes), timeout_s)

    async def close(self) -> None:
        """Close the connections and end the workers (killing any that hang)."""
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            await self.ask_all({"op": "close"}, timeout_s=30.0)
        for process in self.processes:
            try:
                with anyio.fail_after(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


# -- the run's shared state -----------------------------------------------------------


class Context:
    """What every phase of one run uses."""

    def __init__(
        self, *, plan: Plan, store: Store, url: str, prefix: str, key: str, directory: Path
    ) -> None:
        self.plan = plan
        self.store = store
        self.url = url
        self.prefix = prefix
        self.key = key
        self.directory = directory
        self.redis_port = urlsplit(url).port or 6379
        self.pad = padding(plan.payload)

    def data(self) -> dict[str, Any]:
        """An event's data, stamped now: ``t_ns`` first, so clients find it cheaply."""
        return {"t_ns": time.time_ns(), "p": "x" * self.pad}

    async def valkey_clients(self) -> dict[str, int]:
        info: dict[str, Any] = await plain_client(self.store).info("clients")
        return {
            name: int(info[name])
            for name in ("connected_clients", "blocked_clients", "pubsub_clients")
            if name in info
        }


def padding(payload: int) -> int:
    """How many ``x`` make an event (envelope included) about ``payload`` bytes."""
    sample = build_event(
        task=new_task_id(),
        seq=12345,
        prev=GENESIS_HASH,
        ts=now_ms(),
        kind=EVENT_KIND,
        data=encode_data({"t_ns": time.time_ns(), "p": ""}),
    )
    return max(0, payload - len(sample))


def latency_summary(samples_us: list[int]) -> dict[str, Any]:
    """Percentiles in milliseconds of latencies in microseconds."""
    if not samples_us:
        return {"samples": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None,
                "max_ms": None, "mean_ms": None}  # fmt: skip
    ordered = sorted(float(x) for x in samples_us)
    return {
        "samples": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) / 1000, 2),
        "p90_ms": round(percentile(ordered, 0.90) / 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) / 1000, 2),
        "p999_ms": round(percentile(ordered, 0.999) / 1000, 2),
        "max_ms": round(ordered[-1] / 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) / 1000, 2),
    }


def ms_summary(samples: list[float]) -> dict[str, Any]:
    """p50/p95/p99/max of millisecond samples."""
    if not samples:
        return {"samples": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)
    return {
        "samples": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50), 2),
        "p95_ms": round(percentile(ordered, 0.95), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
    }


# -- (1) live fan-out ----------------------------------------------------------------


def fits(kind: str, subscribers: int, plan: Plan, limit: int, maxclients: int) -> str | None:
    """Why a scenario cannot run within the file-descriptor limits, or ``None``."""
    server_fds = subscribers * (2 if kind == "naive" else 1) + FD_RESERVE
    if server_fds > limit:
        what = (
            f"{subscribers:,} client sockets + {subscribers:,} Redis connections"
            if kind == "naive"
            else f"{subscribers:,} client sockets"
        )
        return (
            f"the {kind} server would need {what} + ~{FD_RESERVE} other descriptors = "
            f"{server_fds:,} open files, above this machine's hard limit of {limit:,} "
            "(RLIMIT_NOFILE)"
        )
    per_worker = math.ceil(subscribers / plan.workers) + FD_RESERVE
    if per_worker > limit:
        return f"each load client would need {per_worker:,} open files (limit {limit:,})"
    if kind == "naive" and subscribers + 100 > maxclients:
        return f"Valkey accepts {maxclients:,} clients; the naive server needs {subscribers:,}"
    return None


async def snapshot(ctx: Context, server: ApiProcess) -> dict[str, Any]:
    """The API process's memory, descriptors and Redis connections, and Valkey's clients."""
    return {
        "rss_kb": round(server.rss_kb(), 1),
        "fds": int(server.process.num_fds()),
        "client_connections": server.client_connections(),
        "redis_connections": server.redis_connections(ctx.redis_port),
        "valkey": await ctx.valkey_clients(),
    }


async def produce(
    writers: list[EventWriter], rate: float, duration_s: float, data: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Append ``rate`` events/s in total, round-robin over the tasks, for ``duration_s``."""
    total = max(len(writers), int(rate * duration_s))
    interval = 1.0 / rate
    lateness: list[float] = []
    append_ms: list[float] = []
    start = time.perf_counter()
    for i in range(total):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await anyio.sleep(delay)
        else:
            lateness.append(-delay * 1000)
        t0 = time.perf_counter()
        await writers[i % len(writers)].emit(EVENT_KIND, data())
        append_ms.append((time.perf_counter() - t0) * 1000)
    wall = time.perf_counter() - start
    append_ms.sort()
    return {
        "events": total,
        "wall_s": round(wall, 3),
        "events_per_s": round(total / wall, 1),
        "late_appends": len(lateness),
        "max_late_ms": round(max(lateness), 2) if lateness else 0.0,
        "append_p50_ms": round(percentile(append_ms, 0.5), 3),
        "append_p99_ms": round(percentile(append_ms, 0.99), 3),
    }


async def attach_probes(
    ctx: Context, server: ApiProcess, tasks: list[str], heads: dict[str, int], count: int
) -> dict[str, Any]:
    """(2) ``count`` new connections, one after another, each resuming one event before
    its task's head: connect -> first byte, and -> that event's frame."""
    auth = ctx.key if server.kind == "axon" else None
    first_byte: list[float] = []
    first_event: list[float] = []
    errors: list[str] = []
    for i in range(count):
        task = tasks[i % len(tasks)]
        path = EVENTS_PATH.format(task=task, since=heads[task] - 1)
        try:
            byte_ms, event_ms = await sse_client.probe("127.0.0.1", server.port, path, auth)
        except (RuntimeError, OSError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        first_byte.append(byte_ms)
        first_event.append(event_ms)
    return {
        "first_byte": ms_summary(first_byte),
        "first_event": ms_summary(first_event),
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
    }


async def attach_burst(
    ctx: Context, server: ApiProcess, pool: ClientPool, tasks: list[str], heads: dict[str, int]
) -> dict[str, Any]:
    """``burst`` more subscribers, all connecting at once (no pacing)."""
    plan = ctx.plan
    subs = [[tasks[i % len(tasks)], heads[tasks[i % len(tasks)]]] for i in range(plan.burst)]
    shares = [subs[w :: plan.workers] for w in range(plan.workers)]
    t0 = time.perf_counter()
    replies = await pool.ask(
        [
            {
                "op": "connect",
                "host": "127.0.0.1",
                "port": server.port,
                "auth": ctx.key if server.kind == "axon" else None,
                "path": EVENTS_PATH,
                "subs": share,
                "concurrency": len(share),
                "timeout_s": 60.0,
            }
            for share in shares
        ]
    )
    return {
        "connections": plan.burst,
        "attached": sum(r["attached"] for r in replies),
        "failed": sum(r["failed"] for r in replies),
        "wall_s": round(time.perf_counter() - t0, 2),
        "first_frame": ms_summary([x for r in replies for x in r["first_frame_ms"]]),
        "error_kinds": {
            k: sum(r["errors"].get(k, 0) for r in replies)
            for k in {k for r in replies for k in r["errors"]}
        },
        "errors": [e for r in replies for e in r["sample_errors"]][:5],
    }


async def load_phase(
    ctx: Context,
    server: ApiProcess,
    pool: ClientPool,
    writers: list[EventWriter],
    rate: float,
    label: str,
) -> dict[str, Any]:
    """One load phase: ``rate`` events/s over the writers' tasks for ``duration_s``, then
    wait until every subscriber has every event (or the drain timeout)."""
    plan, store, tasks = ctx.plan, ctx.store, len(writers)
    result: dict[str, Any] = {"rate": rate}
    start = {w.task_id: w.head.seq for w in writers if w.head is not None}
    await pool.ask_all({"op": "record", "start": start})
    gc0 = server.gc_stats()
    progress(f"[{label}] producing {rate:g} events/s over {tasks} tasks for {plan.duration_s:g} s")
    client = plain_client(store)
    valkey0 = await sample_server(client)
    machine0 = machine_cpu_s()
    cpu0, own0, t0 = server.cpu_s(), time.process_time(), time.perf_counter()
    result["produced"] = await produce(writers, rate, plan.duration_s, ctx.data)
    expected = {w.task_id: w.head.seq for w in writers if w.head is not None}
    drained = await pool.ask_all(
        {"op": "drain", "expected": expected, "timeout_s": plan.drain_timeout_s},
        timeout_s=plan.drain_timeout_s + 120,
    )
    wall = time.perf_counter() - t0
    server_cpu, own_cpu = server.cpu_s() - cpu0, time.process_time() - own0
    machine1 = machine_cpu_s()
    valkey1 = await sample_server(client)
    clients_cpu = sum(d["cpu_s"] for d in drained)
    valkey_cpu = valkey1.cpu_s - valkey0.cpu_s
    busy = None
    other = None
    if machine0 is not None and machine1 is not None:
        busy = machine1[0] - machine0[0]
        other = max(0.0, busy - server_cpu - own_cpu - clients_cpu - valkey_cpu)
    latencies = [x for d in drained for x in d.pop("latencies_us")]
    want = sum(d["expected"] for d in drained)
    got = sum(d["delivered"] for d in drained)
    result["delivery"] = {
        "expected": want,
        "delivered": got,
        "delivered_pct": round(100 * got / want, 3) if want else None,
        "missing": sum(d["missing"] for d in drained),
        "subscribers_behind": sum(d["subscribers_behind"] for d in drained),
        "duplicates": sum(d["duplicates"] for d in drained),
        "skipped_seqs": sum(d["skipped"] for d in drained),
        "closed_early": sum(d["closed_early"] for d in drained),
        "controls": {
            k: sum(d["controls"].get(k, 0) for d in drained)
            for k in {k for d in drained for k in d["controls"]}
        },
        "drain_wait_s": max(d["drain_wait_s"] for d in drained),
        "frames_per_s": round(got / result["produced"]["wall_s"], 1),
    }
    result["latency"] = latency_summary(latencies)
    result["cpu"] = {
        "wall_s": round(wall, 2),
        "server_s": round(server_cpu, 2),
        "server_share": round(server_cpu / wall, 3),
        "valkey_s": round(valkey_cpu, 2),
        "clients_s": round(clients_cpu, 2),
        "producer_s": round(own_cpu, 2),
        "other_s": round(other, 2) if other is not None else None,
        "machine_busy_share": (
            round(busy / (wall * (os.cpu_count() or 1)), 3) if busy is not None else None
        ),
        "server_cpu_us_per_frame": round(server_cpu / got * 1e6, 1) if got else None,
    }
    if gc0 is not None:
        await anyio.sleep(0.5)  # let the stats file catch up
    result["gc"] = gc_delta(gc0, server.gc_stats())
    result["loaded"] = await snapshot(ctx, server)
    lat, delivery = result["latency"], result["delivery"]
    progress(
        f"[{label}] latency p50 {lat['p50_ms']} / p99 {lat['p99_ms']} / max {lat['max_ms']} "
        f"ms over {lat['samples']:,} frames; delivered {got:,}/{want:,} "
        f"({cell(delivery['delivered_pct'])}%); server CPU {server_cpu / wall:.0%}, "
        f"clients {clients_cpu / wall:.0%}, Valkey {valkey_cpu / wall:.0%} of one core"
    )
    if result["gc"] is not None:
        progress(f"[{label}] server GC during the phase: {result['gc']}")
    return result


async def scenario(
    ctx: Context, kind: str, subscribers: int, tasks: int, rates: Sequence[float], *, probes: int
) -> dict[str, Any]:
    """(1) One server, ``subscribers`` over ``tasks``, a load phase per rate (events/s);
    (2) attach probes and a burst if ``probes``."""
    plan = ctx.plan
    label = f"{kind} {subscribers:,} subscribers / {tasks} task{'s' if tasks > 1 else ''}"
    store = ctx.store
    records = [
        await store.create_task(TaskSpec(tenant=TENANT, adapter="mock")) for _ in range(tasks)
    ]
    writers = [EventWriter(store, r.id, epoch=0) for r in records]
    for writer in writers:  # something to backfill for the attach probes
        await writer.emit(EVENT_KIND, ctx.data())
    heads = {w.task_id: w.head.seq for w in writers if w.head is not None}
    task_ids = [r.id for r in records]
    result: dict[str, Any] = {
        "server": kind,
        "subscribers": subscribers,
        "tasks": tasks,
        "rates": list(rates),
    }
    server = ApiProcess(kind, ctx.url, ctx.prefix, ctx.directory, gc_stats=plan.gc_stats)
    progress(f"[{label}] starting the {kind} server ...")
    await server.start()
    pool: ClientPool | None = None
    try:
        # One request first, so imports, routing and the key cache are warm before the baseline.
        await sse_client.probe(
            "127.0.0.1",
            server.port,
            EVENTS_PATH.format(task=task_ids[0], since=heads[task_ids[0]] - 1),
            ctx.key if kind == "axon" else None,
        )
        await anyio.sleep(0.5)
        result["before"] = await snapshot(ctx, server)
        pool = await ClientPool.start(plan.workers)
        subs = [[task_ids[i % tasks], heads[task_ids[i % tasks]]] for i in range(subscribers)]
        shares = [subs[w :: plan.workers] for w in range(plan.workers)]
        progress(f"[{label}] attaching {subscribers:,} subscribers ({plan.workers} clients) ...")
        cpu0 = server.cpu_s()
        t0 = time.perf_counter()
        replies = await pool.ask(
            [
                {
                    "op": "connect",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "auth": ctx.key if kind == "axon" else None,
                    "path": EVENTS_PATH,
                    "subs": share,
                    "concurrency": plan.concurrency,
                    "timeout_s": 60.0,
                }
                for share in shares
            ]
        )
        attach_wall = time.perf_counter() - t0
        attached = sum(r["attached"] for r in replies)
        failed = sum(r["failed"] for r in replies)
        result["attach"] = {
            "attached": attached,
            "failed": failed,
            "errors": [e for r in replies for e in r["sample_errors"]][:5],
            "wall_s": round(attach_wall, 2),
            "per_s": round(attached / attach_wall, 1) if attach_wall else None,
            "server_cpu_s": round(server.cpu_s() - cpu0, 2),
            "client_cpu_s": round(sum(r["cpu_s"] for r in replies), 2),
            "first_frame": ms_summary([x for r in replies for x in r["first_frame_ms"]]),
        }
        progress(
            f"[{label}] {attached:,} attached, {failed} failed in {attach_wall:.1f} s "
            f"(first frame p50 {result['attach']['first_frame']['p50_ms']} ms)"
        )
        if failed:
            progress(f"[{label}] attach errors: {result['attach']['errors']}")
        await anyio.sleep(1.0)
        result["attached"] = after_attach = await snapshot(ctx, server)
        rss_delta = after_attach["rss_kb"] - result["before"]["rss_kb"]
        result["rss_per_subscriber_kb"] = round(rss_delta / attached, 2) if attached else None
        progress(
            f"[{label}] server RSS {result['before']['rss_kb'] / 1024:.1f} -> "
            f"{after_attach['rss_kb'] / 1024:.1f} MiB "
            f"({cell(result['rss_per_subscriber_kb'])} KB/subscriber); Redis connections "
            f"{result['before']['redis_connections']} -> {after_attach['redis_connections']}; "
            f"Valkey {after_attach['valkey']}"
        )

        result["phases"] = []
        for rate in rates:
            phase = await load_phase(ctx, server, pool, writers, rate, label)
            result["phases"].append(phase)
        if probes:
            progress(f"[{label}] attach probes: {probes} new connections, one at a time ...")
            heads_now = {w.task_id: w.head.seq for w in writers if w.head is not None}
            result["probes"] = await attach_probes(ctx, server, task_ids, heads_now, probes)
            fb = result["probes"]["first_byte"]
            progress(
                f"[{label}] attach first byte p50 {fb['p50_ms']} / p95 {fb['p95_ms']} ms, "
                f"{result['probes']['failed']} failed {result['probes']['errors']}"
            )
            if plan.burst:
                progress(f"[{label}] attach burst: {plan.burst} connections at once ...")
                result["burst"] = burst = await attach_burst(ctx, server, pool, task_ids, heads_now)
                progress(
                    f"[{label}] burst: {burst['attached']} attached, {burst['failed']} failed "
                    f"in {burst['wall_s']} s; first frame p50 {burst['first_frame']['p50_ms']} / "
                    f"p99 {burst['first_frame']['p99_ms']} ms; errors {burst['errors'][:2]}"
                )
    finally:
        if pool is not None:
            await pool.close()
        crashed = not server.alive()
        code = await server.stop()
        result["server_exit"] = {"crashed_during_run": crashed, "exit_code": code}
        if crashed:
            result["server_exit"]["log_tail"] = server.log_tail()
            progress(f"[{label}] THE SERVER DIED during the run: {server.log_tail()}")
    return result


# -- (3) backfill --------------------------------------------------------------------


async def backfill_phase(ctx: Context) -> dict[str, Any]:
    """(3) One task of ``backfill_events`` events: raw XRANGE paging vs one SSE client of
    Axon (and of the naive server), alternating, median events/s."""
    plan, store = ctx.plan, ctx.store
    record = await store.create_task(TaskSpec(tenant=TENANT, adapter="mock"))
    writer = EventWriter(store, record.id, epoch=0)
    progress(f"(3) filling one task with {plan.backfill_events:,} events ...")
    batch = store.settings.max_batch_events
    left = plan.backfill_events
    while left > 0:
        n = min(batch, left)
        await writer.emit_many([(EVENT_KIND, ctx.data())] * n)
        left -= n
    assert writer.head is not None
    last = writer.head.seq
    key = store.keys.events(record.id)
    raw_client = connect(store.settings)  # XRANGE replies stay raw
    servers = {
        kind: ApiProcess(kind, ctx.url, ctx.prefix, ctx.directory) for kind in ("axon", "naive")
    }
    rates: dict[str, list[float]] = {"raw": [], "axon": [], "naive": []}
    first_byte: dict[str, list[float]] = {"axon": [], "naive": []}
    try:
        for server in servers.values():
            await server.start()
        await read_raw(raw_client, key)  # warm the connection and the server
        path = EVENTS_PATH.format(task=record.id, since=0)
        for index in range(plan.backfill_passes):
            t0 = time.perf_counter()
            got = await read_raw(raw_client, key)
            rates["raw"].append(got / (time.perf_counter() - t0))
            if got != last:
                raise RuntimeError(f"raw XRANGE read {got} entries, expected {last}")
            for kind, server in servers.items():
                auth = ctx.key if kind == "axon" else None
                read = await sse_client.backfill(
                    "127.0.0.1", server.port, path, auth, last_seq=last
                )
                if read["frames"] != last:
                    raise RuntimeError(f"{kind} SSE sent {read['frames']} frames, expected {last}")
                rates[kind].append(read["events_per_s"])
                first_byte[kind].append(read["first_byte_s"] * 1000)
            progress(
                f"(3) pass {index + 1}/{plan.backfill_passes}: "
                + ", ".join(f"{k} {v[-1]:,.0f} ev/s" for k, v in rates.items())
            )
    finally:
        await raw_client.aclose()
        for server in servers.values():
            await server.stop()
    medians = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    return {
        "events": last,
        "event_bytes": plan.payload,
        "page": READ_PAGE,
        "passes": plan.backfill_passes,
        "raw_events_per_s": medians["raw"],
        "axon_events_per_s": medians["axon"],
        "naive_events_per_s": medians["naive"],
        "ratio": ratio(medians["axon"], medians["raw"]),
        "naive_ratio": ratio(medians["naive"], medians["raw"]),
        "first_byte_ms": {k: round(statistics.median(v), 2) for k, v in first_byte.items()},
        "passes_events_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }


# -- the run -------------------------------------------------------------------------


Shape = tuple[str, int, int, tuple[float, ...], str | None]
"""A scenario: server, subscribers, tasks, rates (events/s), why it is skipped (or None)."""


def scenarios_of(plan: Plan, limit: int, maxclients: int) -> list[Shape]:
    """The scenarios in run order: per subscriber count, Axon then the naive server."""
    out: list[Shape] = []
    for n in plan.subscribers:
        shapes = [(plan.tasks, plan.rates)]
        if plan.single_task and n == min(plan.subscribers) and n <= SINGLE_TASK_MAX:
            shapes.append((1, plan.single_task_rates))
        for tasks, rates in shapes:
            for kind in ("axon", "naive"):
                out.append((kind, n, tasks, rates, fits(kind, n, plan, limit, maxclients)))
    return out


async def run(url: str, embedded: bool, plan: Plan, quick: bool, directory: Path) -> dict[str, Any]:
    """Every phase against the server at ``url``; returns the report."""
    started = datetime.now(UTC).replace(microsecond=0)
    prefix = run_prefix()
    settings = Settings(redis_url=url, key_prefix=prefix)
    limit = fd_limit()
    results: dict[str, Any] = {"scenarios": [], "skipped": []}
    async with open_store(settings) as store:
        client = plain_client(store)
        try:
            machine = await machine_info(store, embedded=embedded, **machine_extras(limit))
            maxclients = int(str((await client.config_get("maxclients"))["maxclients"]))
            machine["valkey_maxclients"] = maxclients
            key, _info = await KeyStore(store).create(TENANT, Role.ADMIN, name="sse bench")
            ctx = Context(
                plan=plan, store=store, url=url, prefix=prefix, key=key, directory=directory
            )
            progress(
                f"{machine['server']} {machine['server_version']} on port {ctx.redis_port} "
                f"(maxclients {maxclients:,}); key prefix {prefix}; open-file limit {limit:,}; "
                f"events of ~{plan.payload} B"
            )
            for kind, n, tasks, rates, why in scenarios_of(plan, limit, maxclients):
                if why is not None:
                    progress(f"skipping {kind} at {n:,} subscribers: {why}")
                    results["skipped"].append({"server": kind, "subscribers": n, "tasks": tasks,
                                               "reason": why})  # fmt: skip
                    continue
                probes = plan.attach_probes if n == plan.attach_at and tasks == plan.tasks else 0
                results["scenarios"].append(
                    await scenario(ctx, kind, n, tasks, rates, probes=probes)
                )
            results["backfill"] = backfill = await backfill_phase(ctx)
            progress(
                f"(3) median: raw XRANGE {backfill['raw_events_per_s']:,.0f} ev/s, Axon SSE "
                f"{backfill['axon_events_per_s']:,.0f} ev/s (ratio {backfill['ratio']}), naive "
                f"SSE {backfill['naive_events_per_s']:,.0f} ev/s"
            )
        finally:
            with anyio.CancelScope(shield=True):
                deleted = await delete_matching(client, f"{prefix}:*")
            progress(f"deleted {deleted} keys under {prefix}:*")
    report = report_of("sse", started, quick=quick, plan=asdict(plan), machine=machine,
                       results=results)  # fmt: skip
    report["metrics"] = metrics_table(report["results"], plan)
    return report


def machine_extras(limit: int) -> dict[str, Any]:
    return {
        "open_file_limit": limit,
        "uvicorn": package_version("uvicorn"),
        "h11": package_version("h11"),
        "starlette": package_version("starlette"),
        "redis_py": package_version("redis"),
        "hiredis": package_version("hiredis"),
        "anyio": package_version("anyio"),
    }


# -- report --------------------------------------------------------------------------


def find(results: dict[str, Any], kind: str, n: int, tasks: int) -> dict[str, Any] | None:
    for s in results["scenarios"]:
        if s["server"] == kind and s["subscribers"] == n and s["tasks"] == tasks:
            found: dict[str, Any] = s
            return found
    return None


def figure(s: dict[str, Any] | None, *path: str) -> Any:
    value: Any = s
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def phase_of(s: dict[str, Any] | None, rate: float) -> dict[str, Any] | None:
    """The load phase of scenario ``s`` at ``rate`` events/s."""
    for phase in (s or {}).get("phases", []):
        if phase["rate"] == rate:
            found: dict[str, Any] = phase
            return found
    return None


def last_phase(s: dict[str, Any] | None) -> dict[str, Any] | None:
    """The scenario's last load phase."""
    phases: list[dict[str, Any]] = (s or {}).get("phases") or [None]
    return phases[-1]


def min_pct(s: dict[str, Any] | None) -> float | None:
    """The lowest delivered percentage over a scenario's load phases."""
    values = [p["delivery"]["delivered_pct"] for p in (s or {}).get("phases", [])]
    known = [v for v in values if v is not None]
    return min(known) if known else None


def tail_connections(s: dict[str, Any] | None) -> Any:
    """Pub/Sub connections Valkey counts while the scenario's subscribers were attached."""
    return figure(s, "attached", "valkey", "pubsub_clients")


def metrics_table(results: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Rows of the summary: metric, ours, reference (naive), ratio, target, met."""
    rows: list[dict[str, Any]] = []
    m = plan.tasks
    shapes = [(n, m, plan.rates) for n in plan.subscribers]
    single = min(plan.subscribers)
    if plan.single_task and single <= SINGLE_TASK_MAX:
        shapes.append((single, 1, plan.single_task_rates))
    for n, tasks, rates in shapes:
        ours, ref = find(results, "axon", n, tasks), find(results, "naive", n, tasks)
        target = {1000: TARGET_P99_1K_MS, 10_000: TARGET_P99_10K_MS}.get(n)
        for rate in rates:
            p99 = figure(phase_of(ours, rate), "latency", "p99_ms")
            frames = figure(phase_of(ours, rate), "delivery", "frames_per_s")
            rows.append(
                metric(
                    f"append -> SSE p99 (ms), {n:,} subscribers / {tasks} task"
                    f"{'s' if tasks > 1 else ''} / {rate:g} events/s ({cell(frames)} frames/s)",
                    p99,
                    figure(phase_of(ref, rate), "latency", "p99_ms"),
                    f"<= {target:g} ms" if target else "",
                    at_most(p99, target) if target else None,
                )
            )
        if ours is not None:
            worst = min_pct(ours)
            rows.append(
                metric(
                    f"events delivered (%, worst phase), {n:,} subscribers / {tasks} task(s)",
                    worst,
                    min_pct(ref),
                    "100 %",
                    None if worst is None else worst >= 100.0,
                )
            )
    top = max(plan.subscribers)
    ours = find(results, "axon", top, m)
    ref = find(results, "naive", top, m)
    naive_n = top
    if ref is None:  # the naive server did not fit at the top count: compare at its largest
        naive_runs = [s for s in results["scenarios"] if s["server"] == "naive" and s["tasks"] == m]
        if naive_runs:
            ref = max(naive_runs, key=lambda s: s["subscribers"])
            naive_n = ref["subscribers"]
    attached = figure(ours, "attach", "attached")
    rows.append(
        metric(
            f"live subscribers held by one API process (naive: at {naive_n:,})",
            attached,
            figure(ref, "attach", "attached"),
            f">= {TARGET_LIVE_SUBSCRIBERS:,}",
            at_least(attached, TARGET_LIVE_SUBSCRIBERS),
        )
    )
    rss = figure(ours, "rss_per_subscriber_kb")
    rows.append(
        metric(
            f"RSS per subscriber (KB), {top:,} subscribers (naive: {naive_n:,})",
            rss,
            figure(ref, "rss_per_subscriber_kb"),
            f"<= {TARGET_KB_PER_SUBSCRIBER:g} KB",
            at_most(rss, TARGET_KB_PER_SUBSCRIBER),
        )
    )
    tails = tail_connections(ours)
    rows.append(
        metric(
            f"Redis connections carrying live tails, {top:,} subscribers (naive: blocked XREADs)",
            tails,
            figure(ref, "attached", "valkey", "blocked_clients"),
            f"{TARGET_TAIL_CONNECTIONS}",
            None if tails is None else tails <= TARGET_TAIL_CONNECTIONS,
        )
    )
    rows.append(
        metric(
            f"Redis connections of the API process, {top:,} subscribers attached / after load",
            f"{figure(ours, 'attached', 'redis_connections')} / "
            f"{figure(last_phase(ours), 'loaded', 'redis_connections')}",
            f"{figure(ref, 'attached', 'redis_connections')} / "
            f"{figure(last_phase(ref), 'loaded', 'redis_connections')}",
        )
    )
    probe_ours = find(results, "axon", plan.attach_at, m)
    probe_ref = find(results, "naive", plan.attach_at, m)
    fb = figure(probe_ours, "probes", "first_byte", "p95_ms")
    rows.append(
        metric(
            f"attach, connect -> first byte p95 (ms), {plan.attach_at:,} subscribers attached",
            fb,
            figure(probe_ref, "probes", "first_byte", "p95_ms"),
            f"<= {TARGET_ATTACH_P95_MS:g} ms",
            at_most(fb, TARGET_ATTACH_P95_MS),
        )
    )
    rows.append(
        metric(
            "attach, connect -> first (backfilled) event p95 (ms)",
            figure(probe_ours, "probes", "first_event", "p95_ms"),
            figure(probe_ref, "probes", "first_event", "p95_ms"),
        )
    )
    if plan.burst:
        rows.append(
            metric(
                f"attach burst: of {plan.burst} connections opened at once, failed",
                figure(probe_ours, "burst", "failed"),
                figure(probe_ref, "burst", "failed"),
                "0",
                None
                if figure(probe_ours, "burst", "failed") is None
                else figure(probe_ours, "burst", "failed") == 0,
            )
        )
    top_rate = max(plan.rates)
    rows.append(
        metric(
            f"API process CPU per delivered frame (us), {top:,} subscribers (naive: "
            f"{naive_n:,}), {top_rate:g} events/s",
            figure(phase_of(ours, top_rate), "cpu", "server_cpu_us_per_frame"),
            figure(phase_of(ref, top_rate), "cpu", "server_cpu_us_per_frame"),
        )
    )
    backfill = results.get("backfill")
    if backfill:
        rows.append(
            metric(
                f"backfill {backfill['events']:,} events to one SSE client vs raw XRANGE (ev/s)",
                backfill["axon_events_per_s"],
                backfill["raw_events_per_s"],
                f">= {TARGET_BACKFILL_RATIO}",
                at_least(backfill["ratio"], TARGET_BACKFILL_RATIO),
            )
        )
        rows.append(
            metric(
                "backfill: naive SSE server vs raw XRANGE (ev/s), for comparison",
                backfill["naive_events_per_s"],
                backfill["raw_events_per_s"],
            )
        )
    return rows


def scenario_lines(s: dict[str, Any]) -> list[str]:
    """One table row per load phase of scenario ``s``."""
    out = []
    for phase in s.get("phases", []):
        lat, delivery, cpu = phase["latency"], phase["delivery"], phase["cpu"]
        gc = phase.get("gc")
        cells = [
            s["server"],
            s["subscribers"],
            s["tasks"],
            phase["produced"]["events_per_s"],
            delivery["frames_per_s"],
            lat["p50_ms"],
            lat["p99_ms"],
            lat["max_ms"],
            delivery["delivered_pct"],
            delivery["missing"],
            s.get("rss_per_subscriber_kb"),
            f"{figure(s, 'attached', 'redis_connections')} / "
            f"{figure(phase, 'loaded', 'redis_connections')}",
            figure(s, "attached", "valkey", "pubsub_clients"),
            cpu["server_share"],
            cpu["server_cpu_us_per_frame"],
            f"{gc['total_s']} s / {gc['max_pause_ms']} ms" if gc else "n/a",
        ]
        out.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return out


def markdown(report: dict[str, Any]) -> str:
    """The summary as a Markdown document."""
    machine, plan, results = report["machine"], report["plan"], report["results"]
    where = "embedded, started by the bench" if machine["embedded"] else "external"
    lines = [
        f"# SSE benchmark, {report['started_utc']}",
        "",
        f"Server {machine['server']} {machine['server_version']} ({where}, maxclients "
        f"{machine['valkey_maxclients']:,}); Python {machine['python']}; {machine['cpu_count']} "
        f"CPUs; uvicorn {machine['uvicorn']} (httptools, uvloop); open-file limit "
        f"{machine['open_file_limit']:,}; "
        f"events of ~{plan['payload']} B; {plan['workers']} load-client processes; "
        f"{'quick' if report['quick'] else 'default'} run, {report['duration_s']:.0f} s; "
        f"load average at start {machine['loadavg']}."
        + (
            " The API servers ran under the `--gc-stats` hook (garbage collections timed)."
            if plan.get("gc_stats")
            else ""
        ),
        "",
        "Reference: `bench/naive_sse.py`, the same URL and frames served by one blocking "
        "`XREAD` per subscriber on a Redis connection of its own, no auth. Same Valkey, same "
        "clients, same producer, one server process at a time.",
        "",
        *metrics_markdown(report["metrics"]),
        "",
        "## Live fan-out",
        "",
        "Subscribers attach at the head of their task (spread round-robin over the tasks), "
        "then, in one load phase per rate, one producer appends that many events/s in total "
        f"for {plan['duration_s']:g} s ({', '.join(f'{r:g}' for r in plan['rates'])} events/s "
        f"over {plan['tasks']} tasks; single-task runs "
        f"{', '.join(f'{r:g}' for r in plan['single_task_rates'])}), stamping `t_ns` into each "
        "event right before its append; latency is the frame's arrival at the client minus "
        "that stamp, over every frame of every subscriber. frames/s = events delivered to "
        "subscribers per second. RSS/sub: the API process's RSS growth from before attaching "
        "to all attached, divided by the subscribers. Redis conns: the API process's TCP "
        "connections to Valkey with everyone attached / after the phase; Pub/Sub: Valkey's "
        "`pubsub_clients`. Server CPU: the API process's share of one core during the phase, "
        "and its CPU per delivered frame. GC: time the API process spent in garbage "
        "collection during the phase / its longest pause (with `--gc-stats` only).",
        "",
    ]
    header = (
        "| server | subscribers | tasks | events/s | frames/s | p50 ms | p99 ms | max ms | "
        "delivered % | missing | RSS/sub KB | Redis conns | Pub/Sub | server CPU | "
        "us/frame | GC |"
    )
    for n in plan["subscribers"]:
        runs = [s for s in results["scenarios"] if s["subscribers"] == n]
        skipped = [s for s in results["skipped"] if s["subscribers"] == n]
        if not runs and not skipped:
            continue
        lines += [f"### {n:,} subscribers", "", header, "|---|" + "---:|" * 15]
        lines += [line for s in runs for line in scenario_lines(s)]
        lines.append("")
        for s in runs:
            attach = s.get("attach", {})
            last = last_phase(s)
            lines.append(
                f"- {s['server']}, {s['tasks']} task(s): {cell(attach.get('attached'))} attached "
                f"in {cell(attach.get('wall_s'))} s ({cell(attach.get('per_s'))}/s, first frame "
                f"p50 {cell(figure(attach, 'first_frame', 'p50_ms'))} ms, p99 "
                f"{cell(figure(attach, 'first_frame', 'p99_ms'))} ms), "
                f"{cell(attach.get('failed'))} failed; RSS "
                f"{cell(figure(s, 'before', 'rss_kb'))} -> {cell(figure(s, 'attached', 'rss_kb'))}"
                f" -> {cell(figure(last, 'loaded', 'rss_kb'))} KB (before / attached / after the "
                f"load); Valkey clients attached {figure(s, 'attached', 'valkey')}; CPU s per "
                "phase (server / clients / Valkey / producer / other, over wall): "
                + "; ".join(
                    f"{p['rate']:g}/s: {cell(p['cpu']['server_s'])} / {cell(p['cpu']['clients_s'])}"
                    f" / {cell(p['cpu']['valkey_s'])} / {cell(p['cpu']['producer_s'])} / "
                    f"{cell(p['cpu']['other_s'])} over {cell(p['cpu']['wall_s'])} s"
                    for p in s.get("phases", [])
                )
                + (
                    f"; **server exited during the run** (code {s['server_exit']['exit_code']})"
                    if figure(s, "server_exit", "crashed_during_run")
                    else ""
                )
                + "."
            )
        for s in skipped:
            lines.append(f"- {s['server']} not measured: {s['reason']}.")
        lines.append("")
    lines += ["## Attach", ""]
    for kind in ("axon", "naive"):
        s = find(results, kind, plan["attach_at"], plan["tasks"])
        probes = figure(s, "probes")
        if probes:
            fb, fe = probes["first_byte"], probes["first_event"]
            lines.append(
                f"- {kind}: {fb['samples']} new connections one at a time with "
                f"{plan['attach_at']:,} subscribers attached, each resuming one event before "
                f"its task's head: connect -> first byte p50 {fb['p50_ms']}, p95 {fb['p95_ms']}, "
                f"max {fb['max_ms']} ms; -> first event p50 {fe['p50_ms']}, p95 "
                f"{fe['p95_ms']}, max {fe['max_ms']} ms; {probes['failed']} failed."
            )
        burst = figure(s, "burst")
        if burst:
            lines.append(
                f"- {kind}, then {burst['connections']} more connections opened at once: "
                f"{burst['attached']} attached, **{burst['failed']} failed** "
                f"{burst['error_kinds']}, first frame p50 {burst['first_frame']['p50_ms']} / "
                f"p99 {burst['first_frame']['p99_ms']} ms"
                + (f"; e.g. `{burst['errors'][-1][:160]}`" if burst["errors"] else "")
                + "."
            )
    backfill = results.get("backfill")
    if backfill:
        lines += [
            "",
            "## Backfill",
            "",
            f"One task of {backfill['events']:,} events (~{backfill['event_bytes']} B each), "
            f"read from seq 0 to its last seq by one SSE client (a raw socket reader) and by "
            f"raw `XRANGE` in pages of {backfill['page']:,} (redis-py with hiredis, replies "
            f"unconverted), alternating, median of {backfill['passes']} passes: raw "
            f"{cell(backfill['raw_events_per_s'])} ev/s, Axon SSE "
            f"{cell(backfill['axon_events_per_s'])} ev/s (ratio {cell(backfill['ratio'])}), "
            f"naive SSE {cell(backfill['naive_events_per_s'])} ev/s (ratio "
            f"{cell(backfill['naive_ratio'])}); first byte {backfill['first_byte_ms']} ms.",
        ]
    return "\n".join(lines) + "\n"


def run_with_server(
    redis_url: str | None, directory: Path, go: Callable[[str, bool], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """``go(url, embedded)`` against ``redis_url`` or an embedded Valkey with room for
    the naive server's connections (``common.run_on_server`` with ``--maxclients``)."""
    server: ServerProcess | None = None
    if redis_url:
        url = redis_url
    else:
        fd_limit()  # Valkey sizes maxclients by the limit it inherits
        server = ServerProcess(
            valkey_binary(), directory, args=["--appendonly", "no", "--maxclients", "25000"]
        )
        progress(f"starting embedded valkey-server on port {server.port} ...")
        server.start()
        url = server.url
    try:
        return anyio.run(go, url, server is not None, backend="asyncio")
    finally:
        if server is not None:
            server.stop()
            progress("embedded server stopped")


def counts_of(text: str, kind: type[int] | type[float]) -> tuple[Any, ...]:
    """``"1000,5000"`` -> ``(1000, 5000)``; positive numbers only."""
    values = tuple(kind(x) for x in text.split(",") if x.strip())
    if not values or min(values) <= 0:
        raise ValueError(text)
    return values


def main(argv: list[str] | None = None) -> int:
    """Parse options, start (or use) the server, run, write and print the results."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [GC_WRAP]:
        gc_wrapped(argv[1:])
        return 0
    parser = arguments("SSE fan-out, attach and backfill benchmark (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="1,000 subscribers, short phases")
    parser.add_argument(
        "--subscribers",
        help="comma-separated subscriber counts (default 1000,5000,10000; --quick 1000)",
    )
    parser.add_argument("--tasks", type=int, help=f"tasks M (default {DEFAULT_PLAN.tasks})")
    parser.add_argument(
        "--rates", help="comma-separated aggregate events/s, one load phase each (default 20,100)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of each load phase (default 15; --quick 5)"
    )
    parser.add_argument("--workers", type=int, help="load-client processes (default 2)")
    parser.add_argument("--backfill-events", type=int, help="events of the backfill task")
    parser.add_argument(
        "--no-single-task", action="store_true", help="skip the one-task runs (1,000 subscribers)"
    )
    parser.add_argument(
        "--gc-stats",
        action="store_true",
        help="time the servers' garbage collections (a gc.callbacks hook; costs a little)",
    )
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    try:
        if args.subscribers:
            plan = replace(plan, subscribers=counts_of(args.subscribers, int))
        if args.rates:
            plan = replace(plan, rates=counts_of(args.rates, float))
    except ValueError:
        parser.error("--subscribers and --rates take positive numbers, e.g. 1000,5000,10000")
    options = {
        "tasks": "tasks",
        "duration": "duration_s",
        "workers": "workers",
        "backfill_events": "backfill_events",
    }
    for option, field in options.items():
        value = getattr(args, option)
        if value is not None:
            plan = replace(plan, **{field: value})
    if args.no_single_task:
        plan = replace(plan, single_task=False)
    if args.gc_stats:
        plan = replace(plan, gc_stats=True)
    if plan.tasks < 1 or plan.duration_s <= 0 or plan.workers < 1 or plan.backfill_events < 1:
        parser.error("--tasks, --duration, --workers and --backfill-events must be positive")
    if plan.attach_at not in plan.subscribers:
        plan = replace(plan, attach_at=min(plan.subscribers))
    with tempfile.TemporaryDirectory(prefix="axon-bench-sse-") as tmp:
        report = run_with_server(
            args.redis_url,
            Path(tmp),
            lambda url, embedded: run(url, embedded, plan, args.quick, Path(tmp)),
        )
    publish("sse", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
