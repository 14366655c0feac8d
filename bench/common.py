"""What ``bench/append.py`` and ``bench/tasks.py`` share.

Progress lines, the server's CPU and command counters, ``/proc/stat``, ratios and
medians, the machine a run was made on, the report's common fields, the Markdown
table of metrics, the results files, and starting an embedded server for a run.

The benchmarks import this as ``common``: they run as scripts
(``python bench/append.py``), so their own directory is first on ``sys.path``;
the worker processes ``bench/tasks.py`` starts get that directory on
``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
import msgspec
from redis.asyncio import Redis

from axon import __version__ as axon_version
from axon.embedded import ServerProcess, valkey_binary
from axon.store import Store

ROOT = Path(__file__).resolve().parent.parent
"""The checkout."""
RESULTS_DIR = ROOT / "bench" / "results"

CONTENDED_SHARE = 0.25
"""A phase or run is contended when other processes used (or, where counted, the
hypervisor stole) more than this share of one CPU meanwhile."""

_started = time.monotonic()


def elapsed() -> float:
    """Seconds since the benchmark started."""
    return time.monotonic() - _started


def progress(message: str) -> None:
    """One progress line with the time since start."""
    print(f"[{elapsed():6.1f}s] {message}", flush=True)


def run_prefix() -> str:
    """A key prefix (or tag) of this run's own: ``axonbench-<pid>-<random>``."""
    return f"axonbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# -- the server and the machine ---------------------------------------------------------


def plain_client(store: Store) -> Redis:
    """The store's command client; the benchmarks run on one server, not a cluster."""
    if not isinstance(store.redis, Redis):
        raise SystemExit(f"{sys.argv[0]} measures a single server, not a Redis Cluster")
    return store.redis


class ServerSample(msgspec.Struct, frozen=True):
    """Server CPU seconds and per-command (calls, usec) counters at one instant."""

    cpu_s: float
    commands: dict[str, tuple[int, int]]


async def sample_server(client: Redis) -> ServerSample:
    """Read INFO cpu and INFO commandstats."""
    cpu: dict[str, Any] = await client.info("cpu")
    stats: dict[str, Any] = await client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"]))
        for name, value in stats.items()
        if isinstance(value, dict)
    }
    return ServerSample(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), commands)


def machine_cpu_s() -> tuple[float, float] | None:
    """CPU seconds all CPUs of this machine spent busy, and stolen by the hypervisor,
    since boot (from /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    steal = fields[7] if len(fields) > 7 else 0
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]  # user nice system irq softirq
    return busy / tick, steal / tick


async def delete_matching(client: Redis, pattern: str) -> int:
    """Delete every key matching ``pattern``; returns how many."""
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(await client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(await client.unlink(*batch))
    return deleted


def git_revision() -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files under ``axon/`` changed."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no", "--", "axon"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.decode().strip() + ("-dirty" if dirty.strip() else "")


def package_version(name: str) -> str | None:
    """An installed distribution's version."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


async def machine_info(store: Store, *, embedded: bool, **extra: Any) -> dict[str, Any]:
    """Where this ran: interpreter, CPUs, the server, Axon's revision, then ``extra``."""
    server = await store.server_info()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "server": server.server,
        "server_version": server.version,
        "server_aof": server.aof_enabled,
        "embedded": embedded,
        "axon": axon_version,
        "git": git_revision(),
        **extra,
    }


# -- figures ----------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def ratio(ours: float | None, reference: float | None) -> float | None:
    """``ours / reference``, or ``None`` when either is unknown."""
    if ours is None or not reference:
        return None
    return round(ours / reference, 3)


