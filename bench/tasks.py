"""Task benchmark: Axon's workers against SAQ, arq, RQ and Celery on the same server.

One run, one server, four measurements (``bench/README.md`` explains each):

1. no-op task throughput, enqueue N -> all completed, for Axon and each peer, every
   one with its own worker process (concurrency 10 where the library has it) and the
   same producers (``--producers``: concurrent enqueue loops, 1 by default);
2. pickup latency on an idle worker: submit -> ``claimed`` (and -> the task function
   starts), one task at a time; the same for SAQ and arq (enqueue -> job starts);
3. a dead worker's task resumed elsewhere: SIGKILL the worker running a long task,
   time until another worker claims it, then verify the task's chain;
4. cancel latency: ``Queue.cancel`` on a running shell task -> ``canceled`` event
   and -> its process gone.

Peers that cannot run here are recorded as ``null`` with the reason. Results go to
``bench/results/tasks-<UTC timestamp>.{json,md}`` and ``tasks-latest.{json,md}``.

The peers' worker processes run this module too (``python -m bench.tasks
--peer-worker NAME``), so their job functions live here. The peers are imported
with ``importlib``: they are optional (``pip install -e '.[bench]'``) and the
type check has to pass without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec
from redis.asyncio import Redis

import axon
from axon.adapters.python import registered
from axon.chain import verify_chain
from axon.connection import open_store
from axon.events import Event, decode_event
from axon.queue import Queue
from axon.records import TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store

# isort: split
from common import (
    CONTENDED_SHARE,
    ROOT,
    ServerSample,
    arguments,
    at_least,
    at_most,
    cell,
    delete_matching,
    machine_cpu_s,
    machine_info,
    median_of,
    metric,
    metrics_markdown,
    package_version,
    percentile,
    plain_client,
    progress,
    publish,
    ratio,
    report_of,
    run_on_server,
    run_prefix,
    sample_server,
)

READY = "bench-peer-ready"
"""What a peer's worker process prints once it is connected and about to take jobs."""

TARGET_SAQ_RATIO = 2.0
"""PRODUCT.md: no-op task throughput >= 2 x SAQ on the same Redis."""
TARGET_ARQ_RATIO = 5.0
"""PRODUCT.md: no-op task throughput >= 5 x arq on the same Redis."""
TARGET_PICKUP_P99_MS = 5.0
"""PRODUCT.md: pickup latency (idle queue) p99 <= 5 ms."""
RESUME_SLACK_S = 1.0
"""PRODUCT.md: dead worker's task resumed elsewhere <= heartbeat (lease) timeout + 1 s."""
TARGET_CANCEL_P99_MS = 500.0
"""PRODUCT.md: cancel -> process gone p99 <= 500 ms."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How much work each measurement does."""

    tasks: int = 2000
    rounds: int = 3
    concurrency: int = 10
    producers: int = 1
    warmup: int = 100
    pickup_samples: int = 200
    arq_pickup_samples: int = 20
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    watchdog_s: float = 1.0
    resume_samples: int = 1
    cancel_samples: int = 20
    drain_rounds: int = 2

    @property
    def drain_tasks(self) -> int:
        """Tasks of one drain run: half of N, since every drain also starts a worker."""
        return max(1, self.tasks // 2)


DEFAULT_PLAN = Plan()
QUICK_PLAN = Plan(
    tasks=500,
    rounds=1,
    warmup=50,
    pickup_samples=50,
    arq_pickup_samples=5,
    heartbeat_s=0.5,
    lease_s=2.5,
    watchdog_s=0.25,
    cancel_samples=5,
    drain_rounds=1,
)

# -- job functions the peers' workers run ----------------------------------------------


async def saq_noop(ctx: Any) -> None:
    """SAQ's no-op job."""


async def saq_stamp(ctx: Any) -> float:
    """SAQ job returning the wall-clock time it started."""
    return time.time()


async def arq_noop(ctx: Any) -> None:
    """arq's no-op job."""


async def arq_stamp(ctx: Any) -> float:
    """arq job returning the wall-clock time it started."""
    return time.time()


def rq_noop() -> None:
    """RQ's no-op job (enqueued by its dotted path, ``bench.tasks.rq_noop``)."""


def celery_noop() -> None:
    """Celery's no-op task (registered as ``bench_noop``)."""


async def axon_stamp(ctx: Any) -> dict[str, float]:
    """Axon python task ``bench.stamp``: the wall-clock time the function started."""
    return {"t": time.time()}


# This file is imported twice in some processes (as __main__ and as bench.tasks).
if "bench.stamp" not in registered():
    axon.task("bench.stamp")(axon_stamp)


def peer(name: str) -> Any:
    """Import an optional peer library (``saq``, ``arq``, ``rq``, ``celery``) untyped."""
    return importlib.import_module(name)


def celery_app(url: str, name: str) -> Any:
    """The Celery app of client and worker: broker and results on ``url`` under ``name:``."""
    app = peer("celery").Celery(name, broker=url, backend=url)
    app.conf.update(
        broker_transport_options={"global_keyprefix": f"{name}:"},
        result_backend_transport_options={"global_keyprefix": f"{name}:"},
        task_default_queue=name,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name="bench_noop")(celery_noop)
    return app


def run_peer_worker(kind: str) -> int:
    """A peer's worker process, configured by ``BENCH_REDIS_URL``, ``BENCH_QUEUE`` and
    ``BENCH_CONCURRENCY``."""
    url = os.environ["BENCH_REDIS_URL"]
    name = os.environ["BENCH_QUEUE"]
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "10"))

    def ready(*_: Any, **__: Any) -> None:
        print(READY, flush=True)

    async def async_ready(ctx: Any) -> None:
        ready()

    if kind == "saq":
        saq = peer("saq")
        queue = saq.Queue.from_url(url, name=name)
        worker = saq.Worker(
            queue, functions=[saq_noop, saq_stamp], concurrency=concurrency, startup=async_ready
        )

        async def main() -> None:
            await queue.connect()
            await worker.start()

        asyncio.run(main())
    elif kind == "arq":
        arq_worker = peer("arq.worker")
        settings = peer("arq.connections").RedisSettings.from_dsn(url)
        arq_worker.Worker(
            functions=[arq_noop, arq_stamp],
            redis_settings=settings,
            queue_name=name,
            max_jobs=concurrency,
            on_startup=async_ready,
        ).run()
    elif kind == "rq":
        rq = peer("rq")
        connection = peer("redis").Redis.from_url(url)
        rq_queue = rq.Queue(name, connection=connection)
        rq_worker = rq.SimpleWorker([rq_queue], connection=connection, name=f"{name}-w")
        ready()
        rq_worker.work(logging_level="WARNING")
    elif kind == "celery":
        app = celery_app(url, name)
        peer("celery.signals").worker_ready.connect(ready, weak=False)
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency}",
                f"--queues={name}",
                f"--hostname={name}@%h",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    else:
        raise SystemExit(f"unknown peer {kind!r}")
    return 0


