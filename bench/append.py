"""Append benchmark: our batched, chained, fenced append against pipelined XADD.

One run, one server, four measurements (``bench/README.md`` explains each):

(a) reference: ``redis-benchmark -P 64 -c 8`` XADD throughput on the same server;
(b) ours: events/s through ``EventWriter`` -- ``emit_many`` batches (b1) and many
    concurrent single ``emit`` calls that the writer coalesces (b2);
(c) single-event append latency: sequential ``emit``, p50/p99/max;
(d) range reads: ``Store.read`` paging vs raw ``XRANGE`` paging on the same client.

(a), (b1) and (b2) run interleaved in rounds, so a noisy neighbour on the machine
hurts ours and the reference alike; each figure is the median over the rounds.
Results go to ``bench/results/append-<UTC timestamp>.{json,md}`` and
``append-latest.{json,md}``.
"""

from __future__ import annotations

import cProfile
import csv
import io
import os
import platform
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import anyio
import msgspec
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from axon.chain import ChainHead, verify_chain
from axon.connection import HiredisConnection, open_store
from axon.events import GENESIS_HASH, build_event, check_kind, encode_data, event_hash
from axon.keys import new_task_id
from axon.lua import APPEND
from axon.records import TaskSpec
from axon.settings import Settings
from axon.store import Store, now_ms
from axon.writer import EventWriter

# isort: split
from common import (
    CONTENDED_SHARE,
    RESULTS_DIR,
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
    read_raw,
    report_of,
    run_on_server,
    run_prefix,
    sample_server,
)

T = TypeVar("T")

EVENT_KIND = "bench"
READ_PAGE = 1000