def median_of(values: list[float | None]) -> float | None:
    """Median of the known values, ``None`` if there are none."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def at_least(value: float | None, target: float) -> bool | None:
    """Whether a known ``value`` meets ``>= target``; ``None`` when it is unknown."""
    return None if value is None else value >= target


def at_most(value: Any, limit: float) -> bool | None:
    """Whether a numeric ``value`` meets ``<= limit``; ``None`` when it is not a number."""
    return value <= limit if isinstance(value, int | float) else None


# -- the report -------------------------------------------------------------------------


def metric(
    name: str, ours: Any, reference: Any = None, target: str = "", met: bool | None = None
) -> dict[str, Any]:
    """One row of the summary: metric, ours, reference, ratio (when both are numbers),
    target, met."""
    both = isinstance(ours, int | float) and isinstance(reference, int | float)
    return {
        "metric": name,
        "ours": ours,
        "reference": reference,
        "ratio": ratio(ours, reference) if both else None,
        "target": target,
        "met": met,
    }


def report_of(
    benchmark: str,
    started: datetime,
    *,
    quick: bool,
    plan: dict[str, Any],
    machine: dict[str, Any],
    results: dict[str, Any],
) -> dict[str, Any]:
    """The report's common fields as plain JSON-able data (the caller adds ``metrics``)."""
    report = {
        "benchmark": benchmark,
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(elapsed(), 1),
        "quick": quick,
        "plan": plan,
        "machine": machine,
        "results": results,
    }
    built: dict[str, Any] = msgspec.to_builtins(report)
    return built


def cell(value: Any) -> str:
    """A value as a Markdown table cell."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def metrics_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The summary rows as the lines of a Markdown table."""
    lines = [
        "| metric | ours | reference | ratio | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        cells = [row["metric"], row["ours"], row["reference"], row["ratio"], row["target"]]
        lines.append("| " + " | ".join(cell(c) for c in [*cells, row["met"]]) + " |")
    return lines


def publish(benchmark: str, report: dict[str, Any], text: str) -> list[Path]:
    """Write ``<benchmark>-<timestamp>`` and ``<benchmark>-latest`` ``.json`` (``report``)
    and ``.md`` (``text``) to ``bench/results``, then print ``text`` and the paths."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = report["started_utc"].replace("-", "").replace(":", "")
    body = json.dumps(report, indent=2) + "\n"
    paths = []
    for name in (f"{benchmark}-{stamp}", f"{benchmark}-latest"):
        for suffix, content in ((".json", body), (".md", text)):
            path = RESULTS_DIR / f"{name}{suffix}"
            path.write_text(content, encoding="utf-8")
            paths.append(path)
    print()
    print(text)
    for path in paths:
        progress(f"wrote {path}")
    return paths


# -- running ----------------------------------------------------------------------------


def arguments(description: str) -> argparse.ArgumentParser:
    """The benchmark's option parser, with the ``--redis-url`` option both share."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--redis-url", help="use this server instead of an embedded Valkey")
    return parser


def run_on_server(
    redis_url: str | None,
    directory: Path,
    run: Callable[[str, bool], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """``run(url, embedded)`` under anyio against ``redis_url``, or, without one, against
    a ``valkey-server`` (no AOF) started in ``directory`` and stopped afterwards."""
    server: ServerProcess | None = None
    if redis_url:
        url = redis_url
    else:
        server = ServerProcess(valkey_binary(), directory, args=["--appendonly", "no"])
        progress(f"starting embedded valkey-server on port {server.port} ...")
        server.start()
        url = server.url
    try:
        return anyio.run(run, url, server is not None, backend="asyncio")
    finally:
        if server is not None:
            server.stop()
            progress("embedded server stopped")


async def read_raw(client: Any, key: str, page: int = 1000) -> int:
    """Page a whole stream with raw ``XRANGE`` replies (no per-entry conversion): the
    reference that Axon's range reads are measured against; returns the entry count."""
    execute: Callable[..., Awaitable[Any]] = client.execute_command
    start: bytes | str = "-"
    total = 0
    while True:
        rows = await execute("XRANGE", key, start, "+", "COUNT", page)
        total += len(rows)
        if len(rows) < page:
            return total
        start = b"(" + rows[-1][0]