# -- worker processes -------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (and its reaped children), from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class WorkerProcess:
    """A worker process we started: its log, its readiness, its CPU time, its end."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (once started)."""
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        """Start the process, its output going to the log file."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start(self, marker: str, *, limit_s: float = 60.0) -> None:
        """Start the process and wait until its output contains ``marker``."""
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + limit_s
        while marker not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}: {self.tail(2)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {limit_s:.0f} s: {self.tail()}")
            await anyio.sleep(0.02)

    def output(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 8) -> str:
        """The last lines of its output, on one line."""
        return " | ".join(self.output().strip().splitlines()[-lines:])

    def cpu_s(self) -> float | None:
        """CPU seconds the process used so far."""
        return proc_cpu_s(self.pid) if self.process is not None else None

    def kill(self) -> None:
        """SIGKILL the process (not its group: a crash takes only the worker)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def wait_exit(self, limit_s: float) -> bool:
        """Wait up to ``limit_s`` for the process to end; True if it did."""
        if self.process is None:
            return True
        deadline = time.monotonic() + limit_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                return False
            await anyio.sleep(0.01)
        return True

    async def stop(self, limit_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL for the whole group if it does not end in ``limit_s``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        if not await self.wait_exit(limit_s):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await self.wait_exit(5.0)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``, with the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AXON_", "BENCH_"))}
    env.pop("REDIS_URL", None)
    # The checkout for ``bench.tasks`` and ``axon``; bench/ for ``common``, which
    # ``python bench/tasks.py`` finds as its script's directory but ``-m bench.tasks``
    # and ``axon worker --import bench.tasks`` do not.
    paths = [str(ROOT), str(ROOT / "bench"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


class Workers:
    """Starts and stops every worker process of the run; logs go to ``directory``."""

    def __init__(self, url: str, directory: Path, concurrency: int) -> None:
        self.url = url
        self.directory = directory
        self.concurrency = concurrency
        self.running: list[WorkerProcess] = []

    def axon(
        self,
        name: str,
        prefix: str,
        *,
        worker_id: str | None = None,
        extra_env: dict[str, str] | None = None,
        profile_to: Path | None = None,
    ) -> WorkerProcess:
        """An ``axon worker`` process on ``prefix`` (imports this module for ``bench.stamp``)."""
        head = [sys.executable]
        if profile_to is not None:
            head += ["-m", "cProfile", "-o", str(profile_to)]
        argv = [*head, "-m", "axon", "worker", "--import", "bench.tasks"]
        if worker_id is not None:
            argv += ["--id", worker_id]
        env = child_env(
            {
                "REDIS_URL": self.url,
                "AXON_KEY_PREFIX": prefix,
                "AXON_WORKER_CONCURRENCY": str(self.concurrency),
                **(extra_env or {}),
            }
        )
        return WorkerProcess(name, argv, env, self.directory / f"{name}.log")

    def peer(self, kind: str, queue: str) -> WorkerProcess:
        """A peer's worker process (this module with ``--peer-worker kind``)."""
        argv = [sys.executable, "-m", "bench.tasks", "--peer-worker", kind]
        env = child_env(
            {
                "BENCH_REDIS_URL": self.url,
                "BENCH_QUEUE": queue,
                "BENCH_CONCURRENCY": str(self.concurrency),
            }
        )
        return WorkerProcess(kind, argv, env, self.directory / f"{kind}-{queue[-12:]}.log")

    async def start(self, worker: WorkerProcess) -> WorkerProcess:
        """Start ``worker`` and wait until it is ready."""
        marker = "ready: lanes" if "axon" in worker.argv else READY
        self.running.append(worker)
        await worker.start(marker)
        return worker

    async def stop(self, worker: WorkerProcess) -> None:
        """Stop one worker."""
        await worker.stop()
        if worker in self.running:
            self.running.remove(worker)

    async def stop_all(self) -> None:
        """Stop every worker still running."""
        for worker in list(self.running):
            await self.stop(worker)


# -- measuring --------------------------------------------------------------------------


def distribution(samples: list[float], digits: int = 3) -> dict[str, Any]:
    """p50/p90/p99/max/mean of ``samples`` (milliseconds, or whatever they are)."""
    ordered = sorted(samples)
    if not ordered:
        return {"samples": 0}
    return {
        "samples": len(ordered),
        "p50": round(percentile(ordered, 0.50), digits),
        "p90": round(percentile(ordered, 0.90), digits),
        "p99": round(percentile(ordered, 0.99), digits),
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
        "mean": round(statistics.fmean(ordered), digits),
    }


class Meter:
    """Wall time, CPU (this process, a worker process, the server, everyone else) and the
    server's command counts between ``begin`` and ``end``."""

    def __init__(self, client: Redis, worker: WorkerProcess | None) -> None:
        self.client = client
        self.worker = worker
        self._worker0: float | None = None
        self._client0 = 0.0
        self._machine0: tuple[float, float] | None = None
        self._server0 = ServerSample(0.0, {})
        self._wall0 = 0.0

    async def begin(self) -> None:
        """Take the first reading."""
        self._server0 = await sample_server(self.client)
        self._worker0 = self.worker.cpu_s() if self.worker is not None else None
        self._machine0 = machine_cpu_s()
        self._client0 = time.process_time()
        self._wall0 = time.perf_counter()

    async def end(self, tasks: int) -> dict[str, Any]:
        """What was used since ``begin``, in total and per task."""
        wall = time.perf_counter() - self._wall0
        client = time.process_time() - self._client0
        machine1 = machine_cpu_s()
        worker_now = self.worker.cpu_s() if self.worker is not None else None
        server1 = await sample_server(self.client)
        worker = None if self._worker0 is None or worker_now is None else worker_now - self._worker0
        server = server1.cpu_s - self._server0.cpu_s
        other = steal = None
        if self._machine0 is not None and machine1 is not None:
            ours = client + (worker or 0.0) + server
            other = round(max(0.0, machine1[0] - self._machine0[0] - ours), 2)
            steal = round(machine1[1] - self._machine0[1], 2)
        calls0 = {name: calls for name, (calls, _) in self._server0.commands.items()}
        calls = {
            name: round((count - calls0.get(name, 0)) / max(tasks, 1), 2)
            for name, (count, _) in sorted(server1.commands.items())
            if name not in ("info",) and count > calls0.get(name, 0)
        }

        def per_task(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds / max(tasks, 1) * 1e6, 1)

        return {
            "client_cpu_s": round(client, 3),
            "worker_cpu_s": None if worker is None else round(worker, 3),
            "server_cpu_s": round(server, 3),
            "other_cpu_s": other,
            "steal_cpu_s": steal,
            "contended": (other or 0.0) + (steal or 0.0) > CONTENDED_SHARE * wall,
            "client_cpu_us_per_task": per_task(client),
            "worker_cpu_us_per_task": per_task(worker),
            "server_cpu_us_per_task": per_task(server),
            "server_calls_per_task": calls,
        }


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, limit_s: float, interval: float, what: str
) -> float:
    """Poll ``check`` every ``interval`` s until it is true; returns ``perf_counter()`` then."""
    deadline = time.perf_counter() + limit_s
    while not await check():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not done after {limit_s:.0f} s")
        await anyio.sleep(interval)
    return time.perf_counter()


def throughput_result(
    n: int, t0: float, t_enqueued: float, t_done: float, cpu: dict[str, Any]
) -> dict[str, Any]:
    """The figures of one throughput run."""
    return {
        "tasks": n,
        "tasks_per_s": round(n / (t_done - t0), 1),
        "enqueue_per_s": round(n / (t_enqueued - t0), 1),
        "enqueue_s": round(t_enqueued - t0, 3),
        "total_s": round(t_done - t0, 3),
        "drain_after_enqueue_s": round(t_done - t_enqueued, 3),
        **cpu,
    }


POLL_S = 0.005
"""How often completion is polled during a throughput run (one cheap round trip)."""


async def produce(n: int, producers: int, one: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Call ``one()`` ``n`` times from ``producers`` concurrent loops, each awaiting its
    calls one after another (1: a single sequential producer); returns the results."""
    if producers <= 1:
        return [await one() for _ in range(n)]
    results: list[Any] = []

    async def loop(count: int) -> None:
        for _ in range(count):
            results.append(await one())

    async with anyio.create_task_group() as tg:
        for i in range(producers):
            tg.start_soon(loop, n // producers + (1 if i < n % producers else 0))
    return results


DONE_TIMEOUT_S = 300.0


# -- 1. throughput: Axon ----------------------------------------------------------------

NOOP = TaskSpec(tenant="bench", adapter="mock", args={"count": 0})


async def axon_outstanding(queue: Queue) -> int:
    """Tasks in the lanes or in flight: zero once every submitted task finished.

    A task leaves the in-flight set (``Queue.release``) only after its terminal
    event was appended, and the claim script moves ids from a lane to the set in
    one script, so lanes + in-flight = 0 means all done.
    """
    keys = queue.keys
    async with plain_client(queue.store).pipeline(transaction=False) as pipe:
        for lane in queue.settings.lanes:
            pipe.llen(keys.lane(lane))
        pipe.zcard(keys.inflight())
        pipe.zcard(keys.delayed())
        counts = await pipe.execute()
    return sum(int(c) for c in counts)


async def axon_states(queue: Queue, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` are in each state (one pipeline of HGETs)."""
    async with plain_client(queue.store).pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hget(queue.keys.task(task_id), "state")
        states = await pipe.execute()
    counts: dict[str, int] = {}
    for state in states:
        name = state.decode() if isinstance(state, bytes) else str(state)
        counts[name] = counts.get(name, 0) + 1
    return counts


async def axon_drop(queue: Queue, ids: list[str]) -> None:
    """Delete the keys of finished tasks, so rounds do not pile up memory."""
    client = plain_client(queue.store)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        keys = [k for t in chunk for k in (queue.keys.task(t), queue.keys.events(t))]
        await client.unlink(*keys)


async def axon_throughput(
    queue: Queue, worker: WorkerProcess, n: int, producers: int = 1
) -> dict[str, Any]:
    """Submit ``n`` no-op mock tasks (``producers`` loops, each one after another), wait
    until all succeeded."""
    meter = Meter(plain_client(queue.store), worker)
    await meter.begin()
    t0 = time.perf_counter()
    ids = [r.id for r in await produce(n, producers, lambda: queue.submit(NOOP))]
    t_enqueued = time.perf_counter()

    async def done() -> bool:
        return await axon_outstanding(queue) == 0

    t_done = await wait_until(done, limit_s=DONE_TIMEOUT_S, interval=POLL_S, what="axon")
    cpu = await meter.end(n)
    states = await axon_states(queue, ids)
    if states.get(TaskState.SUCCEEDED.value) != n:
        raise RuntimeError(f"axon: not all tasks succeeded: {states}")
    await axon_drop(queue, ids)
    return throughput_result(n, t0, t_enqueued, t_done, cpu)


async def axon_warmup(queue: Queue, n: int) -> None:
    """Run ``n`` tasks through, unmeasured (connections, scripts, caches)."""
    ids = [(await queue.submit(NOOP)).id for _ in range(n)]

    async def done() -> bool:
        return await axon_outstanding(queue) == 0

    await wait_until(done, limit_s=60, interval=POLL_S, what="axon warm-up")
    await axon_drop(queue, ids)


# -- 1. throughput: SAQ -----------------------------------------------------------------


class SaqClient:
    """An SAQ queue client on ``name`` (keys ``saq:<name>:*`` and ``saq:job:<name>:*``)."""

    def __init__(self, url: str, name: str) -> None:
        self.queue: Any = peer("saq").Queue.from_url(url, name=name)

    async def close(self) -> None:
        """Disconnect."""
        await self.queue.disconnect()

    async def run(self, n: int, function: str = "saq_noop", producers: int = 1) -> list[str]:
        """Enqueue ``n`` jobs (``producers`` loops, each one after another); returns their
        keys."""
        jobs = await produce(n, producers, lambda: self.queue.enqueue(function))
        return [job.key for job in jobs]

    async def idle(self) -> bool:
        """True when no job is incomplete (queued, active or scheduled)."""
        return int(await self.queue.count("incomplete")) == 0

    async def statuses(self, keys: list[str]) -> dict[str, int]:
        """How many of the jobs are in each status."""
        counts: dict[str, int] = {}
        for job in await self.queue.jobs(keys):
            status = "missing" if job is None else str(getattr(job.status, "value", job.status))
            counts[status] = counts.get(status, 0) + 1
        return counts


async def saq_throughput(
    client: SaqClient, worker: WorkerProcess, redis: Redis, n: int, producers: int = 1
) -> dict[str, Any]:
    """SAQ: ``n`` no-op jobs enqueued as Axon's tasks are, until all complete."""
    meter = Meter(redis, worker)
    await meter.begin()
    t0 = time.perf_counter()
    keys = await client.run(n, producers=producers)
    t_enqueued = time.perf_counter()
    t_done = await wait_until(client.idle, limit_s=DONE_TIMEOUT_S, interval=POLL_S, what="saq")
    cpu = await meter.end(n)
    statuses = await client.statuses(keys)
    if statuses.get("complete") != n:
        raise RuntimeError(f"saq: not all jobs complete: {statuses}")
    return throughput_result(n, t0, t_enqueued, t_done, cpu)


# -- 1. throughput: arq -----------------------------------------------------------------


class ArqClient:
    """An arq pool on queue ``name``; job ids are ``<tag>-<n>`` so keys can be found."""

    def __init__(self, pool: Any, name: str, tag: str) -> None:
        self.pool = pool
        self.name = name
        self.tag = tag
        self._count = 0

    @classmethod
    async def connect(cls, url: str, name: str, tag: str) -> ArqClient:
        """Open the pool."""
        connections = peer("arq.connections")
        pool = await connections.create_pool(
            connections.RedisSettings.from_dsn(url), default_queue_name=name
        )
        return cls(pool, name, tag)

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.aclose()

    async def enqueue(self, function: str) -> Any:
        """Enqueue one job; returns arq's ``Job``."""
        self._count += 1
        job = await self.pool.enqueue_job(function, _job_id=f"{self.tag}-{self._count}")
        if job is None:
            raise RuntimeError("arq refused a job id")
        return job

    async def idle(self) -> bool:
        """True when the queue's sorted set is empty (arq removes a job when it finishes)."""
        return int(await self.pool.zcard(self.name)) == 0

    async def successes(self, ids: list[str]) -> int:
        """How many of the jobs have a successful result stored."""
        jobs = peer("arq.jobs")
        raws = await self.pool.mget([f"arq:result:{i}" for i in ids])
        return sum(1 for raw in raws if raw is not None and jobs.deserialize_result(raw).success)


async def arq_throughput(
    client: ArqClient, worker: WorkerProcess, redis: Redis, n: int, producers: int = 1
) -> dict[str, Any]:
    """arq: ``n`` no-op jobs enqueued as Axon's tasks are, until all finished."""
    meter = Meter(redis, worker)
    await meter.begin()
    t0 = time.perf_counter()
    ids = [job.job_id for job in await produce(n, producers, lambda: client.enqueue("arq_noop"))]
    t_enqueued = time.perf_counter()
    t_done = await wait_until(client.idle, limit_s=DONE_TIMEOUT_S, interval=POLL_S, what="arq")
    cpu = await meter.end(n)
    ok = await client.successes(ids)
    if ok != n:
        raise RuntimeError(f"arq: {ok} of {n} jobs succeeded")
    return throughput_result(n, t0, t_enqueued, t_done, cpu)


# -- 1. throughput: RQ and Celery (synchronous clients, run in a thread) ------------------


class SyncMeter:
    """A ``Meter`` used from a worker thread (the synchronous peers' clients)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def begin(self) -> None:
        """``Meter.begin`` on the event loop."""
        anyio.from_thread.run(self.meter.begin)

    def end(self, tasks: int) -> dict[str, Any]:
        """``Meter.end`` on the event loop."""
        return anyio.from_thread.run(self.meter.end, tasks)


def rq_throughput(
    url: str, name: str, tag: str, n: int, warmup: int, meter: SyncMeter
) -> dict[str, Any]:
    """RQ: ``n`` no-op jobs enqueued one after another until all are finished."""
    redis_mod, rq = peer("redis"), peer("rq")
    connection = redis_mod.Redis.from_url(url)
    queue = rq.Queue(name, connection=connection)
    finished = queue.finished_job_registry.key
    failed = queue.failed_job_registry.key

    def run(count: int, label: str) -> tuple[float, float, float]:
        before = int(connection.zcard(finished))
        meter.begin()
        t0 = time.perf_counter()
        for i in range(count):
            queue.enqueue("bench.tasks.rq_noop", job_id=f"{tag}-{label}-{i}")
        t_enqueued = time.perf_counter()
        deadline = t0 + DONE_TIMEOUT_S
        while int(connection.zcard(finished)) - before < count:
            if int(connection.zcard(failed)):
                raise RuntimeError("rq: a job failed")
            if time.perf_counter() > deadline:
                raise TimeoutError("rq: not done in time")
            time.sleep(POLL_S)
        return t0, t_enqueued, time.perf_counter()

    try:
        run(warmup, "w")
        t0, t_enqueued, t_done = run(n, "m")
        cpu = meter.end(n)
    finally:
        connection.srem("rq:queues", queue.key)  # RQ's global set of queues
        connection.close()
    return throughput_result(n, t0, t_enqueued, t_done, cpu)


def celery_throughput(url: str, name: str, n: int, warmup: int, meter: SyncMeter) -> dict[str, Any]:
    """Celery: ``n`` no-op tasks sent one after another until every result is SUCCESS."""
    app = celery_app(url, name)
    backend = app.backend
    client = backend.client

    def statuses(ids: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for i in range(0, len(ids), 1000):
            raws = client.mget([backend.get_key_for_task(t) for t in ids[i : i + 1000]])
            out += [None if raw is None else json.loads(raw)["status"] for raw in raws]
        return out

    def run(count: int) -> tuple[float, float, float]:
        meter.begin()
        t0 = time.perf_counter()
        ids = [app.send_task("bench_noop", queue=name).id for _ in range(count)]
        t_enqueued = time.perf_counter()
        deadline = t0 + DONE_TIMEOUT_S
        pending = ids
        while pending:
            # The last task's result first (one GET), then every result still missing.
            if statuses(pending[-1:]) == ["SUCCESS"]:
                states = statuses(pending)
                if any(s not in (None, "SUCCESS", "PENDING", "STARTED") for s in states):
                    raise RuntimeError(f"celery: a task ended {set(states)}")
                pending = [t for t, s in zip(pending, states, strict=True) if s != "SUCCESS"]
                if not pending:
                    break
            if time.perf_counter() > deadline:
                raise TimeoutError("celery: not done in time")
            time.sleep(POLL_S)
        return t0, t_enqueued, time.perf_counter()

    try:
        run(warmup)
        t0, t_enqueued, t_done = run(n)
        cpu = meter.end(n)
    finally:
        app.close()
    return throughput_result(n, t0, t_enqueued, t_done, cpu)


# -- 2. pickup latency ------------------------------------------------------------------


async def follow(
    store: Store, task_id: str, until: Callable[[Event], bool], *, limit_s: float = 30.0
) -> tuple[list[Event], float]:
    """Events of ``task_id`` until one matches ``until`` (blocking reads, no polling).

    Returns the events read and the ``perf_counter()`` when the match arrived.
    """
    events: list[Event] = []
    after = 0
    deadline = time.perf_counter() + limit_s
    while True:
        left_ms = int((deadline - time.perf_counter()) * 1000)
        if left_ms <= 0:
            raise TimeoutError(f"task {task_id}: no matching event after {limit_s:.0f} s")
        page = await store.wait_events(task_id, after_seq=after, timeout_ms=left_ms)
        seen = time.perf_counter()
        for stored in page:
            event = decode_event(stored.raw)
            events.append(event)
            after = event.seq
            if until(event):
                return events, seen


def terminal(event: Event) -> bool:
    """Whether ``event`` ends its task."""
    return event.kind in {s.value for s in TaskState if s.terminal}


async def axon_pickup(queue: Queue, samples: int) -> dict[str, Any]:
    """Idle worker; one ``bench.stamp`` python task at a time, waiting for each to finish.

    Per task: submit call -> ``claimed`` event ts (ms resolution) and submit call ->
    the function's own ``time.time()`` at its start.
    """
    spec = TaskSpec(tenant="bench", adapter="python", args={"function": "bench.stamp"})
    to_claimed: list[float] = []
    returned_to_claimed: list[float] = []
    to_start: list[float] = []
    ids = []
    for _ in range(samples + 5):  # the first 5 warm up, unrecorded
        await anyio.sleep(random.uniform(0.001, 0.005))  # let the worker park in its wait
        t_submit = time.time()
        record = await queue.submit(spec)
        t_returned = time.time()
        ids.append(record.id)
        events, _ = await follow(queue.store, record.id, terminal)
        claimed = next(e for e in events if e.kind == "claimed")
        end = events[-1]
        if end.kind != TaskState.SUCCEEDED.value:
            raise RuntimeError(f"pickup task ended {end.kind}: {end.data}")
        to_claimed.append(claimed.ts - t_submit * 1000)
        returned_to_claimed.append(claimed.ts - t_returned * 1000)
        to_start.append((float(end.data["result"]["t"]) - t_submit) * 1000)
    await axon_drop(queue, ids)
    return {
        "submit_to_claimed_ms": distribution(to_claimed[5:], 2),
        "submit_returned_to_claimed_ms": distribution(returned_to_claimed[5:], 2),
        "submit_to_function_start_ms": distribution(to_start[5:], 3),
    }


async def saq_pickup(client: SaqClient, samples: int) -> dict[str, Any]:
    """Idle SAQ worker; one ``saq_stamp`` job at a time: enqueue call -> job start."""
    out: list[float] = []
    for _ in range(samples + 5):
        await anyio.sleep(random.uniform(0.001, 0.005))
        t_enqueue = time.time()
        job = await client.queue.enqueue("saq_stamp")
        while True:
            await anyio.sleep(0.002)
            await job.refresh()
            if job.completed:
                break
        if job.result is None:
            raise RuntimeError(f"saq pickup job ended {job.status}: {job.error}")
        out.append((float(job.result) - t_enqueue) * 1000)
    return {"enqueue_to_job_start_ms": distribution(out[5:], 3)}


async def arq_pickup(client: ArqClient, samples: int) -> dict[str, Any]:
    """Idle arq worker; one ``arq_stamp`` job at a time: enqueue call -> job start.

    arq's worker looks for jobs every ``poll_delay`` (0.5 s): a random pause before
    each job keeps the samples from locking onto its polling phase.
    """
    out: list[float] = []
    for _ in range(samples + 2):
        await anyio.sleep(random.uniform(0.001, 0.5))
        t_enqueue = time.time()
        job = await client.enqueue("arq_stamp")
        # Not job.result(): arq 0.25 reads the result and the queue outside one
        # transaction and raises ResultNotFound when the job finishes in between.
        deadline = time.monotonic() + 30
        while (info := await job.result_info()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("arq pickup job did not finish in 30 s")
            await anyio.sleep(0.002)
        if not info.success:
            raise RuntimeError(f"arq pickup job failed: {info.result!r}")
        out.append((float(info.result) - t_enqueue) * 1000)
    return {"enqueue_to_job_start_ms": distribution(out[2:], 3)}


# -- 3. dead worker resumed elsewhere ----------------------------------------------------


async def resume_sample(
    store: Store, workers: Workers, plan: Plan, prefix: str, index: int
) -> dict[str, Any]:
    """Worker A runs a long mock task; SIGKILL A right after a heartbeat; B takes over."""
    queue = Queue(store)
    env = {
        "AXON_HEARTBEAT_INTERVAL_S": str(plan.heartbeat_s),
        "AXON_LEASE_TIMEOUT_S": str(plan.lease_s),
        "AXON_WATCHDOG_INTERVAL_S": str(plan.watchdog_s),
    }
    a_id, b_id = f"bench-A{index}", f"bench-B{index}"  # the key prefix is the run's own
    a = await workers.start(workers.axon(f"axon-A{index}", prefix, worker_id=a_id, extra_env=env))
    spec = TaskSpec(
        tenant="bench",
        adapter="mock",
        args={"forever": True, "interval_ms": 50},
        max_attempts=3,
    )
    record = await queue.submit(spec)
    task_id = record.id
    await follow(store, task_id, lambda e: e.kind == "tick" and e.data.get("i") == 3)
    b = await workers.start(workers.axon(f"axon-B{index}", prefix, worker_id=b_id, extra_env=env))
    # Kill right after a heartbeat renewed the lease: the worst case, a whole lease to wait.
    deadline0 = (await store.get_task(task_id)).lease_deadline_ms

    async def renewed() -> bool:
        return (await store.get_task(task_id)).lease_deadline_ms != deadline0

    await wait_until(renewed, limit_s=plan.heartbeat_s * 3, interval=0.002, what="heartbeat")
    lease_deadline = (await store.get_task(task_id)).lease_deadline_ms or 0
    t_kill = time.time()
    a.kill()
    await a.wait_exit(5.0)
    workers.running.remove(a)
    events, _ = await follow(
        store,
        task_id,
        lambda e: e.kind == "claimed" and e.data.get("worker") == b_id,
        limit_s=plan.lease_s * 3 + 10,
    )
    claimed_b = events[-1]
    reclaimed = next(e for e in events if e.kind == "reclaimed")
    more, _ = await follow(store, task_id, lambda e: e.kind == "tick" and e.seq > claimed_b.seq)
    first_tick_b = more[-1]
    await queue.cancel(task_id)
    await follow(store, task_id, terminal)
    await workers.stop(b)
    raws = [event.raw async for event in store.iter_events(task_id)]
    head = await store.head(task_id)
    verify_chain(raws, task=task_id, expected_head=head)
    decoded = [decode_event(raw) for raw in raws]
    seqs = [e.seq for e in decoded]
    duplicates = len(seqs) - len(set(seqs))
    if seqs != list(range(1, len(seqs) + 1)) or duplicates:
        raise RuntimeError(f"resume: seqs are not 1..n without duplicates: {seqs[:20]}...")
    after_kill_by_a = [
        e
        for e in decoded
        if e.ts > t_kill * 1000 + 1 and e.kind == "tick" and e.seq < claimed_b.seq
    ]
    claims = [e for e in decoded if e.kind == "claimed"]
    return {
        "task_id": task_id,
        "kill_to_claimed_s": round(claimed_b.ts / 1000 - t_kill, 3),
        "kill_to_reclaimed_s": round(reclaimed.ts / 1000 - t_kill, 3),
        "kill_to_first_tick_s": round(first_tick_b.ts / 1000 - t_kill, 3),
        "lease_left_at_kill_s": round(lease_deadline / 1000 - t_kill, 3),
        "epochs": [c.data.get("epoch") for c in claims],
        "claimed_by": [c.data.get("worker") for c in claims],
        "events": len(decoded),
        "head_seq": head.seq,
        "chain_verified": True,
        "duplicate_seqs": duplicates,
        "events_by_dead_worker_after_kill": len(after_kill_by_a),
        "final_state": decoded[-1].kind,
    }


# -- 4. cancel latency ------------------------------------------------------------------


def pgrep(marker: str) -> list[int]:
    """Pids whose command line contains ``marker``."""
    done = subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False)
    return [int(x) for x in done.stdout.split()]


def open_pidfds(pids: list[int]) -> list[int]:
    """A pidfd for each pid still alive: readable once that process has exited."""
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    return fds


async def wait_exited(fds: list[int]) -> float:
    """Wait until every pidfd is readable; returns ``perf_counter()`` then. Closes them."""
    try:
        for fd in fds:
            await anyio.wait_readable(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return time.perf_counter()


async def shell_usable(store: Store) -> tuple[bool, str]:
    """Whether a ``shell`` task runs on this worker; if not, why."""
    try:
        importlib.import_module("axon.adapters.shell")
    except Exception as exc:
        return False, f"axon.adapters.shell is not importable: {exc!r}"
    if shutil.which("bwrap") is None:
        return False, "bubblewrap (bwrap) is not installed"
    if shutil.which("pgrep") is None:
        return False, "pgrep is not installed"
    queue = Queue(store)
    record = await queue.submit(TaskSpec(tenant="bench", adapter="shell", args={"argv": ["true"]}))
    events, _ = await follow(store, record.id, terminal)
    if events[-1].kind != TaskState.SUCCEEDED.value:
        return False, f"a probe shell task ended {events[-1].kind}: {events[-1].data}"
    return True, "shell adapter, sandboxed with bubblewrap (AXON_SHELL_SANDBOX=required)"


async def cancel_samples(store: Store, samples: int, *, shell: bool) -> dict[str, Any]:
    """Cancel a running task ``samples`` times: -> ``canceled`` event and -> process gone."""
    queue = Queue(store)
    to_event: list[float] = []
    to_event_ts: list[float] = []
    to_gone: list[float] = []
    leftovers = 0
    run_digits = f"{random.randrange(10**6):06d}"
    for i in range(samples):
        marker = f"{600 + i}.{run_digits}"  # a unique `sleep` argument to find the process by
        if shell:
            spec = TaskSpec(tenant="bench", adapter="shell", args={"argv": ["sleep", marker]})
        else:
            spec = TaskSpec(
                tenant="bench", adapter="mock", args={"forever": True, "interval_ms": 50}
            )
        record = await queue.submit(spec)
        await follow(store, record.id, lambda e: e.kind == "claimed")
        pids: list[int] = []
        if shell:
            deadline = time.monotonic() + 20
            while not (pids := pgrep(marker)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no process with {marker!r} 20 s after the claim")
                await anyio.sleep(0.005)
            await anyio.sleep(0.05)  # the sandbox is fully up
            pids = pgrep(marker)
        else:
            await follow(store, record.id, lambda e: e.kind == "tick")
        gone: list[float] = []
        fds = open_pidfds(pids)  # before the cancel, so no exit can be missed

        async def watch_processes(fds: list[int] = fds, gone: list[float] = gone) -> None:
            gone.append(await wait_exited(fds))

        async with anyio.create_task_group() as tg:
            if shell:
                tg.start_soon(watch_processes)
            t_wall = time.time()
            t0 = time.perf_counter()
            state = await queue.cancel(record.id)
            if state is not TaskState.RUNNING:
                raise RuntimeError(f"cancel found the task {state.value}, expected running")
            events, seen = await follow(store, record.id, terminal, limit_s=30)
        end = events[-1]
        if end.kind != TaskState.CANCELED.value:
            raise RuntimeError(f"cancelled task ended {end.kind}: {end.data}")
        to_event.append((seen - t0) * 1000)
        to_event_ts.append(end.ts - t_wall * 1000)
        if shell:
            to_gone.append((gone[0] - t0) * 1000)
            leftovers += len(pgrep(marker))
    result: dict[str, Any] = {
        "cancel_to_canceled_event_ms": distribution(to_event, 2),
        "cancel_to_canceled_event_ts_ms": distribution(to_event_ts, 2),
    }
    if shell:
        result["cancel_to_process_gone_ms"] = distribution(to_gone, 2)
        result["processes_left_after_canceled"] = leftovers
    return result


# -- the run ----------------------------------------------------------------------------


def failure(name: str, exc: BaseException) -> dict[str, Any]:
    """A measurement that could not be made, and why."""
    reason = f"{type(exc).__name__}: {exc}"
    progress(f"{name}: not measured: {reason}")
    return {"error": reason}


class Peers:
    """Clients of the async peers whose workers stay up for phases 1 and 2."""

    def __init__(self) -> None:
        self.saq: SaqClient | None = None
        self.arq: ArqClient | None = None
        self.saq_worker: WorkerProcess | None = None
        self.arq_worker: WorkerProcess | None = None
        self.errors: dict[str, str] = {}

    async def start(self, workers: Workers, url: str, tag: str) -> None:
        """Start SAQ's and arq's workers and clients; a failure is recorded, not raised."""
        try:
            self.saq_worker = await workers.start(workers.peer("saq", f"{tag}-saq"))
            self.saq = SaqClient(url, f"{tag}-saq")
        except Exception as exc:
            self.errors["saq"] = failure("saq", exc)["error"]
        try:
            self.arq_worker = await workers.start(workers.peer("arq", f"{tag}:arq:queue"))
            self.arq = await ArqClient.connect(url, f"{tag}:arq:queue", f"{tag}-arq")
        except Exception as exc:
            self.errors["arq"] = failure("arq", exc)["error"]

    async def close(self) -> None:
        """Close the clients."""
        if self.saq is not None:
            await self.saq.close()
        if self.arq is not None:
            await self.arq.close()


async def throughput_rounds(
    queue: Queue, axon_worker: WorkerProcess, peers: Peers, redis: Redis, plan: Plan
) -> dict[str, Any]:
    """Axon, SAQ and arq in turn, ``plan.rounds`` times; medians over rounds."""
    n = plan.tasks
    progress(f"(1) warm-up: {plan.warmup} tasks each ...")
    await axon_warmup(queue, plan.warmup)
    if peers.saq is not None and peers.saq_worker is not None:
        await saq_throughput(peers.saq, peers.saq_worker, redis, plan.warmup)
    if peers.arq is not None and peers.arq_worker is not None:
        await arq_throughput(peers.arq, peers.arq_worker, redis, plan.warmup)
    rounds: list[dict[str, Any]] = []
    for index in range(1, plan.rounds + 1):
        tag = f"round {index}/{plan.rounds}"
        row: dict[str, Any] = {"round": index}
        progress(f"(1) {tag}: axon, {n:,} no-op tasks ...")
        row["axon"] = await axon_throughput(queue, axon_worker, n, plan.producers)
        progress(f"(1) {tag}: axon {_rate(row['axon'])}")
        if peers.saq is not None and peers.saq_worker is not None:
            progress(f"(1) {tag}: saq, {n:,} no-op jobs ...")
            try:
                row["saq"] = await saq_throughput(
                    peers.saq, peers.saq_worker, redis, n, plan.producers
                )
                progress(f"(1) {tag}: saq {_rate(row['saq'])}")
            except Exception as exc:
                row["saq"] = failure("saq", exc)
        if peers.arq is not None and peers.arq_worker is not None:
            progress(f"(1) {tag}: arq, {n:,} no-op jobs ...")
            try:
                row["arq"] = await arq_throughput(
                    peers.arq, peers.arq_worker, redis, n, plan.producers
                )
                progress(f"(1) {tag}: arq {_rate(row['arq'])}")
            except Exception as exc:
                row["arq"] = failure("arq", exc)
        rounds.append(row)
    clean = [
        r
        for r in rounds
        if all("tasks_per_s" in r.get(k, {}) and not r[k]["contended"] for k in ("axon", "saq"))
    ]
    summary: dict[str, Any] = {
        "uncontended": {
            "rounds": len(clean),
            "axon": median_of([r["axon"]["tasks_per_s"] for r in clean]),
            "saq": median_of([r["saq"]["tasks_per_s"] for r in clean]),
        },
        "rounds": rounds,
        "contended_runs": sum(
            1 for r in rounds for k, v in r.items() if k != "round" and v.get("contended")
        ),
    }
    for name in ("axon", "saq", "arq"):
        figures = [r[name] for r in rounds if name in r and "tasks_per_s" in r[name]]
        if not figures:
            error = peers.errors.get(name) or next(
                (r[name]["error"] for r in rounds if name in r), "not measured"
            )
            summary[name] = {"tasks_per_s": None, "error": error}
            continue
        summary[name] = {
            key: median_of([f.get(key) for f in figures])
            for key in (
                "tasks_per_s",
                "enqueue_per_s",
                "client_cpu_us_per_task",
                "worker_cpu_us_per_task",
                "server_cpu_us_per_task",
            )
        }
        summary[name]["server_calls_per_task"] = figures[-1]["server_calls_per_task"]
    return summary


async def axon_drain(store: Store, workers: Workers, n: int, prefix: str) -> dict[str, Any]:
    """Submit ``n`` no-op tasks with no worker running, then start one and let it drain them.

    The rate is ``n`` over first ``started_ms`` .. last ``finished_ms`` of the task
    records: the worker's own clock, without enqueue cost or process start-up.
    """
    async with open_store(replace_prefix(store.settings, prefix)) as drain_store:
        queue = Queue(drain_store)
        ids = [(await queue.submit(NOOP)).id for _ in range(n)]
        worker = await workers.start(workers.axon("axon-drain", prefix))
        try:

            async def done() -> bool:
                return await axon_outstanding(queue) == 0

            await wait_until(done, limit_s=DONE_TIMEOUT_S, interval=0.02, what="axon drain")
        finally:
            await workers.stop(worker)
        async with plain_client(drain_store).pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(queue.keys.task(task_id), ["state", "started_ms", "finished_ms"])
            rows = await pipe.execute()
        await axon_drop(queue, ids)
    if any(row[0] != b"succeeded" for row in rows):
        raise RuntimeError("axon drain: not every task succeeded")
    first = min(int(row[1]) for row in rows) / 1000
    last = max(int(row[2]) for row in rows) / 1000
    return drain_result(n, first, last)


def drain_result(n: int, first_start: float, last_finish: float) -> dict[str, Any]:
    """The figures of one drain run (times in seconds)."""
    span = max(last_finish - first_start, 1e-3)
    return {"tasks": n, "tasks_per_s": round(n / span, 1), "span_s": round(span, 3)}


async def saq_drain(workers: Workers, url: str, n: int, name: str) -> dict[str, Any]:
    """SAQ's drain of ``n`` pre-enqueued no-op jobs: first ``started`` .. last ``completed``."""
    client = SaqClient(url, name)
    try:
        keys = await client.run(n)
        worker = await workers.start(workers.peer("saq", name))
        try:
            await wait_until(client.idle, limit_s=DONE_TIMEOUT_S, interval=0.02, what="saq drain")
        finally:
            await workers.stop(worker)
        jobs = await client.queue.jobs(keys)
    finally:
        await client.close()
    if any(
        job is None or str(getattr(job.status, "value", job.status)) != "complete" for job in jobs
    ):
        raise RuntimeError("saq drain: not every job completed")
    return drain_result(
        n, min(job.started for job in jobs) / 1000, max(job.completed for job in jobs) / 1000
    )


async def arq_drain(workers: Workers, url: str, n: int, name: str, tag: str) -> dict[str, Any]:
    """arq's drain of ``n`` pre-enqueued no-op jobs: first start .. last finish (results)."""
    client = await ArqClient.connect(url, name, tag)
    try:
        ids = [(await client.enqueue("arq_noop")).job_id for _ in range(n)]
        worker = await workers.start(workers.peer("arq", name))
        try:
            await wait_until(client.idle, limit_s=DONE_TIMEOUT_S, interval=0.02, what="arq drain")
        finally:
            await workers.stop(worker)
        jobs = peer("arq.jobs")
        raws = await client.pool.mget([f"arq:result:{i}" for i in ids])
    finally:
        await client.close()
    results = [jobs.deserialize_result(raw) for raw in raws if raw is not None]
    if len(results) != n or not all(r.success for r in results):
        raise RuntimeError("arq drain: not every job succeeded")
    return drain_result(
        n,
        min(r.start_time.timestamp() for r in results),
        max(r.finish_time.timestamp() for r in results),
    )


async def drain_phase(
    store: Store, workers: Workers, url: str, plan: Plan, tag: str
) -> dict[str, Any]:
    """(1b) Axon, SAQ and arq in turn each drain a pre-filled queue of ``plan.drain_tasks``
    no-op tasks, ``plan.drain_rounds`` times; medians over rounds."""
    n = plan.drain_tasks
    rounds: dict[str, list[dict[str, Any]]] = {"axon": [], "saq": [], "arq": []}
    for index in range(1, plan.drain_rounds + 1):
        runs: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "axon": partial(axon_drain, store, workers, n, f"{tag}-drain{index}"),
            "saq": partial(saq_drain, workers, url, n, f"{tag}-saq-drain{index}"),
            "arq": partial(
                arq_drain, workers, url, n, f"{tag}:arq:drain{index}", f"{tag}-arqd{index}"
            ),
        }
        for name, go in runs.items():
            progress(
                f"(1b) round {index}/{plan.drain_rounds}: {name}, {n:,} tasks queued before "
                "its worker starts ..."
            )
            meter = Meter(plain_client(store), None)
            try:
                await meter.begin()
                result = await go()
                usage = await meter.end(n)
                result["steal_cpu_s"] = usage["steal_cpu_s"]
                progress(
                    f"(1b) {name}: {result['tasks_per_s']:,.0f} tasks/s ({result['span_s']} s; "
                    f"{result['steal_cpu_s']} s CPU stolen during enqueue + drain)"
                )
            except Exception as exc:
                result = {"tasks_per_s": None, **failure(f"{name} drain", exc)}
            rounds[name].append(result)
    out: dict[str, Any] = {}
    for name, results in rounds.items():
        rates = [r["tasks_per_s"] for r in results]
        errors = [r["error"] for r in results if "error" in r]
        out[name] = {"tasks_per_s": median_of(rates), "rounds": results}
        if errors and out[name]["tasks_per_s"] is None:
            out[name]["error"] = errors[0]
    return out


def _rate(result: dict[str, Any]) -> str:
    return (
        f"{result['tasks_per_s']:,.0f} tasks/s end to end "
        f"(enqueue alone {result['enqueue_per_s']:,.0f}/s; "
        f"CPU us/task: worker {result.get('worker_cpu_us_per_task')}, server "
        f"{result.get('server_cpu_us_per_task')}, client {result.get('client_cpu_us_per_task')})"
    )


async def sync_peer(
    workers: Workers,
    redis: Redis,
    kind: str,
    queue_name: str,
    work: Callable[[SyncMeter], dict[str, Any]],
) -> dict[str, Any]:
    """Start ``kind``'s worker, run the synchronous ``work`` in a thread, stop the worker."""
    try:
        worker = await workers.start(workers.peer(kind, queue_name))
    except Exception as exc:
        return failure(kind, exc)
    try:
        meter = SyncMeter(Meter(redis, worker))
        return await anyio.to_thread.run_sync(work, meter)
    except Exception as exc:
        return failure(kind, exc)
    finally:
        await workers.stop(worker)


async def run(
    target_url: str, plan: Plan, *, quick: bool, profile: bool, logs: Path, embedded: bool
) -> dict[str, Any]:
    """Every measurement against the server at ``target_url``; returns the report."""
    started = datetime.now(UTC).replace(microsecond=0)
    tag = run_prefix()
    settings = Settings(redis_url=target_url, key_prefix=tag)
    results: dict[str, Any] = {}
    workers = Workers(target_url, logs, plan.concurrency)
    peers = Peers()
    async with open_store(settings) as store:
        redis = plain_client(store)
        queue = Queue(store)
        try:
            machine = await machine_info(
                store,
                embedded=embedded,
                versions={
                    name: package_version(name)
                    for name in ("redis", "hiredis", "anyio", "saq", "arq", "rq", "celery", "kombu")
                },
            )
            progress(
                f"{machine['server']} {machine['server_version']} at {target_url}; "
                f"key tag {tag}; load average {machine['loadavg']}"
            )
            progress(f"starting workers: axon, saq, arq (concurrency {plan.concurrency}) ...")
            axon_worker = await workers.start(workers.axon("axon", tag))
            await peers.start(workers, target_url, tag)

            results["throughput"] = await throughput_rounds(queue, axon_worker, peers, redis, plan)
            results["drain"] = await drain_phase(store, workers, target_url, plan, tag)
            n = plan.tasks
            progress(f"(1) rq: {n:,} no-op jobs, 1 SimpleWorker process ...")
            results["throughput"]["rq"] = rq = await sync_peer(
                workers,
                redis,
                "rq",
                f"{tag}-rq",
                lambda m: rq_throughput(target_url, f"{tag}-rq", f"{tag}-rq", n, plan.warmup, m),
            )
            if "tasks_per_s" in rq:
                progress(f"(1) rq {_rate(rq)}")
            progress(
                f"(1) celery: {n:,} no-op tasks, 1 worker process, {plan.concurrency} threads ..."
            )
            results["throughput"]["celery"] = cel = await sync_peer(
                workers,
                redis,
                "celery",
                f"{tag}-celery",
                lambda m: celery_throughput(target_url, f"{tag}-celery", n, plan.warmup, m),
            )
            if "tasks_per_s" in cel:
                progress(f"(1) celery {_rate(cel)}")

            progress(f"(2) pickup: axon, {plan.pickup_samples} sequential python tasks ...")
            results["pickup"] = {"axon": await axon_pickup(queue, plan.pickup_samples)}
            pick = results["pickup"]["axon"]
            progress(
                f"(2) axon: submit -> claimed p50 {pick['submit_to_claimed_ms']['p50']} ms, "
                f"p99 {pick['submit_to_claimed_ms']['p99']} ms; submit -> function start "
                f"p50 {pick['submit_to_function_start_ms']['p50']} ms, "
                f"p99 {pick['submit_to_function_start_ms']['p99']} ms"
            )
            if peers.saq is not None:
                progress(f"(2) pickup: saq, {plan.pickup_samples} sequential jobs ...")
                try:
                    results["pickup"]["saq"] = await saq_pickup(peers.saq, plan.pickup_samples)
                    d = results["pickup"]["saq"]["enqueue_to_job_start_ms"]
                    progress(f"(2) saq: enqueue -> start p50 {d['p50']} ms, p99 {d['p99']} ms")
                except Exception as exc:
                    results["pickup"]["saq"] = failure("saq pickup", exc)
            if peers.arq is not None:
                progress(
                    f"(2) pickup: arq, {plan.arq_pickup_samples} sequential jobs "
                    "(its worker polls every 0.5 s by default) ..."
                )
                try:
                    results["pickup"]["arq"] = await arq_pickup(peers.arq, plan.arq_pickup_samples)
                    d = results["pickup"]["arq"]["enqueue_to_job_start_ms"]
                    progress(f"(2) arq: enqueue -> start p50 {d['p50']} ms, p99 {d['p99']} ms")
                except Exception as exc:
                    results["pickup"]["arq"] = failure("arq pickup", exc)
            if profile:
                results["profile"] = await profile_worker(queue, workers, plan, tag, axon_worker)
            await workers.stop(axon_worker)
            await stop_peers(peers, workers)

            results["resume"] = await resume_phase(store, workers, plan, tag)
            results["cancel"] = await cancel_phase(store, workers, plan, tag)
        finally:
            with anyio.CancelScope(shield=True):
                await stop_peers(peers, workers)
                await workers.stop_all()
                deleted = await delete_matching(redis, f"*{tag}*")
            progress(f"deleted {deleted} keys matching *{tag}*")
    report = report_of(
        "tasks",
        started,
        quick=quick,
        plan=asdict(plan) | {"drain_tasks": plan.drain_tasks},
        machine=machine,
        results=results,
    )
    report["metrics"] = metrics_table(report["results"], plan)
    return report


async def stop_peers(peers: Peers, workers: Workers) -> None:
    """Close the async peers' clients and stop their workers (idempotent)."""
    await peers.close()
    peers.saq = peers.arq = None
    for worker in (peers.saq_worker, peers.arq_worker):
        if worker is not None:
            await workers.stop(worker)
    peers.saq_worker = peers.arq_worker = None


async def resume_phase(store: Store, workers: Workers, plan: Plan, tag: str) -> dict[str, Any]:
    """(3) on its own key prefix, so no other worker can take the task."""
    prefix = f"{tag}-resume"
    settings = replace_prefix(store.settings, prefix)
    samples: list[dict[str, Any]] = []
    progress(
        f"(3) resume: heartbeat {plan.heartbeat_s} s, lease {plan.lease_s} s, watchdog "
        f"{plan.watchdog_s} s; {plan.resume_samples} sample(s), kill right after a heartbeat ..."
    )
    try:
        async with open_store(settings) as resume_store:
            for index in range(plan.resume_samples):
                sample = await resume_sample(resume_store, workers, plan, prefix, index)
                samples.append(sample)
                progress(
                    f"(3) kill -> reclaimed {sample['kill_to_reclaimed_s']} s, -> claimed by B "
                    f"{sample['kill_to_claimed_s']} s, -> first tick by B "
                    f"{sample['kill_to_first_tick_s']} s (lease had "
                    f"{sample['lease_left_at_kill_s']} s left); chain verified, "
                    f"{sample['duplicate_seqs']} duplicate seqs"
                )
    except Exception as exc:
        return {**failure("resume", exc), "samples": samples}
    return {
        "heartbeat_interval_s": plan.heartbeat_s,
        "lease_timeout_s": plan.lease_s,
        "watchdog_interval_s": plan.watchdog_s,
        "kill_to_claimed_s_max": max(s["kill_to_claimed_s"] for s in samples),
        "samples": samples,
    }


async def cancel_phase(store: Store, workers: Workers, plan: Plan, tag: str) -> dict[str, Any]:
    """(4) on its own key prefix and worker."""
    prefix = f"{tag}-cancel"
    settings = replace_prefix(store.settings, prefix)
    try:
        worker = await workers.start(workers.axon("axon-cancel", prefix))
    except Exception as exc:
        return failure("cancel", exc)
    try:
        async with open_store(settings) as cancel_store:
            shell, how = await shell_usable(cancel_store)
            if not shell:
                how = f"mock forever task instead of a shell task: {how}"
            progress(f"(4) cancel: {plan.cancel_samples} samples; {how} ...")
            result = await cancel_samples(cancel_store, plan.cancel_samples, shell=shell)
    except Exception as exc:
        return failure("cancel", exc)
    finally:
        await workers.stop(worker)
    result["task"] = "shell" if shell else "mock"
    result["how"] = how
    ev = result["cancel_to_canceled_event_ms"]
    line = f"(4) cancel -> canceled event p50 {ev['p50']} ms, p99 {ev['p99']} ms"
    if shell:
        gone = result["cancel_to_process_gone_ms"]
        line += f"; -> process gone p50 {gone['p50']} ms, p99 {gone['p99']} ms"
    progress(line)
    return result


def replace_prefix(settings: Settings, prefix: str) -> Settings:
    """``settings`` with another key prefix."""
    return msgspec.structs.replace(settings, key_prefix=prefix)


PROFILE_STEPS = {
    ("axon/worker.py", "_claim_loop"): "claim loops (claim_batch + waiting for work)",
    ("axon/queue.py", "claim_batch"): "  queue.claim_batch (script: free slots, records)",
    ("axon/queue.py", "wait_for_work"): "  queue.wait_for_work (XREAD BLOCK on the signal stream)",
    ("axon/worker.py", "_run_task"): "one task, claim to release (_run_task)",
    ("axon/worker.py", "_claim"): "  worker._claim (record, 'claimed' append)",
    ("axon/store.py", "get_task"): "  store.get_task (HGETALL; a cluster, the claim reads it here)",
    ("axon/records.py", "from_hash"): "  TaskRecord.from_hash (the claimed record)",
    ("axon/store.py", "head"): "  store.head (writer reads the head before its first append)",
    ("axon/writer.py", "transition"): "  writer.transition ('claimed'; finish() calls it too)",
    ("axon/queue.py", "extend"): "  queue.extend (ZADD in-flight deadline)",
    ("axon/worker.py", "_execute"): "  worker._execute (the mock adapter)",
    ("axon/writer.py", "finish"): "  writer.finish ('succeeded' append)",
    ("axon/queue.py", "release"): "  queue.release (ZREM in-flight)",
    ("axon/autopipeline.py", "_flush"): "auto-pipeline flushes (one round trip each)",
    ("axon/worker.py", "_heartbeat_loop"): "heartbeat loop",
    ("axon/worker.py", "_watchdog_loop"): "watchdog loop",
    ("redis/asyncio/client.py", "execute_command"): "redis-py execute_command (every call)",
    ("redis/asyncio/connection.py", "get_connection"): "  redis-py pool get_connection",
    ("redis/asyncio/connection.py", "release"): "  redis-py pool release",
}


def profile_breakdown(path: Path, tasks: int) -> dict[str, Any]:
    """Cumulative CPU per task of the worker's steps, from a cProfile file (us, profiled)."""
    import pstats

    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    raw = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    steps: dict[str, Any] = {}
    for (suffix, func), label in PROFILE_STEPS.items():
        calls, cum = 0, 0.0
        for (filename, _, name), (_, ncalls, _, cumtime, _) in raw.items():
            if name == func and filename.endswith(suffix):
                calls += ncalls
                cum += cumtime
        steps[label] = {
            "us_per_task": round(cum / tasks * 1e6, 1),
            "calls_or_resumes_per_task": round(calls / tasks, 2),
        }
    own = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:20]
    top = [
        {
            "function": f"{Path(filename).name}:{line}({name})",
            "own_us_per_task": round(tottime / tasks * 1e6, 1),
            "calls_per_task": round(ncalls / tasks, 2),
        }
        for (filename, line, name), (_, ncalls, tottime, _, _) in own
    ]
    return {"steps": steps, "top_own_time": top}


async def profile_worker(
    queue: Queue, workers: Workers, plan: Plan, tag: str, main_worker: WorkerProcess
) -> dict[str, Any]:
    """One more Axon throughput run with the worker under cProfile (not a measurement)."""
    await workers.stop(main_worker)
    out = workers.directory / "axon-worker.prof"
    worker = await workers.start(workers.axon("axon-profiled", tag, profile_to=out))
    progress(
        f"profiling the axon worker over {plan.tasks:,} tasks (cProfile, not a measurement) ..."
    )
    result = await axon_throughput(queue, worker, plan.tasks)
    await workers.stop(worker)
    breakdown = profile_breakdown(out, plan.tasks)
    progress(
        "worker CPU per task under cProfile (us, cumulative):\n"
        + "\n".join(
            f"    {v['us_per_task']:>8} us  {label}" for label, v in breakdown["steps"].items()
        )
    )
    return {"profiled_run": result, **breakdown}


# -- report -----------------------------------------------------------------------------


def metrics_table(results: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Rows of the summary: metric, ours, reference, ratio, target, met."""
    rows: list[dict[str, Any]] = []

    def add(
        name: str, ours: Any, reference: Any = None, target: str = "", met: bool | None = None
    ) -> None:
        rows.append(metric(name, ours, reference, target, met))

    tp = results.get("throughput", {})
    drain = results.get("drain", {})
    ours = tp.get("axon", {}).get("tasks_per_s")
    ours_drain = drain.get("axon", {}).get("tasks_per_s")
    for name, wanted in (("saq", TARGET_SAQ_RATIO), ("arq", TARGET_ARQ_RATIO)):
        ref = tp.get(name, {}).get("tasks_per_s")
        add(
            f"(1) no-op throughput vs {name}, enqueue -> all done (tasks/s)",
            ours,
            ref,
            f">= {wanted:g} x",
            at_least(ratio(ours, ref), wanted),
        )
    clean = tp.get("uncontended") or {}
    if clean.get("rounds"):
        r = ratio(clean.get("axon"), clean.get("saq"))
        add(
            f"(1) the same vs saq, rounds where neither was contended ({clean['rounds']} of "
            f"{len(tp.get('rounds', []))})",
            clean.get("axon"),
            clean.get("saq"),
            f">= {TARGET_SAQ_RATIO:g} x",
            at_least(r, TARGET_SAQ_RATIO),
        )
    for name, wanted in (("saq", TARGET_SAQ_RATIO), ("arq", TARGET_ARQ_RATIO)):
        ref = drain.get(name, {}).get("tasks_per_s")
        add(
            f"(1b) worker drains a pre-filled queue vs {name} (tasks/s)",
            ours_drain,
            ref,
            f">= {wanted:g} x",
            at_least(ratio(ours_drain, ref), wanted),
        )
    for name in ("rq", "celery"):
        add(f"(1) no-op throughput vs {name} (tasks/s)", ours, tp.get(name, {}).get("tasks_per_s"))
    enqueue = tp.get("axon", {}).get("enqueue_per_s")
    producing = (
        "one client, sequential"
        if plan.producers <= 1
        else f"one client, {plan.producers} concurrent producers"
    )
    for name in ("saq", "arq"):
        add(
            f"(1) enqueue alone vs {name} (tasks/s, {producing})",
            enqueue,
            tp.get(name, {}).get("enqueue_per_s"),
        )
    for side in ("worker", "server", "client"):
        key = f"{side}_cpu_us_per_task"
        add(
            f"(1) {side} CPU per task vs saq (us, lower is better)",
            tp.get("axon", {}).get(key),
            tp.get("saq", {}).get(key),
        )
    pickup = results.get("pickup", {})
    axon_pickup_ = pickup.get("axon", {})
    claimed = axon_pickup_.get("submit_to_claimed_ms", {}).get("p99")
    start = axon_pickup_.get("submit_to_function_start_ms", {}).get("p99")
    saq_start = pickup.get("saq", {}).get("enqueue_to_job_start_ms", {}).get("p99")
    arq_start = pickup.get("arq", {}).get("enqueue_to_job_start_ms", {}).get("p99")
    target = f"<= {TARGET_PICKUP_P99_MS:g} ms"
    add(
        "(2) pickup p99, submit -> claimed event (ms; ref: saq enqueue -> job start)",
        claimed,
        saq_start,
        target,
        at_most(claimed, TARGET_PICKUP_P99_MS),
    )
    add(
        "(2) pickup p99, submit -> task function starts (ms; ref: saq)",
        start,
        saq_start,
        target,
        at_most(start, TARGET_PICKUP_P99_MS),
    )
    add("(2) pickup p99, submit -> task function starts (ms; ref: arq)", start, arq_start)
    returned = axon_pickup_.get("submit_returned_to_claimed_ms", {}).get("p99")
    add("(2) pickup p99, submit() returned -> claimed event (ms; the worker's part)", returned)
    resume = results.get("resume", {})
    samples = resume.get("samples") or []
    worst = resume.get("kill_to_claimed_s_max")
    limit = plan.lease_s + RESUME_SLACK_S
    add(
        f"(3) SIGKILL -> claimed by another worker (s, worst of {len(samples)}; "
        f"heartbeat {plan.heartbeat_s:g} s, lease {plan.lease_s:g} s)",
        worst,
        None,
        f"<= {limit:g} s",
        at_most(worst, limit),
    )
    if samples:
        dups = sum(s["duplicate_seqs"] for s in samples)
        verified = all(s["chain_verified"] for s in samples)
        add(
            "(3) duplicate seqs; chain verified against the stored head",
            f"{dups}; {verified}",
            None,
            "0; True",
            dups == 0 and verified,
        )
    cancel = results.get("cancel", {})
    gone = cancel.get("cancel_to_process_gone_ms", {}).get("p99")
    event = cancel.get("cancel_to_canceled_event_ms", {}).get("p99")
    target = f"<= {TARGET_CANCEL_P99_MS:g} ms"
    add(
        "(4) cancel -> process gone p99 (ms, shell task)",
        gone,
        None,
        target,
        at_most(gone, TARGET_CANCEL_P99_MS),
    )
    add(
        f"(4) cancel -> canceled event p99 (ms, {cancel.get('task', 'n/a')} task)",
        event,
        None,
        target,
        at_most(event, TARGET_CANCEL_P99_MS),
    )
    return rows


def _calls(calls: dict[str, float] | None) -> str:
    if not calls:
        return "n/a"
    return ", ".join(f"{name} {count:g}" for name, count in calls.items() if count >= 0.05)


def markdown(report: dict[str, Any]) -> str:
    """The summary as a Markdown document."""
    machine, plan, results = report["machine"], report["plan"], report["results"]
    where = "embedded, started by the bench" if machine["embedded"] else "external"
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        f"# Task benchmark, {report['started_utc']}",
        "",
        f"Server {machine['server']} {machine['server_version']} ({where}); "
        f"Python {machine['python']}; {machine['cpu_count']} CPUs; axon {machine['axon']} "
        f"(git {machine['git']}); {versions}. N = {plan['tasks']:,}; {plan['rounds']} round(s); "
        f"worker concurrency {plan['concurrency']}; "
        f"{'quick' if report['quick'] else 'default'} run, {report['duration_s']:.0f} s; "
        f"load average at start {machine['loadavg']}.",
        "",
        *metrics_markdown(report["metrics"]),
        "",
    ]
    tp = results.get("throughput", {})
    producers = plan.get("producers", 1)
    producing = (
        "one client enqueues N no-op tasks one after another (awaiting each)"
        if producers <= 1
        else f"one client enqueues N no-op tasks from {producers} concurrent loops, each "
        "awaiting its enqueues one after another (the same for Axon, SAQ and arq; RQ and "
        "Celery, synchronous, enqueue one after another)"
    )
    lines.append(
        f"- (1) Throughput: {producing} while the peer's worker runs them; timed from the "
        "first enqueue until "
        f"completion is seen (polled every {POLL_S * 1000:g} ms), then every task's final "
        "state is checked. Medians over rounds. Per peer: tasks/s end to end; enqueue alone; "
        "CPU us per task of worker / server / client process; server calls per task "
        "(INFO commandstats, commands run inside Lua scripts included):"
    )
    for name in ("axon", "saq", "arq", "rq", "celery"):
        f = tp.get(name, {})
        if f.get("tasks_per_s") is None:
            lines.append(f"  - {name}: not measured: {f.get('error', 'n/a')}")
            continue
        lines.append(
            f"  - {name}: {cell(f['tasks_per_s'])}; {cell(f.get('enqueue_per_s'))}; "
            f"CPU {cell(f.get('worker_cpu_us_per_task'))} / "
            f"{cell(f.get('server_cpu_us_per_task'))} / {cell(f.get('client_cpu_us_per_task'))}"
            f"; calls: {_calls(f.get('server_calls_per_task'))}"
        )
    for r in tp.get("rounds", []):
        text = "; ".join(
            f"{name} {cell(r[name].get('tasks_per_s'))} (other CPU "
            f"{cell(r[name].get('other_cpu_s'))} s, stolen {cell(r[name].get('steal_cpu_s'))} s"
            f" in {cell(r[name].get('total_s'))} s)"
            for name in ("axon", "saq", "arq")
            if name in r
        )
        lines.append(f"  - round {r['round']}: {text}")
    if tp.get("contended_runs"):
        lines.append(
            f"  - {tp['contended_runs']} run(s) were contended: other processes, or the "
            f"hypervisor (steal), took more than {CONTENDED_SHARE:.0%} of a CPU meanwhile. "
            "Every side pays for that, the one needing most CPU per task most."
        )
    lines.append(
        "  - RQ: one `SimpleWorker` process (RQ runs one job at a time per worker; "
        "SimpleWorker does not fork per job). Celery: one worker process, "
        f"`--pool=threads --concurrency={plan['concurrency']}`, Redis broker and result "
        "backend. Axon, SAQ and arq: one worker process, concurrency "
        f"{plan['concurrency']}."
    )
    drain = results.get("drain", {})
    if drain:
        lines.append(
            f"- (1b) Drain: {plan['drain_tasks']:,} tasks enqueued with no worker running, then "
            "one worker started; rate = N over first start .. last finish as the system "
            "recorded them (Axon: task records' started_ms/finished_ms; SAQ: jobs' started/"
            "completed; arq: results' start/finish times). Median over "
            f"{plan['drain_rounds']} round(s); per round (tasks/s, span; CPU stolen by the "
            "hypervisor during enqueue + drain):"
        )
        for name, d in drain.items():
            if d.get("tasks_per_s") is None:
                lines.append(f"  - {name}: not measured: {d.get('error', 'n/a')}")
                continue
            runs = "; ".join(
                f"{cell(r['tasks_per_s'])}, {r['span_s']} s (stolen {r['steal_cpu_s']} s)"
                if "span_s" in r
                else f"n/a ({r.get('error')})"
                for r in d["rounds"]
            )
            lines.append(f"  - {name}: {runs}")
    pickup = results.get("pickup", {})
    if "axon" in pickup:
        a = pickup["axon"]
        c, s = a["submit_to_claimed_ms"], a["submit_to_function_start_ms"]
        r = a["submit_returned_to_claimed_ms"]
        lines.append(
            f"- (2) Pickup, {c['samples']} sequential `python` tasks on an idle worker: submit "
            f"-> claimed p50 {c['p50']} / p90 {c['p90']} / p99 {c['p99']} / max {c['max']} ms "
            f"(event ts, 1 ms resolution); submit -> function start p50 {s['p50']} / p90 "
            f"{s['p90']} / p99 {s['p99']} / max {s['max']} ms (the function's time.time()); "
            f"submit() returned -> claimed p50 {r['p50']} / p99 {r['p99']} ms (the worker's "
            "part alone)."
        )
    for name in ("saq", "arq"):
        if name in pickup:
            d = pickup[name].get("enqueue_to_job_start_ms")
            if d is None:
                lines.append(f"  - {name}: not measured: {pickup[name].get('error')}")
            else:
                lines.append(
                    f"  - {name}: enqueue -> job start p50 {d['p50']} / p90 {d['p90']} / p99 "
                    f"{d['p99']} / max {d['max']} ms over {d['samples']} jobs."
                )
    resume = results.get("resume", {})
    if "error" in resume:
        lines.append(f"- (3) Resume: not measured: {resume['error']}")
    elif resume:
        lines.append(
            f"- (3) Resume: heartbeat {resume['heartbeat_interval_s']} s, lease "
            f"{resume['lease_timeout_s']} s, watchdog {resume['watchdog_interval_s']} s; worker "
            "A SIGKILLed right after a heartbeat renewed the lease (the worst case: a whole "
            "lease to wait); worker B already running:"
        )
        for s in resume["samples"]:
            lines.append(
                f"  - kill -> reclaimed {s['kill_to_reclaimed_s']} s, -> claimed by B "
                f"{s['kill_to_claimed_s']} s, -> B's first tick {s['kill_to_first_tick_s']} s; "
                f"lease left at kill {s['lease_left_at_kill_s']} s; claim epochs {s['epochs']}; "
                f"{s['events']} events, chain verified, {s['duplicate_seqs']} duplicate seqs, "
                f"{s['events_by_dead_worker_after_kill']} events by A after the kill."
            )
    cancel = results.get("cancel", {})
    if "error" in cancel:
        lines.append(f"- (4) Cancel: not measured: {cancel['error']}")
    elif cancel:
        ev = cancel["cancel_to_canceled_event_ms"]
        text = (
            f"- (4) Cancel, {ev['samples']} samples, {cancel['how']}: Queue.cancel() call -> "
            f"canceled event seen p50 {ev['p50']} / p99 {ev['p99']} ms"
        )
        if "cancel_to_process_gone_ms" in cancel:
            g = cancel["cancel_to_process_gone_ms"]
            text += (
                f"; -> every process with the task's marker argv exited (pidfd) p50 {g['p50']} / "
                f"p99 {g['p99']} ms; such processes left after the canceled event: "
                f"{cancel['processes_left_after_canceled']}"
            )
        lines.append(text + ".")
    profile = results.get("profile")
    if profile:
        lines.append(
            "- Profile (an extra run with the Axon worker under cProfile; cumulative CPU "
            "per task, inflated by the profiler; compare the steps with each other):"
        )
        for label, v in profile["steps"].items():
            lines.append(
                f"  - {label.strip()}: {v['us_per_task']} us "
                f"({v['calls_or_resumes_per_task']} calls or resumes per task)"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse options, start (or use) the server, run, write and print the results."""
    parser = arguments("Task benchmark (see bench/README.md).")
    parser.add_argument(
        "--tasks",
        type=int,
        help=f"N: no-op tasks per throughput run (default {DEFAULT_PLAN.tasks:,}; "
        f"--quick {QUICK_PLAN.tasks:,})",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run, under ~60 s")
    parser.add_argument(
        "--producers",
        type=int,
        help="concurrent enqueue loops in the throughput runs of Axon, SAQ and arq alike "
        "(default 1: one client enqueuing one after another)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also run the axon worker under cProfile once"
    )
    parser.add_argument(
        "--peer-worker", choices=["saq", "arq", "rq", "celery"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.peer_worker:
        return run_peer_worker(args.peer_worker)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    if args.tasks is not None:
        if args.tasks < 1:
            parser.error("--tasks must be positive")
        plan = replace(plan, tasks=args.tasks)
    if args.producers is not None:
        if args.producers < 1:
            parser.error("--producers must be positive")
        plan = replace(plan, producers=args.producers)

    with tempfile.TemporaryDirectory(prefix="axon-bench-tasks-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        report = run_on_server(
            args.redis_url,
            Path(tmp),
            lambda url, embedded: run(
                url, plan, quick=args.quick, profile=args.profile, logs=logs, embedded=embedded
            ),
        )
    publish("tasks", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
