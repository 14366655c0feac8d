"""Real worker processes: crashes, stalls, shutdowns — the chain stays intact, nothing is lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from axon.chain import verify_chain
from axon.connection import open_store
from axon.embedded import ServerProcess
from axon.events import decode_event
from axon.queue import Queue
from axon.records import TaskRecord, TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store

pytestmark = pytest.mark.anyio

TIMINGS = {
    "AXON_HEARTBEAT_INTERVAL_S": "0.2",
    "AXON_LEASE_TIMEOUT_S": "1.0",
    "AXON_WATCHDOG_INTERVAL_S": "0.1",
    "AXON_SHUTDOWN_GRACE_S": "0.3",
    "AXON_TIMEOUT_GRACE_S": "0.5",
}


class WorkerProcess:
    """An ``axon worker`` subprocess that announced it is ready."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"wp{os.getpid()}{os.urandom(3).hex()}"


@pytest.fixture
async def queue(valkey: ServerProcess, prefix: str) -> AsyncIterator[Queue]:
    """A queue on the session Valkey, under this test's prefix."""
    settings = Settings(redis_url=valkey.url, key_prefix=prefix)
    async with open_store(settings) as store:
        yield Queue(store)


@pytest.fixture
def start_worker(valkey: ServerProcess, prefix: str) -> Iterator[Callable[[], WorkerProcess]]:
    """Factory of worker processes (``python -m axon worker``); all are killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def create() -> WorkerProcess:
        env = {**os.environ, **TIMINGS, "REDIS_URL": valkey.url, "AXON_KEY_PREFIX": prefix}
        process = subprocess.Popen(
            [sys.executable, "-m", "axon", "worker", "--import", "tests.worker_tasks"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded by the test timeout
        assert "ready" in line, process.stderr.read() if process.stderr else line
        return WorkerProcess(process)

    yield create
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def ticker(**kwargs: Any) -> TaskSpec:
    """A python task emitting pid-stamped ticks."""
    return TaskSpec(
        tenant="acme",
        adapter="python",
        args={"function": "test.pid_ticker", "kwargs": kwargs},
        max_attempts=3,
    )


async def wait_until(
    store: Store,
    task_id: str,
    check: Callable[[TaskRecord, list[Any]], bool],
    *,
    within: float = 15,
) -> list[Any]:
    """Follow the task's log until ``check(record, events)`` holds; returns the decoded events."""
    with anyio.fail_after(within):
        while True:
            events = [decode_event(e.raw) for e in await store.read(task_id, limit=10_000)]
            if check(await store.get_task(task_id), events):
                return events
            await store.wait_events(task_id, after_seq=events[-1].seq, timeout_ms=200)


async def verified(store: Store, task_id: str) -> list[Any]:
    """The whole log, verified against the head in the record."""
    raws = [e.raw async for e in store.iter_events(task_id)]
    verify_chain(raws, task=task_id, expected_head=await store.head(task_id))
    return [decode_event(r) for r in raws]


def ticks_of(events: list[Any], pid: int) -> int:
    return sum(1 for e in events if e.kind == "tick" and e.data["pid"] == pid)


async def test_sigkilled_worker_task_finishes_elsewhere(
    queue: Queue, start_worker: Callable[[], WorkerProcess]
) -> None:
    """SIGKILL mid-task: another worker reclaims and finishes it; the chain has no gap or copy."""
    first = start_worker()
    record = await queue.submit(ticker(count=30, interval_ms=20))
    await wait_until(queue.store, record.id, lambda r, ev: ticks_of(ev, first.pid) >= 3)
    first.process.kill()
    first.process.wait()
    second = start_worker()
    await wait_until(queue.store, record.id, lambda r, ev: r.state.terminal)
    events = await verified(queue.store, record.id)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "succeeded"
    assert kinds.count("reclaimed") == 1
    assert kinds.count("claimed") == 2
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert ticks_of(events, second.pid) == 30
    reclaimed_at = kinds.index("reclaimed")
    assert all(e.data["pid"] == first.pid for e in events[:reclaimed_at] if e.kind == "tick")


async def test_stalled_worker_is_fenced_after_reclaim(
    queue: Queue, start_worker: Callable[[], WorkerProcess]
) -> None:
    """SIGSTOP until reclaimed, then SIGCONT: the stale worker's appends are refused; it stops."""
    stalled = start_worker()
    record = await queue.submit(ticker(interval_ms=20))
    await wait_until(queue.store, record.id, lambda r, ev: ticks_of(ev, stalled.pid) >= 3)
    os.kill(stalled.pid, signal.SIGSTOP)
    healthy = start_worker()
    await wait_until(queue.store, record.id, lambda r, ev: ticks_of(ev, healthy.pid) >= 3)
    os.kill(stalled.pid, signal.SIGCONT)
    # Give the resumed worker the chance to try (it wakes from its sleep and emits at once),
    # measured by the healthy worker's progress, not by the clock.
    await wait_until(queue.store, record.id, lambda r, ev: ticks_of(ev, healthy.pid) >= 30)
    await queue.cancel(record.id)
    await wait_until(queue.store, record.id, lambda r, ev: r.state.terminal)
    events = await verified(queue.store, record.id)
    kinds = [e.kind for e in events]
    takeover = kinds.index("reclaimed")
    assert all(e.data["pid"] != stalled.pid for e in events[takeover:] if e.kind == "tick")
    assert kinds[-1] == "canceled"
    assert stalled.process.poll() is None  # it stopped the task, not itself


async def test_sigterm_drains_and_hands_back(
    queue: Queue, start_worker: Callable[[], WorkerProcess]
) -> None:
    """SIGTERM with a task in flight: the worker hands it back and exits 0; another resumes it."""
    leaving = start_worker()
    record = await queue.submit(ticker(interval_ms=20))
    await wait_until(queue.store, record.id, lambda r, ev: ticks_of(ev, leaving.pid) >= 3)
    leaving.process.send_signal(signal.SIGTERM)
    assert leaving.process.wait(timeout=20) == 0
    back = await queue.store.get_task(record.id)
    assert back.state is TaskState.QUEUED
    staying = start_worker()
    await wait_until(queue.store, record.id, lambda r, ev: ticks_of(ev, staying.pid) >= 3)
    await queue.cancel(record.id)
    await wait_until(queue.store, record.id, lambda r, ev: r.state.terminal)
    kinds = [e.kind for e in await verified(queue.store, record.id)]
    assert kinds.count("requeued") == 1
    assert kinds.count("claimed") == 2
    assert kinds[-1] == "canceled"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
async def test_cancel_running_shell_task_kills_the_process(
    queue: Queue, start_worker: Callable[[], WorkerProcess]
) -> None:
    """Cancelling a running sandboxed shell task: its process is gone and canceled is last."""
    start_worker()
    marker = f"30.{int.from_bytes(os.urandom(3), 'big')}"
    record = await queue.submit(
        TaskSpec(
            tenant="acme",
            adapter="shell",
            args={"argv": ["sh", "-c", f"echo ready; exec sleep {marker}"]},
        )
    )
    await wait_until(queue.store, record.id, lambda r, ev: any(e.kind == "stdout" for e in ev))
    assert _pids(marker)
    await queue.cancel(record.id)
    await wait_until(queue.store, record.id, lambda r, ev: r.state.terminal, within=5)
    kinds = [e.kind for e in await verified(queue.store, record.id)]
    assert kinds[-1] == "canceled"
    assert _pids(marker) == []


def _pids(marker: str) -> list[int]:
    """Host pids of processes whose command line contains ``marker``."""
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]
