"""Receipts and compaction benchmark: one run, one server, each figure beside a reference.

(a) tree build: hashing a task's events into its stored Merkle tree (events/s),
    against reading the same events with raw ``XRANGE`` (the floor of any pass);
(b) proof generation latency (``Receipts.proof``, in process) with the tree in
    Redis and after compaction (tree chunks and events in the archive), against
    one ``HGET`` round trip;
(c) compaction throughput (events/s) of one big finished task and of many small
    ones (``Compactor.run_once``), against raw ``XRANGE`` of the same events;
(d) Redis memory per task before and after compaction (``MEMORY USAGE`` of every
    key of the task);
(e) ``axon verify --events`` on the big task's export (a subprocess, as an
    auditor runs it): events/s, against ``sha256sum`` of the same file.

Results go to ``bench/results/receipts-<UTC timestamp>.{json,md}`` and
``receipts-latest.{json,md}``.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from axon.compactor import Compactor
from axon.connection import open_store
from axon.notes import NoteSigner
from axon.queue import Queue
from axon.receipts import Receipts
from axon.records import TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store
from axon.tree import TaskTrees
from axon.writer import EventWriter

# isort: split
from common import (
    arguments,
    machine_info,
    metric,
    metrics_markdown,
    percentile,
    plain_client,
    progress,
    publish,
    read_raw,
    report_of,
    run_on_server,
    run_prefix,
)

SIGNER = NoteSigner.generate("bench.axon/receipts")


async def build_task(store: Store, events: int, *, tenant: str = "bench") -> str:
    """A finished task with ``events`` events (~170 bytes each), written in 256-event batches."""
    record = await Queue(store).submit(TaskSpec(tenant=tenant, adapter="mock"))
    writer = EventWriter(store, record.id, epoch=0)
    await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
    steps = events - 3
    payload = "x" * 40
    for start in range(0, steps, 256):
        count = min(256, steps - start)
        await writer.emit_many([("step", {"i": start + i, "p": payload}) for i in range(count)])
    await writer.finish(TaskState.SUCCEEDED, {"ok": True})
    return record.id


async def task_memory(store: Store, task_id: str) -> int:
    """Bytes Redis uses for every key of the task (``MEMORY USAGE ... SAMPLES 0``)."""
    client = plain_client(store)
    total = 0
    pattern = f"{store.keys.prefix}:{{{task_id}}}:*"
    async for key in client.scan_iter(match=pattern, count=1000):
        total += int(await client.memory_usage(key, samples=0) or 0)
    return total


async def raw_read_rate(store: Store, task_ids: list[str]) -> float:
    """Events/s of raw ``XRANGE`` paging over the tasks' streams (the reference)."""
    client = plain_client(store)
    started = time.perf_counter()
    total = 0
    for task_id in task_ids:
        total += await read_raw(client, store.keys.events(task_id), page=4096)
    return total / (time.perf_counter() - started)


async def proof_latencies(receipts: Receipts, task_id: str, head: int, n: int) -> list[float]:
    """Milliseconds per ``Receipts.proof`` of random events, sorted."""
    rng = random.Random(7)
    samples = []
    for _ in range(n):
        seq = rng.randint(1, head)
        started = time.perf_counter()
        await receipts.proof(task_id, seq)
        samples.append((time.perf_counter() - started) * 1000)
    return sorted(samples)


async def hget_latencies(store: Store, task_id: str, n: int) -> list[float]:
    """Milliseconds per ``HGET`` of the task record (one round trip), sorted."""
    samples = []
    key = store.keys.task(task_id)
    for _ in range(n):
        started = time.perf_counter()
        await store.redis.hget(key, "head_seq")
        samples.append((time.perf_counter() - started) * 1000)
    return sorted(samples)


