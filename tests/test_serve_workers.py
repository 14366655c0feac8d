"""``axon serve --workers N``: real child processes on one port, merged metrics,
replacement of a dead child, draining on SIGTERM, and start-up failures."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from axon.apikeys import KeyStore, Role
from axon.connection import open_store
from axon.embedded import ServerProcess
from axon.queue import Queue
from axon.records import TaskSpec
from axon.settings import Settings
from axon.store import Store
from tests.sse_client import Frame, RawStream

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(valkey: ServerProcess, tmp_path: Path) -> AsyncIterator[Store]:
    """A store on the session Valkey under a prefix of this test's own."""
    settings = Settings(
        redis_url=valkey.url,
        key_prefix=f"sw{os.getpid()}{os.urandom(3).hex()}",
        data_dir=str(tmp_path),
    )
    async with open_store(settings) as opened:
        yield opened


def serve_env(store: Store, **extra: str) -> dict[str, str]:
    """The environment of an ``axon serve`` on ``store``'s Redis and prefix, port 0."""
    env = {
        **os.environ,
        "REDIS_URL": store.settings.redis_url or "",
        "AXON_KEY_PREFIX": store.settings.key_prefix,
        "AXON_DATA_DIR": store.settings.data_dir,
        "AXON_LOG_FORMAT": "text",
        "AXON_SHUTDOWN_GRACE_S": "5",
        "AXON_API_PORT": "0",
        **extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@pytest.fixture
def serve(store: Store) -> Iterator[list[subprocess.Popen[str]]]:
    """Started ``axon serve`` parents; any still running at the end are killed with
    their children."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


def start(
    started: list[subprocess.Popen[str]], env: dict[str, str], *args: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "axon", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    started.append(process)
    return process


def listening_url(process: subprocess.Popen[str]) -> str:
    """The URL from the parent's banner (read with the test's timeout as the bound)."""
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"listening on (http://\S+) \((\d+) processes", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no banner; stderr: {process.stderr.read() if process.stderr else ''}")


def children(process: subprocess.Popen[str]) -> set[int]:
    """Pids of the parent's live ``serve --fd`` children."""
    return {
        child.pid
        for child in psutil.Process(process.pid).children()
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    }


def replaced(parent: subprocess.Popen[str], victim: int, timeout_s: float = 20) -> set[int]:
    """Wait (in a thread) until ``parent`` has two live children again, ``victim`` not
    among them; their pids."""
    deadline = time.monotonic() + timeout_s
    while len(now := children(parent)) != 2 or victim in now:
        assert time.monotonic() < deadline, f"no replacement for {victim}: {now}"
        time.sleep(0.05)
    return now


def healthz_count(text: str) -> float:
    match = re.search(
        r'^axon_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(match.group(1)) if match else 0.0


async def test_children_share_the_port_merge_metrics_and_are_replaced(
    store: Store, serve: list[subprocess.Popen[str]]
) -> None:
    """Two children accept on one port; every scrape, whichever child answers, counts
    every request; a SIGKILLed child is replaced and its counts are kept."""
    parent = start(serve, serve_env(store), "--workers", "2")
    url = listening_url(parent)
    first = children(parent)
    assert len(first) == 2
    metrics_dirs = {psutil.Process(pid).environ()["PROMETHEUS_MULTIPROC_DIR"] for pid in first}
    assert len(metrics_dirs) == 1  # one shared directory the parent made
    (metrics_dir,) = metrics_dirs
    for _ in range(30):  # a new connection each, so the children take turns accepting
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
    for _ in range(5):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert healthz_count((await http.get("/metrics")).text) == 30

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    now = await anyio.to_thread.run_sync(replaced, parent, victim)
    assert now & first == first - {victim}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        with anyio.fail_after(20):  # the replacement may still be starting: its requests wait
            assert (await http.get("/healthz")).status_code == 200
        assert healthz_count((await http.get("/metrics")).text) >= 31
    assert parent.poll() is None

    parent.send_signal(signal.SIGTERM)
    _, stderr = await anyio.to_thread.run_sync(lambda: parent.communicate(timeout=30))
    assert parent.returncode == 0, stderr
    assert "exited with status -9" in stderr  # the replacement was logged
    assert not await anyio.Path(metrics_dir).exists()  # the parent removed its directory
    for pid in now:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_sigterm_drains_every_child_s_streams(
    store: Store, serve: list[subprocess.Popen[str]]
) -> None:
    """On SIGTERM each child ends its open SSE streams with ``axon.reconnect`` (so the
    clients resume elsewhere) and the parent exits 0 once they all have."""
    key, _ = await KeyStore(store).create("acme", Role.READER)
    record = await Queue(store).submit(TaskSpec(tenant="acme", adapter="mock"))
    parent = start(serve, serve_env(store), "--workers", "2")
    port = int(listening_url(parent).rsplit(":", 1)[1])
    streams = [
        await RawStream.open(port, f"/v1/tasks/{record.id}/events", key=key) for _ in range(6)
    ]
    with anyio.fail_after(20):
        for stream in streams:  # each is past its backfill: the queued event came
            seen: list[Frame] = []
            while not any(frame.id == "1" for frame in seen):
                batch = await stream.next_frames()
                assert batch is not None
                seen += batch
    parent.send_signal(signal.SIGTERM)
    ends: list[list[Frame]] = []
    with anyio.fail_after(30):
        for stream in streams:
            ends.append(await stream.frames())
    assert all(frames and frames[-1].event == "axon.reconnect" for frames in ends)
    await anyio.to_thread.run_sync(lambda: parent.communicate(timeout=30))
    assert parent.returncode == 0


async def test_start_failures_are_one_line_errors(
    store: Store, serve: list[subprocess.Popen[str]]
) -> None:
    """A port in use, a child that cannot start (a bad receipt key), and a bad
    ``--workers`` each end the command with a one-line error, not a traceback."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = start(serve, serve_env(store, AXON_API_PORT=str(port)), "--workers", "2")
        _, stderr = await anyio.to_thread.run_sync(lambda: busy.communicate(timeout=30))
    assert busy.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr

    broken = start(serve, serve_env(store, AXON_RECEIPT_KEY="not a key"), "--workers", "2")
    stdout, stderr = await anyio.to_thread.run_sync(lambda: broken.communicate(timeout=60))
    assert broken.returncode == 1
    assert "exited with status" in stderr
    assert "before it listened" in stderr
    assert "listening on" not in stdout

    zero = start(serve, serve_env(store), "--workers", "0")
    _, stderr = await anyio.to_thread.run_sync(lambda: zero.communicate(timeout=30))
    assert zero.returncode != 0
    assert "--workers must be at least 1" in stderr
    assert "Traceback" not in stderr