TARGET_APPEND_RATIO = 0.5
"""PRODUCT.md: batched, chained, fenced append >= 0.5 x redis-benchmark pipelined XADD."""
TARGET_P99_MS = 2.0
"""PRODUCT.md: single event append latency p99 <= 2 ms on loopback."""
TARGET_READ_RATIO = 0.5
"""PRODUCT.md: backfill >= 0.5 x raw XRANGE rate (here the store's range read, under SSE)."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How much work each measurement does."""

    events: int
    payload: int
    rounds: int = 5
    writers: int = 8
    batch: int = 256
    emitters: int = 64
    latency_samples: int = 5000
    latency_warmup: int = 500
    read_events: int = 100_000
    read_passes: int = 3

    @property
    def coalesced_events(self) -> int:
        """Events of one (b2) run: half of N, since per-emit overhead makes it slower."""
        return max(self.writers, self.events // 2)


DEFAULT_PLAN = Plan(events=100_000, payload=256)
QUICK_PLAN = Plan(
    events=40_000,
    payload=256,
    rounds=2,
    latency_samples=1000,
    latency_warmup=200,
    read_events=20_000,
    read_passes=2,
)


def padding_for(payload: int, *, seq: int) -> int:
    """How many ``x`` in ``data["p"]`` make one event about ``payload`` bytes long."""
    sample = build_event(
        task=new_task_id(),
        seq=seq,
        prev=GENESIS_HASH,
        ts=now_ms(),
        kind=EVENT_KIND,
        data=encode_data({"p": ""}),
    )
    return max(0, payload - len(sample))


# -- the server and what it spent ------------------------------------------------


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """The server under test, as redis-benchmark and redis-py see it."""

    url: str
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool
    embedded: bool


def parse_target(url: str, *, embedded: bool) -> Target:
    """Split a ``redis://`` URL into what redis-benchmark needs."""
    parts = urlsplit(url)
    path = parts.path.lstrip("/")
    return Target(
        url=url,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(path) if path.isdigit() else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
        embedded=embedded,
    )


def is_contended(*usages: Usage | None) -> bool:
    """Whether other processes on this machine competed for CPU during any of ``usages``."""
    return any(
        u is not None and u.other_cpu_s is not None and u.other_cpu_s > CONTENDED_SHARE * u.wall_s
        for u in usages
    )


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Wall time of one phase and who burnt CPU meanwhile.

    ``other_cpu_s`` is CPU used on this machine by neither this process, the
    server nor redis-benchmark: other people's work, which slows the phase down.
    """

    wall_s: float
    client_cpu_s: float
    server_cpu_s: float
    child_cpu_s: float
    other_cpu_s: float | None
    commands: dict[str, tuple[int, int]]


async def measured(client: Redis, work: Callable[[], Awaitable[T]]) -> tuple[T, Usage]:
    """Run ``work`` and report its wall time, CPU split and server command counters."""
    before = await sample_server(client)
    busy0 = machine_cpu_s()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    result = await work()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = machine_cpu_s()
    after = await sample_server(client)
    child = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    server = after.cpu_s - before.cpu_s
    other = None
    if busy0 is not None and busy1 is not None:
        other = round(max(0.0, sum(busy1) - sum(busy0) - cpu - child - server), 2)
    commands = {}
    for name, (calls, usec) in after.commands.items():
        calls0, usec0 = before.commands.get(name, (0, 0))
        if calls > calls0:
            commands[name] = (calls - calls0, usec - usec0)
    return result, Usage(
        wall_s=round(wall, 4),
        client_cpu_s=round(cpu, 3),
        server_cpu_s=round(server, 3),
        child_cpu_s=round(child, 3),
        other_cpu_s=other,
        commands=commands,
    )


# -- (a) reference: redis-benchmark --------------------------------------------------


def benchmark_binary() -> str | None:
    """``redis-benchmark`` (or ``valkey-benchmark``) on PATH, if any."""
    return shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")


def parse_rps(output: str) -> float | None:
    """Requests/s of the last data row of redis-benchmark's ``--csv`` output."""
    rps: float | None = None
    for row in csv.reader(io.StringIO(output)):
        if len(row) >= 2 and row[0] != "test":
            try:
                rps = float(row[1])
            except ValueError:
                continue
    return rps


class Reference:
    """Runs redis-benchmark's pipelined XADD against the target, round after round."""

    def __init__(self, target: Target, plan: Plan, client: Redis, stream_key: str) -> None:
        self.target = target
        self.plan = plan
        self.client = client
        self.stream_key = stream_key
        self.binary = benchmark_binary()
        self.mode: str | None = None
        self.command: list[str] | None = None
        self.note: str | None = None
        self.available = self.binary is not None and not target.tls
        if self.binary is None:
            self.note = "redis-benchmark not found on PATH; reference not measured"
        elif target.tls:
            self.note = "rediss:// (TLS) is not supported here; reference not measured"

    def _argv(self, *tail: str) -> list[str]:
        assert self.binary is not None
        target = self.target
        argv = [self.binary, "-h", target.host, "-p", str(target.port)]
        if target.db:
            argv += ["--dbnum", str(target.db)]
        if target.password is not None:
            argv += ["-a", target.password]
            if target.username is not None:
                argv += ["--user", target.username]
        return [*argv, "-P", "64", "-c", "8", "-n", str(self.plan.events), *tail]

    def _shown(self, argv: list[str]) -> list[str]:
        shown = ["***" if a == self.target.password else a for a in argv]
        return [f"<{len(a)} x 'x'>" if len(a) > 64 and set(a) == {"x"} else a for a in shown]

    async def _run(self, argv: list[str]) -> tuple[float | None, Usage, str]:
        async def go() -> str:
            done = await anyio.run_process(argv, check=False)
            if done.returncode != 0:
                error = done.stderr.decode(errors="replace").strip()
                raise RuntimeError(f"{argv[0]} exited {done.returncode}: {error}")
            return done.stdout.decode(errors="replace")

        output, usage = await measured(self.client, go)
        return parse_rps(output), usage, output

    async def run(self) -> tuple[float | None, Usage | None]:
        """One reference run: requests/s (``None`` if not measurable) and its usage."""
        if not self.available:
            return None, None
        if self.mode is None:
            # The built-in test (newer tools) writes to the key "mystream"; on a
            # server we do not own, never touch a "mystream" that already exists.
            why = "a key 'mystream' already exists on this server, so -t xadd was not tried"
            if self.target.embedded or not await self.client.exists("mystream"):
                argv = self._argv("-d", str(self.plan.payload), "-t", "xadd", "--csv", "-q")
                rps, usage, _ = await self._run(argv)
                await self.client.delete("mystream")
                if rps is not None:
                    self.mode, self.command = "-t xadd", self._shown(argv)
                    return rps, usage
                why = f"{Path(self.binary or '').name} has no xadd test (-t xadd printed no row)"
            self.mode = "custom command"
            self.note = (
                f"{why}; the reference runs the command that test sends, "
                "XADD <key> * myfield <payload bytes>, on a key of our own"
            )
        if self.mode == "-t xadd":
            argv = self._argv("-d", str(self.plan.payload), "-t", "xadd", "--csv", "-q")
            rps, usage, output = await self._run(argv)
            await self.client.delete("mystream")
        else:
            value = "x" * self.plan.payload
            argv = self._argv("--csv", "-q", "XADD", self.stream_key, "*", "myfield", value)
            rps, usage, output = await self._run(argv)
            written = int(await self.client.xlen(self.stream_key))
            await self.client.delete(self.stream_key)
            if written < self.plan.events:  # whole pipelines may write a few more
                raise RuntimeError(f"redis-benchmark wrote {written} entries of {self.plan.events}")
        self.command = self._shown(argv)
        if rps is None:
            raise RuntimeError(f"redis-benchmark printed no requests/s: {output[-300:]!r}")
        return rps, usage


# -- (b) ours: batched and coalesced appends ------------------------------------------


async def make_writers(store: Store, count: int) -> list[EventWriter]:
    """``count`` new tasks, each with an epoch-0 writer (it reads the head on first flush)."""
    writers = []
    for _ in range(count):
        record = await store.create_task(TaskSpec(tenant="bench", adapter="mock"))
        writers.append(EventWriter(store, record.id, epoch=0))
    return writers


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal shares."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class AppendCount:
    """Events and bytes appended by the drivers of one phase."""

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0


async def append_batched(
    writers: list[EventWriter], total: int, batch: int, data: dict[str, Any]
) -> AppendCount:
    """One driver per writer appends its share with ``emit_many`` groups of ``batch``."""
    count = AppendCount()

    async def drive(writer: EventWriter, share: int) -> None:
        while share > 0:
            n = min(batch, share)
            stored = await writer.emit_many([(EVENT_KIND, data)] * n)
            share -= n
            count.events += len(stored)
            count.bytes += sum(len(event.raw) for event in stored)

    async with anyio.create_task_group() as tg:
        for writer, share in zip(writers, split(total, len(writers)), strict=True):
            tg.start_soon(drive, writer, share)
    return count


async def append_coalesced(
    writers: list[EventWriter], total: int, emitters: int, data: dict[str, Any]
) -> AppendCount:
    """``emitters`` coroutines per writer, each calling ``emit`` for one event at a time."""
    count = AppendCount()

    async def emitter(writer: EventWriter, quota: list[int]) -> None:
        while quota[0] > 0:
            quota[0] -= 1
            stored = await writer.emit(EVENT_KIND, data)
            count.events += 1
            count.bytes += len(stored.raw)

    async with anyio.create_task_group() as tg:
        for writer, share in zip(writers, split(total, len(writers)), strict=True):
            quota = [share]
            for _ in range(emitters):
                tg.start_soon(emitter, writer, quota)
    return count


async def append_run(
    name: str,
    store: Store,
    writers: list[EventWriter],
    work: Callable[[], Awaitable[AppendCount]],
) -> dict[str, Any]:
    """Run one append phase, check every event landed, and summarise it."""
    count, usage = await measured(plain_client(store), work)
    stats = [writer.statistics() for writer in writers]
    calls = sum(s.batches for s in stats)
    for writer in writers:  # the stored head is exactly where each writer believes it is
        head = await store.head(writer.task_id)
        if writer.head != head or head.seq != 1 + writer.statistics().events:
            raise RuntimeError(f"{name}: writer head {writer.head} but stored head {head}")
    script_calls, script_usec = _script_time(usage.commands)
    xadd_usec = usage.commands.get("xadd", (0, 0))[1]
    return {
        "events": count.events,
        "events_per_s": round(count.events / usage.wall_s, 1),
        "mean_event_bytes": round(count.bytes / max(count.events, 1), 1),
        "script_calls": calls,
        "events_per_script_call": round(count.events / max(calls, 1), 1),
        "stale_retries": sum(s.stale_retries for s in stats),
        "server_cpu_us_per_event": round(usage.server_cpu_s / max(count.events, 1) * 1e6, 2),
        "client_cpu_us_per_event": round(usage.client_cpu_s / max(count.events, 1) * 1e6, 2),
        "script_us_per_event": round(script_usec / max(count.events, 1), 2),
        "xadd_in_script_us_per_event": round(xadd_usec / max(count.events, 1), 2),
        "server_script_calls": script_calls,
        "usage": usage,
    }


def _script_time(commands: dict[str, tuple[int, int]]) -> tuple[int, int]:
    calls = usec = 0
    for name in ("evalsha", "eval"):
        c, u = commands.get(name, (0, 0))
        calls, usec = calls + c, usec + u
    return calls, usec


# -- (c) latency --------------------------------------------------------------------


async def latency_phase(store: Store, plan: Plan, data: dict[str, Any]) -> dict[str, Any]:
    """(c) Sequential single emits on one writer: no concurrency, one round trip each."""
    (writer,) = await make_writers(store, 1)
    for _ in range(plan.latency_warmup):
        await writer.emit(EVENT_KIND, data)
    samples: list[float] = []
    clock = time.perf_counter_ns

    async def sample() -> None:
        for _ in range(plan.latency_samples):
            t0 = clock()
            await writer.emit(EVENT_KIND, data)
            samples.append((clock() - t0) / 1e6)

    _, usage = await measured(plain_client(store), sample)
    ordered = sorted(samples)
    return {
        "samples": len(samples),
        "warmup": plan.latency_warmup,
        "p50_ms": round(percentile(ordered, 0.50), 4),
        "p90_ms": round(percentile(ordered, 0.90), 4),
        "p99_ms": round(percentile(ordered, 0.99), 4),
        "p999_ms": round(percentile(ordered, 0.999), 4),
        "max_ms": round(ordered[-1], 4),
        "mean_ms": round(statistics.fmean(samples), 4),
        "usage": usage,
    }


# -- (d) range reads ---------------------------------------------------------------


async def read_ours(store: Store, task_id: str) -> int:
    """Page through the whole log with ``Store.read``; returns the events read."""
    after = total = 0
    while True:
        page = await store.read(task_id, after_seq=after, limit=READ_PAGE)
        total += len(page)
        if len(page) < READ_PAGE:
            return total
        after = page[-1].seq


async def read_xrange(client: Redis, key: str) -> int:
    """Page with redis-py's ``xrange`` (its reply callback included) from exclusive ids."""
    start: bytes | str = "-"
    total = 0
    while True:
        rows = cast("list[tuple[bytes, Any]]", await client.xrange(key, start, "+", READ_PAGE))
        total += len(rows)
        if len(rows) < READ_PAGE:
            return total
        start = b"(" + rows[-1][0]


async def read_phase(
    store: Store, target: Target, plan: Plan, data: dict[str, Any]
) -> dict[str, Any]:
    """(d) Fill one task with ``read_events`` events, then page through it three ways."""
    (writer,) = await make_writers(store, 1)
    progress(f"(d) filling one task with {plan.read_events:,} events ...")
    await append_batched([writer], plan.read_events, store.settings.max_batch_events, data)
    task_id = writer.task_id
    key = store.keys.events(task_id)
    # redis-py as it comes: its XRANGE callback turns every entry into a tuple and a dict.
    client = Redis.from_url(target.url, socket_timeout=10.0)
    # Same library, same parser, but the reply stays as hiredis built it: no
    # per-entry tuple/dict conversion. This is the raw XRANGE rate.
    raw_client = Redis.from_url(target.url, socket_timeout=10.0)
    del raw_client.response_callbacks["XRANGE"]
    expected = plan.read_events + 1  # and the "queued" event written by create_task
    readers: dict[str, Callable[[], Awaitable[int]]] = {
        "ours": lambda: read_ours(store, task_id),
        "xrange": lambda: read_xrange(client, key),
        "raw": lambda: read_raw(raw_client, key),
    }
    rates: dict[str, list[float]] = {name: [] for name in readers}
    try:
        await read_raw(raw_client, key)  # warm the connection and the server
        for index in range(plan.read_passes):
            for name, reader in readers.items():
                t0 = time.perf_counter()
                got = await reader()
                elapsed = time.perf_counter() - t0
                if got != expected:
                    raise RuntimeError(f"{name} read {got} events, expected {expected}")
                rates[name].append(got / elapsed)
            progress(
                f"(d) pass {index + 1}/{plan.read_passes}: "
                + ", ".join(f"{name} {values[-1]:,.0f} ev/s" for name, values in rates.items())
            )
    finally:
        await raw_client.aclose()
        await client.aclose()
    # Not timed: what we read back is one unbroken chain ending at the stored head.
    raws = [event.raw async for event in store.iter_events(task_id)]
    verify_chain(raws, task=task_id, expected_head=await store.head(task_id))
    return {
        "events": expected,
        "page": READ_PAGE,
        "passes": plan.read_passes,
        "ours_events_per_s": round(statistics.median(rates["ours"]), 1),
        "xrange_events_per_s": round(statistics.median(rates["xrange"]), 1),
        "raw_events_per_s": round(statistics.median(rates["raw"]), 1),
        "passes_events_per_s": {k: [round(v, 1) for v in values] for k, values in rates.items()},
        "chain_verified": True,
    }


# -- profile ------------------------------------------------------------------------


class _PackOnlyStore(Store):
    """A store that packs each append script call into RESP but never sends it.

    Running the real writer on it measures the client's own CPU per event
    (validation, encoding, chaining, argument building, packing) without
    sockets, the event loop or the server.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store.redis, settings=store.settings)
        self._connection = HiredisConnection()  # the packer our own clients use

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        self._connection.pack_command("EVALSHA", *script.evalsha_args(keys, args))
        events = (len(args) - 9 - 2 * int(args[8])) // 2  # see axon/scripts/append.lua
        return [b"ok", int(args[0]) + events]


async def stage_costs(store: Store, payload: int, batch: int) -> dict[str, float]:
    """Client CPU per event of each stage of an append, without a profiler (us, best of 5)."""
    task = new_task_id()
    data = {"p": "x" * padding_for(payload, seq=100_000)}
    encoded = encode_data(data)
    n = batch * 100
    raws = [
        build_event(task=task, seq=100_000 + i, prev=GENESIS_HASH, ts=now_ms(), kind=EVENT_KIND,
                    data=encoded)
        for i in range(n)
    ]  # fmt: skip

    def best(loop: Callable[[], object], per: int = n) -> float:
        runs = []
        for _ in range(5):
            t0 = time.process_time()
            loop()
            runs.append(time.process_time() - t0)
        return round(min(runs) / per * 1e6, 3)

    def builds() -> None:
        for i in range(n):
            build_event(
                task=task, seq=100_000 + i, prev=GENESIS_HASH, ts=now_ms(), kind=EVENT_KIND,
                data=encoded,
            )  # fmt: skip

    keys = [f"x:{{{task}}}:task", f"x:{{{task}}}:events"]
    args: list[Any] = [1, GENESIS_HASH, 0, GENESIS_HASH, "", "", now_ms(), "", 0]
    for raw in raws[:batch]:
        args += [EVENT_KIND, raw]
    command = ("EVALSHA", *APPEND.evalsha_args(keys, args))
    connection = Connection()
    costs = {
        "check_kind (regex)": best(lambda: [check_kind(EVENT_KIND) for _ in range(n)]),
        "encode_data (msgspec)": best(lambda: [encode_data(data) for _ in range(n)]),
        "build_event (msgspec)": best(builds),
        "event_hash (sha256 hexdigest)": best(lambda: [event_hash(raw) for raw in raws]),
        "redis-py asyncio pack_command": best(
            lambda: [connection.pack_command(*command) for _ in range(n // batch)]
        ),
    }
    try:
        import hiredis

        costs["(for comparison) hiredis.pack_command"] = best(
            lambda: [hiredis.pack_command(command) for _ in range(n // batch)]
        )
    except ImportError:
        pass
    pack_only = _PackOnlyStore(store)
    runs = []
    for _ in range(5):
        writer = EventWriter(pack_only, task, epoch=0, head=ChainHead(seq=1, hash=GENESIS_HASH))
        t0 = time.process_time()
        for _ in range(n // batch):
            await writer.emit_many([(EVENT_KIND, data)] * batch)
        runs.append(time.process_time() - t0)
    costs[f"whole writer path, emit_many({batch}), no I/O"] = round(min(runs) / n * 1e6, 3)
    return costs


def profile_breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of the functions an append spends its time in."""
    wanted = {
        ("axon/writer.py", "_prepare"): "writer._prepare (check_kind + encode_data)",
        ("axon/events.py", "build_event"): "build_event (msgspec)",
        ("axon/events.py", "event_hash"): "event_hash (sha256)",
        ("redis/asyncio/connection.py", "pack_command"): "redis-py pack_command",
        ("redis/asyncio/connection.py", "send_packed_command"): "redis-py send (incl. socket)",
        ("redis/asyncio/connection.py", "read_response"): "redis-py read_response",
        ("axon/store.py", "append_built"): "store.append_built (args, pack, send, await reply)",
        ("axon/writer.py", "_build"): "writer._build (build_event + sha256)",
    }
    out: dict[str, float] = {}
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    for (filename, _line, function), (_cc, _nc, tottime, cumtime, _callers) in table.items():
        total += tottime
        for (suffix, name), label in wanted.items():
            if function == name and filename.endswith(suffix):
                out[label] = round(out.get(label, 0.0) + cumtime, 3)
    out["total profiled"] = round(total, 3)
    return out


async def profile_phase(
    store: Store, plan: Plan, data: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Re-run (b1) under cProfile -- not a measurement, the profiler slows it down."""
    writers = await make_writers(store, plan.writers)
    profiler = cProfile.Profile()
    profiler.enable()
    await append_batched(writers, plan.events, plan.batch, data)
    profiler.disable()
    profiler.dump_stats(out)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(20)
    print(text.getvalue(), flush=True)
    breakdown = profile_breakdown(stats)
    costs = await stage_costs(store, plan.payload, plan.batch)
    for label, seconds in breakdown.items():
        progress(f"profile: {label}: {seconds} s cumulative")
    for label, micros in costs.items():
        progress(f"stage cost: {label}: {micros} us/event")
    return {
        "events": plan.events,
        "pstats_file": str(out),
        "cumulative_s": breakdown,
        "stage_us_per_event": costs,
    }


# -- report ------------------------------------------------------------------------


def metrics_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the summary: metric, ours, reference, ratio, target, met."""
    append = results["append"]
    ref = append["reference_rps"]
    batched, coalesced = append["batched_events_per_s"], append["coalesced_events_per_s"]
    best = max(batched, coalesced)
    lat, read = results["latency"], results["read"]
    clean = append["uncontended"]
    clean_n, rounds_n = append["uncontended_rounds"], len(append["rounds"])
    clean_best = (
        max(clean["batched_events_per_s"], clean["coalesced_events_per_s"]) if clean else None
    )
    clean_ref = clean["reference_rps"] if clean else None
    append_target = f">= {TARGET_APPEND_RATIO}"
    return [
        metric(
            "(b) append vs (a) pipelined XADD, better of b1/b2 (events/s)",
            best,
            ref,
            append_target,
            at_least(ratio(best, ref), TARGET_APPEND_RATIO),
        ),
        metric(
            f"(b) the same, uncontended rounds only ({clean_n} of {rounds_n})",
            clean_best,
            clean_ref,
            append_target,
            at_least(ratio(clean_best, clean_ref), TARGET_APPEND_RATIO),
        ),
        metric("(b1) emit_many batches (events/s)", batched, ref),
        metric("(b2) concurrent single emits, coalesced (events/s)", coalesced, ref),
        metric(
            "server CPU per appended event (us), b1 vs XADD (lower is better)",
            append["server_cpu_us_per_event"],
            append["reference_server_cpu_us_per_xadd"],
        ),
        metric(
            "client CPU per appended event (us), b1 (this Python process)",
            append["client_cpu_us_per_event"],
        ),
        metric(
            "(c) single append latency p99 (ms)",
            lat["p99_ms"],
            target=f"<= {TARGET_P99_MS} ms",
            met=at_most(lat["p99_ms"], TARGET_P99_MS),
        ),
        metric("(c) single append latency p50 / max (ms)", f"{lat['p50_ms']} / {lat['max_ms']}"),
        metric(
            "(d) range read: Store.read vs raw XRANGE, no reply callback (events/s)",
            read["ours_events_per_s"],
            read["raw_events_per_s"],
            f">= {TARGET_READ_RATIO}",
            at_least(ratio(read["ours_events_per_s"], read["raw_events_per_s"]), TARGET_READ_RATIO),
        ),
        metric(
            "(d') range read: Store.read vs redis-py client.xrange (events/s)",
            read["ours_events_per_s"],
            read["xrange_events_per_s"],
        ),
    ]


def markdown(report: dict[str, Any]) -> str:
    """The summary as a Markdown document."""
    machine, plan, results = report["machine"], report["plan"], report["results"]
    append = results["append"]
    where = "embedded, started by the bench" if machine["embedded"] else "external"
    lines = [
        f"# Append benchmark, {report['started_utc']}",
        "",
        f"Server {machine['server']} {machine['server_version']} ({where}); "
        f"Python {machine['python']}; {machine['cpu_count']} CPUs; payload {plan['payload']} B; "
        f"N = {plan['events']:,}; {plan['rounds']} rounds; "
        f"{'quick' if report['quick'] else 'default'} run, {report['duration_s']:.0f} s; "
        f"load average at start {machine['loadavg']}.",
        "",
        *metrics_markdown(report["metrics"]),
        "",
        f"- (a) {append['reference_mode'] or 'not measured'}"
        + (f": {append['reference_note']}" if append["reference_note"] else "")
        + ".",
        f"- (b1) {plan['writers']} tasks, one driver each calling emit_many({plan['batch']}); "
        f"(b2) {plan['writers']} tasks x {plan['emitters']} coroutines calling emit(), "
        f"N/2 events per round. Figures are medians over rounds; per round "
        "(a / b1 / b2, events/s):",
    ]
    for r in append["rounds"]:
        lines.append(
            f"  - round {r['round']}: {cell(r['reference_rps'])} / "
            f"{cell(r['batched']['events_per_s'])} / {cell(r['coalesced']['events_per_s'])}"
            f" (ratio {cell(r['ratio_batched'])}; "
            f"{'contended' if r['contended'] else 'uncontended'}: other processes used "
            f"{cell(r['batched']['usage']['other_cpu_s'])} s CPU during the "
            f"{cell(r['batched']['usage']['wall_s'])} s of b1)"
        )
    if append["uncontended_rounds"] < len(append["rounds"]):
        lines.append(
            "- **Other processes competed for the CPUs** in some rounds (more than "
            f"{CONTENDED_SHARE:.0%} of a CPU); their figures are pessimistic, ours more than "
            "the reference's, since ours needs two busy processes and the reference one."
        )
    b1 = append["rounds"][-1]["batched"]
    lines.append(
        f"- (b1) {b1['events_per_script_call']} events per script call, "
        f"mean event {b1['mean_event_bytes']} B; last round: wall {b1['usage']['wall_s']} s, "
        f"this process {b1['usage']['client_cpu_s']} s CPU, server "
        f"{b1['usage']['server_cpu_s']} s CPU."
    )
    lat = results["latency"]
    lines.append(
        f"- (c) {lat['samples']:,} sequential emits after {lat['warmup']} warm-up: "
        f"p50 {lat['p50_ms']}, p90 {lat['p90_ms']}, p99 {lat['p99_ms']}, "
        f"p99.9 {lat['p999_ms']}, max {lat['max_ms']} ms; other processes used "
        f"{cell(lat['usage']['other_cpu_s'])} s CPU during its {cell(lat['usage']['wall_s'])} s."
    )
    read = results["read"]
    lines.append(
        f"- (d) {read['events']:,} events in pages of {read['page']}, median of "
        f"{read['passes']} passes; the chain read back verified."
    )
    if "profile" in results:
        lines.append("- Profile (extra b1 run under cProfile; us/event measured without it):")
        for label, micros in results["profile"]["stage_us_per_event"].items():
            lines.append(f"  - {label}: {micros} us/event")
    return "\n".join(lines) + "\n"


def machine_extras() -> dict[str, Any]:
    """The interpreter's implementation, the CPUs this process may use, the libraries
    that carry an append, and the reference's tool: ``machine_info``'s extra fields."""
    return {
        "implementation": platform.python_implementation(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "redis_py": package_version("redis"),
        "hiredis": package_version("hiredis"),
        "msgspec": package_version("msgspec"),
        "anyio": package_version("anyio"),
        "benchmark_tool": benchmark_binary(),
    }


# -- main ---------------------------------------------------------------------------


async def append_rounds(
    store: Store, reference: Reference, plan: Plan, data: dict[str, Any], prefix: str
) -> dict[str, Any]:
    """(a), (b1) and (b2), interleaved, ``plan.rounds`` times; medians over rounds."""
    client = plain_client(store)
    rounds: list[dict[str, Any]] = []
    for index in range(1, plan.rounds + 1):
        tag = f"round {index}/{plan.rounds}"
        progress(f"(a) {tag}: redis-benchmark XADD -P 64 -c 8 -n {plan.events:,} ...")
        rps, ref_usage = await reference.run()
        progress(f"(a) {tag}: " + (f"{rps:,.0f} XADD/s" if rps else f"n/a ({reference.note})"))

        writers = await make_writers(store, plan.writers)
        progress(
            f"(b1) {tag}: {plan.events:,} events, {plan.writers} x emit_many({plan.batch}) ..."
        )
        batched = await append_run(
            "batched",
            store,
            writers,
            partial(append_batched, writers, plan.events, plan.batch, data),
        )
        progress(f"(b1) {tag}: {batched['events_per_s']:,.0f} events/s")

        writers = await make_writers(store, plan.writers)
        progress(
            f"(b2) {tag}: {plan.coalesced_events:,} events, "
            f"{plan.writers} x {plan.emitters} concurrent emit() ..."
        )
        coalesced = await append_run(
            "coalesced",
            store,
            writers,
            partial(append_coalesced, writers, plan.coalesced_events, plan.emitters, data),
        )
        progress(f"(b2) {tag}: {coalesced['events_per_s']:,.0f} events/s")
        ref_xadd = ref_usage.commands.get("xadd") if ref_usage else None
        ref_cpu = ref_usage.server_cpu_s / plan.events * 1e6 if ref_usage else None
        rounds.append(
            {
                "round": index,
                "reference_rps": rps,
                "reference_usage": ref_usage,
                "reference_xadd_us_per_call": (
                    round(ref_xadd[1] / ref_xadd[0], 2) if ref_xadd else None
                ),
                "reference_server_cpu_us_per_xadd": (
                    round(ref_cpu, 2) if ref_cpu is not None else None
                ),
                "batched": batched,
                "coalesced": coalesced,
                "ratio_batched": ratio(batched["events_per_s"], rps),
                "ratio_coalesced": ratio(coalesced["events_per_s"], rps),
                "contended": is_contended(ref_usage, batched["usage"], coalesced["usage"]),
            }
        )
        await delete_matching(client, f"{prefix}:*")  # keep the server's memory flat between rounds
    clean = [r for r in rounds if not r["contended"]]
    return {
        "reference_mode": reference.mode,
        "reference_command": reference.command,
        "reference_note": reference.note,
        **summarise(rounds),
        "uncontended_rounds": len(clean),
        "uncontended": summarise(clean) if clean else None,
        "rounds": rounds,
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over ``rounds`` of the append figures."""
    return {
        "reference_rps": median_of([r["reference_rps"] for r in rounds]),
        "reference_server_cpu_us_per_xadd": median_of(
            [r["reference_server_cpu_us_per_xadd"] for r in rounds]
        ),
        "batched_events_per_s": median_of([r["batched"]["events_per_s"] for r in rounds]),
        "coalesced_events_per_s": median_of([r["coalesced"]["events_per_s"] for r in rounds]),
        "server_cpu_us_per_event": median_of(
            [r["batched"]["server_cpu_us_per_event"] for r in rounds]
        ),
        "client_cpu_us_per_event": median_of(
            [r["batched"]["client_cpu_us_per_event"] for r in rounds]
        ),
        "median_ratio_batched": median_of([r["ratio_batched"] for r in rounds]),
        "median_ratio_coalesced": median_of([r["ratio_coalesced"] for r in rounds]),
    }


async def run(target: Target, plan: Plan, *, quick: bool, profile: bool) -> dict[str, Any]:
    """All four measurements against ``target``; returns the report."""
    started = datetime.now(UTC).replace(microsecond=0)
    prefix = run_prefix()
    settings = Settings(redis_url=target.url, key_prefix=prefix)
    results: dict[str, Any] = {}
    async with open_store(settings) as store:
        client = plain_client(store)
        try:
            machine = await machine_info(store, embedded=target.embedded, **machine_extras())
            progress(
                f"{machine['server']} {machine['server_version']} at {target.host}:{target.port}"
                f"/{target.db}; key prefix {prefix}; load average {machine['loadavg']}"
            )
            pad = padding_for(plan.payload, seq=plan.events // plan.writers)
            data = {"p": "x" * pad}
            progress(f"event data {{'p': 'x' * {pad}}} -> events of about {plan.payload} bytes")
            reference = Reference(target, plan, client, f"{prefix}:ref-xadd")
            results["append"] = await append_rounds(store, reference, plan, data, prefix)

            progress(f"(c) {plan.latency_samples:,} sequential emits after warm-up ...")
            results["latency"] = lat = await latency_phase(store, plan, data)
            progress(
                f"(c) p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, "
                f"max {lat['max_ms']:.3f} ms"
            )

            results["read"] = read = await read_phase(store, target, plan, data)
            progress(
                f"(d) median: Store.read {read['ours_events_per_s']:,.0f} ev/s, client.xrange "
                f"{read['xrange_events_per_s']:,.0f} ev/s, raw XRANGE "
                f"{read['raw_events_per_s']:,.0f} ev/s"
            )

            if profile:
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                out = RESULTS_DIR / f"append-{started.strftime('%Y%m%dT%H%M%SZ')}.prof"
                progress("profiling (b1) under cProfile: an extra run, not a measurement ...")
                results["profile"] = await profile_phase(store, plan, data, out)
        finally:
            with anyio.CancelScope(shield=True):
                deleted = await delete_matching(client, f"{prefix}:*")
            progress(f"deleted {deleted} keys under {prefix}:*")
    report = report_of(
        "append",
        started,
        quick=quick,
        plan=asdict(plan) | {"coalesced_events": plan.coalesced_events},
        machine=machine,
        results=results,
    )
    report["metrics"] = metrics_table(report["results"])
    return report


def main(argv: list[str] | None = None) -> int:
    """Parse options, start (or use) the server, run, write and print the results."""
    parser = arguments("Append benchmark (see bench/README.md).")
    parser.add_argument(
        "--events",
        type=int,
        help=f"N: XADDs of (a) and events of (b1) per round, (b2) does N/2 "
        f"(default {DEFAULT_PLAN.events:,}; --quick {QUICK_PLAN.events:,})",
    )
    parser.add_argument("--payload", type=int, default=256, help="bytes per event (default 256)")
    parser.add_argument("--quick", action="store_true", help="a smaller run, under ~15 s")
    parser.add_argument(
        "--profile", action="store_true", help="also profile (b1) with cProfile and time stages"
    )
    args = parser.parse_args(argv)
    plan = replace(QUICK_PLAN if args.quick else DEFAULT_PLAN, payload=args.payload)
    if args.events is not None:
        plan = replace(plan, events=args.events)
    if plan.events < plan.writers or plan.payload < 1:
        parser.error(f"--events must be at least {plan.writers} and --payload positive")

    with tempfile.TemporaryDirectory(prefix="axon-bench-") as tmp:
        report = run_on_server(
            args.redis_url,
            Path(tmp),
            lambda url, embedded: run(
                parse_target(url, embedded=embedded), plan, quick=args.quick, profile=args.profile
            ),
        )
    publish("append", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