def timed_process(command: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done


async def run(url: str, embedded: bool, *, quick: bool, work: Path) -> dict[str, Any]:
    big_events = 100_000 if quick else 1_000_000
    small_tasks, small_events = (50, 500) if quick else (200, 1000)
    proofs = 200 if quick else 1000
    settings = Settings(
        redis_url=url,
        key_prefix=run_prefix(),
        data_dir=str(work / "data"),
        compact_retention_s=0,
    )
    started = datetime.now(UTC)
    async with open_store(settings) as store:
        machine = await machine_info(store, embedded=embedded)
        receipts = Receipts(store, SIGNER)
        compactor = Compactor(store, receipts, settings=settings)

        progress(f"writing a finished task of {big_events:,} events ...")
        big = await build_task(store, big_events)
        progress(f"writing {small_tasks} finished tasks of {small_events:,} events ...")
        small = [await build_task(store, small_events) for _ in range(small_tasks)]

        progress("(a) tree build vs raw XRANGE ...")
        xrange_big = await raw_read_rate(store, [big])
        t0 = time.perf_counter()
        await TaskTrees(store).extend_to(big, big_events)
        tree_rate = big_events / (time.perf_counter() - t0)

        progress("(b) proof latency, tree in Redis ...")
        live = await proof_latencies(receipts, big, big_events, proofs)
        rtt = await hget_latencies(store, big, proofs)

        progress("(d) memory before compaction ...")
        mem_big_before = await task_memory(store, big)
        mem_small_before = sum([await task_memory(store, t) for t in small[:20]]) / 20

        progress("(c) compacting the big task ...")
        t0 = time.perf_counter()
        result = await compactor.compact_task(big, force=True)
        compact_big = big_events / (time.perf_counter() - t0)
        assert result is not None
        assert result.archived_to == big_events

        progress("(c) compacting the small tasks (run_once) ...")
        xrange_small = await raw_read_rate(store, small)
        queue = Queue(store)
        for task_id in small:
            await queue.release(task_id)
        t0 = time.perf_counter()
        report = await compactor.run_once(limit=small_tasks)
        small_seconds = time.perf_counter() - t0
        assert report.tasks_compacted == small_tasks, report
        compact_small = small_tasks * small_events / small_seconds

        progress("(d) memory after compaction ...")
        mem_big_after = await task_memory(store, big)
        mem_small_after = sum([await task_memory(store, t) for t in small[:20]]) / 20

        progress("(b) proof latency, compacted (archive-backed) ...")
        archived = await proof_latencies(receipts, big, big_events, proofs)

        progress("(e) exporting the big task, then axon verify --events ...")
        export = work / "export.ndjson"
        with export.open("wb") as handle:
            async for event in store.iter_events(big, page_size=10_000):
                handle.write(event.raw + b"\n")
        receipt = work / "receipt.tlog-proof"
        receipt.write_text(await receipts.receipt(big))
        verify_s, verified = timed_process(
            [sys.executable, "-m", "axon", "verify", str(receipt),
             "--key", SIGNER.verifier_key(), "--events", str(export)]
        )  # fmt: skip
        if verified.returncode != 0:
            raise SystemExit(f"axon verify failed: {verified.stdout}{verified.stderr}")
        sha_s = None
        if shutil.which("sha256sum"):
            sha_s, _ = timed_process(["sha256sum", str(export)])
        export_bytes = export.stat().st_size
        stats = await compactor.statistics()

    verify_rate = big_events / verify_s
    sha_rate = big_events / sha_s if sha_s else None
    rows = [
        metric("(a) tree build, events/s", round(tree_rate), round(xrange_big), "raw XRANGE"),
        metric(
            "(b) proof p50 ms, tree in Redis",
            round(percentile(live, 0.5), 3),
            round(percentile(rtt, 0.5), 3),
            "HGET round trip",
        ),
        metric(
            "(b) proof p99 ms, tree in Redis",
            round(percentile(live, 0.99), 3),
            round(percentile(rtt, 0.99), 3),
            "HGET round trip",
        ),
        metric(
            "(b) proof p50 ms, compacted",
            round(percentile(archived, 0.5), 3),
            round(percentile(rtt, 0.5), 3),
            "HGET round trip",
        ),
        metric(
            "(b) proof p99 ms, compacted",
            round(percentile(archived, 0.99), 3),
            round(percentile(rtt, 0.99), 3),
            "HGET round trip",
        ),
        metric(
            f"(c) compaction, 1 task x {big_events:,} events, events/s",
            round(compact_big),
            round(xrange_big),
            "raw XRANGE",
        ),
        metric(
            f"(c) compaction, {small_tasks} tasks x {small_events:,} events, events/s",
            round(compact_small),
            round(xrange_small),
            "raw XRANGE",
        ),
        metric("(d) Redis bytes, big task, before", mem_big_before),
        metric("(d) Redis bytes, big task, after", mem_big_after, mem_big_before, "before"),
        metric("(d) Redis bytes per small task, before", round(mem_small_before)),
        metric(
            "(d) Redis bytes per small task, after",
            round(mem_small_after),
            round(mem_small_before),
            "before",
        ),
        metric(
            f"(e) axon verify --events, {big_events:,} events, events/s",
            round(verify_rate),
            round(sha_rate) if sha_rate else None,
            "sha256sum of the file",
        ),
    ]
    results = {
        "big_events": big_events,
        "small_tasks": small_tasks,
        "small_events": small_events,
        "export_bytes": export_bytes,
        "verify_seconds": round(verify_s, 2),
        "sha256sum_seconds": round(sha_s, 3) if sha_s else None,
        "compaction_result": msgspec.to_builtins(result),
        "small_pass": msgspec.to_builtins(report),
        "compactor_stats": msgspec.to_builtins(stats),
        "verify_output": verified.stdout.splitlines(),
    }
    plan = {"proofs": proofs, "segment": "4096 events / 8 MiB", "fsync": True}
    out = report_of("receipts", started, quick=quick, plan=plan, machine=machine, results=results)
    out["metrics"] = rows
    text = "\n".join(
        [
            f"# Receipts and compaction benchmark ({out['started_utc']})",
            "",
            f"{machine['server']} {machine['server_version']}, Python {machine['python']}, "
            f"{machine['cpu_count']} CPUs, load {machine['loadavg']}"
            + (" (quick run)" if quick else ""),
            "",
            *metrics_markdown(rows),
            "",
            "The archive is a local directory with fsync on every blob. Proof latency is "
            "in process (no HTTP); the compacted figure reads tree chunks and the event "
            "from the archive (cached after first use).",
            "",
        ]
    )
    publish("receipts", out, text)
    return out


def main() -> None:
    parser = arguments(__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k-event task, fewer samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="axon-bench-receipts-") as tmp:
        work = Path(tmp)

        async def go(url: str, embedded: bool) -> dict[str, Any]:
            return await run(url, embedded, quick=args.quick, work=work)

        run_on_server(args.redis_url, work / "server", go)


if __name__ == "__main__":
    main()
