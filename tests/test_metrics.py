"""Prometheus metrics against real servers: the API's /metrics, the worker's and the
compactor's own endpoints, and prometheus_client's multiprocess mode."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from axon._version import __version__
from axon.connection import open_store
from axon.embedded import ServerProcess
from axon.queue import Queue
from axon.receiptkey import init_key
from axon.records import TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store
from axon.worker import Worker
from tests.conftest import Api
from tests.test_worker import wait_state

pytestmark = pytest.mark.anyio
on_valkey = pytest.mark.parametrize("backend", ["valkey"], indirect=True)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (the parser rejects bad text)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as Prometheus treats a new counter)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def scrape(url: str, **headers: str) -> tuple[str, Samples]:
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(f"{url}/metrics", headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return reply.text, parse(reply.text)


@asynccontextmanager
async def running_worker(store: Store) -> AsyncIterator[Worker]:
    """A worker of this test process for the duration of the block."""
    worker = Worker(Queue(store))
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


@on_valkey
async def test_scrape_counts_requests_appends_and_finished_tasks(
    make_api: Callable[..., Api],
) -> None:
    """Creating and running a task moves the request, append and task counters, and
    the exposition labels routes by template, never with a task or tenant id."""
    api = make_api()
    _, before = await scrape(api.url)
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        async with running_worker(api.store):
            reply = await http.post("/v1/tasks", json={"adapter": "mock", "args": {"count": 5}})
            assert reply.status_code == 201
            task_id = reply.json()["id"]
            record = await wait_state(api.store, task_id, {TaskState.SUCCEEDED})
        assert (await http.get(f"/v1/tasks/{task_id}")).status_code == 200
        assert (await http.get("/no/such/path")).status_code == 404
    text, after = await scrape(api.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "axon_http_requests_total"
    assert moved(requests, method="POST", route="/v1/tasks", status="201") == 1
    assert moved(requests, method="GET", route="/v1/tasks/{task_id}", status="200") == 1
    assert moved(requests, method="GET", route="unmatched", status="404") == 1
    latency = "axon_http_request_duration_seconds_count"
    assert moved(latency, method="POST", route="/v1/tasks", status="201") == 1
    # queued + claimed + 5 ticks + succeeded, all written by this process
    assert record.events == 8
    assert moved("axon_events_appended_total") >= record.events
    assert moved("axon_append_duration_seconds_count") >= 1
    assert moved("axon_tasks_created_total") >= 1
    assert moved("axon_tasks_finished_total", state="succeeded") >= 1
    assert value(after, "axon_redis_up") == 1
    assert value(after, "axon_build_info", version=__version__) == 1
    assert task_id not in text
    assert "acme" not in text  # the tenant of the task and of the key
    assert api.admin not in text


@on_valkey
async def test_queue_gauges_are_read_from_redis_at_scrape(make_api: Callable[..., Api]) -> None:
    """Tasks waiting in a lane show in its depth, in tasks by state and in the age of
    the lane's oldest task; an empty lane reports zero."""
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        for _ in range(3):
            reply = await http.post("/v1/tasks", json={"adapter": "mock", "lane": "low"})
            assert reply.status_code == 201
    _, samples = await scrape(api.url)
    assert value(samples, "axon_queue_depth", lane="low") == 3
    assert value(samples, "axon_queue_depth", lane="high") == 0
    assert value(samples, "axon_tasks", state="queued") == 3
    assert value(samples, "axon_tasks", state="running") == 0
    assert ("axon_queue_oldest_age_seconds", frozenset({("lane", "low")})) in samples
    assert value(samples, "axon_queue_oldest_age_seconds", lane="low") >= 0
    assert value(samples, "axon_queue_oldest_age_seconds", lane="high") == 0


@on_valkey
async def test_metrics_token_and_switch(make_api: Callable[..., Api]) -> None:
    """With a metrics token /metrics wants it as a bearer token; switched off it is a 404."""
    token = "m" * 24
    guarded = make_api(metrics_token=token)
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        assert (await http.get("/metrics", headers=guarded.headers())).status_code == 401
        ok = await http.get("/metrics", headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert "axon_http_requests_total" in ok.text
    off = make_api(metrics_enabled=False)
    async with httpx.AsyncClient(base_url=off.url, timeout=10) as http:
        gone = await http.get("/metrics")
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "not_found"


@on_valkey
async def test_sse_subscribers_and_cancel_latency(make_api: Callable[..., Api]) -> None:
    """An open event stream counts as a subscriber until it ends, and a cancelled run
    records one cancel latency observation."""
    api = make_api()
    _, before = await scrape(api.url)
    headers = api.headers(accept="text/event-stream")
    async with (
        httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http,
        running_worker(api.store),
    ):
        reply = await http.post(
            "/v1/tasks",
            json={"adapter": "mock", "args": {"forever": True, "interval_ms": 20}},
        )
        task_id = reply.json()["id"]
        await wait_state(api.store, task_id, {TaskState.RUNNING})
        async with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as sse:
            assert sse.status_code == 200
            lines = sse.aiter_lines()
            async for line in lines:  # the stream is attached once events flow
                if line.startswith("id: "):
                    break
            _, during = await scrape(api.url)
            assert value(during, "axon_sse_subscribers") >= 1 + value(
                before, "axon_sse_subscribers"
            )
            assert (await http.post(f"/v1/tasks/{task_id}/cancel")).status_code == 202
            async for _ in lines:  # ends after the terminal event
                pass
        await wait_state(api.store, task_id, {TaskState.CANCELED})
    with anyio.fail_after(10):
        while True:
            _, after = await scrape(api.url)
            if value(after, "axon_sse_subscribers") == value(before, "axon_sse_subscribers"):
                break
            await anyio.sleep(0.05)
    count = "axon_cancel_duration_seconds_count"
    assert value(after, count) - value(before, count) == 1
    assert value(after, "axon_tasks_finished_total", state="canceled") >= 1


# -- the worker's and the compactor's own endpoints (real processes) ------------------


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"mx{os.getpid()}{os.urandom(3).hex()}"


@pytest.fixture
async def queue(valkey: ServerProcess, prefix: str, tmp_path: Path) -> AsyncIterator[Queue]:
    """A queue on the session Valkey, under this test's prefix."""
    settings = Settings(redis_url=valkey.url, key_prefix=prefix, data_dir=str(tmp_path / "data"))
    async with open_store(settings) as store:
        yield Queue(store)


@pytest.fixture
def spawn(valkey: ServerProcess, prefix: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Factory of ``python -m axon ...`` processes on this test's prefix; all are
    stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[subprocess.Popen[str]] = []

    def create(*argv: str, **env: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "axon", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "REDIS_URL": valkey.url, "AXON_KEY_PREFIX": prefix, **env},
        )
        started.append(process)
        return process

    yield create
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def metrics_url(process: subprocess.Popen[str], what: str) -> str:
    """The metrics URL a worker or compactor printed on stdout (bounded by the test timeout)."""
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"(http://[0-9.]+:\d+)/metrics", line)
        if match:
            return match.group(1)
    raise AssertionError(f"{what} printed no metrics URL: {process.communicate()[1]}")


async def test_worker_serves_its_own_metrics(
    queue: Queue, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """``axon worker --metrics-port 0`` serves its counters and the deployment gauges,
    and its endpoint honours the metrics token."""
    token = "w" * 20
    worker = spawn("worker", "--metrics-port", "0", AXON_METRICS_TOKEN=token)
    url = metrics_url(worker, "the worker")
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{url}/metrics")).status_code == 401
        assert (await http.get(f"{url}/healthz")).status_code == 200
    record = await queue.submit(TaskSpec(tenant="acme", adapter="mock", args={"count": 2}))
    done = await wait_state(queue.store, record.id, {TaskState.SUCCEEDED})
    text, samples = await scrape(url, authorization=f"Bearer {token}")
    assert value(samples, "axon_tasks_finished_total", state="succeeded") == 1
    # everything but the first event (queued), which this test process wrote
    assert value(samples, "axon_events_appended_total") == done.events - 1
    assert value(samples, "axon_redis_up") == 1
    assert value(samples, "axon_queue_depth", lane="default") == 0
    assert record.id not in text


async def test_compactor_serves_compaction_progress(
    queue: Queue, spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """``axon compactor --metrics-port 0`` reports the tasks, events and bytes it archived."""
    data = tmp_path / "data"
    init_key(data / "receipt.key", "axon.test/metrics")
    record = await queue.submit(TaskSpec(tenant="acme", adapter="mock", args={"count": 3}))
    worker = Worker(queue)
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        done = await wait_state(queue.store, record.id, {TaskState.SUCCEEDED})
        worker.stop()
    compactor = spawn(
        "compactor",
        "--metrics-port",
        "0",
        AXON_DATA_DIR=str(data),
        AXON_COMPACT_RETENTION_S="0",
        AXON_COMPACT_INTERVAL_S="0.1",
    )
    url = metrics_url(compactor, "the compactor")
    with anyio.fail_after(20):
        while True:
            _, samples = await scrape(url)
            if value(samples, "axon_compaction_tasks_total") >= 1:
                break
            await anyio.sleep(0.05)
    assert value(samples, "axon_compaction_events_archived_total") == done.events
    assert value(samples, "axon_compaction_bytes_archived_total") == done.event_bytes
    assert value(samples, "axon_compaction_pass_duration_seconds_count") >= 1
    assert value(samples, "axon_compaction_failures_total") == 0


async def test_multiprocess_mode_merges_every_process(
    queue: Queue, spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR shared, one process's endpoint reports what
    another process (here one that already exited) counted."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    first = spawn("worker", **env)
    assert first.stdout is not None
    assert "ready" in first.stdout.readline()
    record = await queue.submit(TaskSpec(tenant="acme", adapter="mock", args={"count": 4}))
    done = await wait_state(queue.store, record.id, {TaskState.SUCCEEDED})
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=15)
    assert any(shared.iterdir()), "the first worker wrote no metric files"
    second = spawn("worker", "--metrics-port", "0", **env)
    _, samples = await scrape(metrics_url(second, "the second worker"))
    assert value(samples, "axon_tasks_finished_total", state="succeeded") == 1
    assert value(samples, "axon_events_appended_total") == done.events - 1
    assert value(samples, "axon_redis_up") == 1


async def test_dev_metrics_include_worker_and_compactor(
    spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """``axon dev`` runs everything in one process, so its API's /metrics counts what its
    worker and compactor did; its logs are human-readable text."""
    dev = spawn(
        "dev",
        "--data-dir",
        str(tmp_path),
        "--port",
        "0",
        AXON_COMPACT_RETENTION_S="0",
        AXON_COMPACT_INTERVAL_S="0.1",
    )
    assert dev.stdout is not None
    banner = ""
    while "Press Ctrl-C" not in banner:  # bounded by the test timeout
        banner += dev.stdout.readline()
    url = re.search(r"API\s+(http://\S+)", banner)
    key = re.search(r"Admin key\s+(axon_\S+)", banner)
    assert url is not None, banner
    assert key is not None, banner
    headers = {"authorization": f"Bearer {key.group(1)}"}
    async with httpx.AsyncClient(base_url=url.group(1), headers=headers, timeout=20) as http:
        created = await http.post("/v1/tasks", json={"adapter": "mock", "args": {"count": 2}})
        assert created.status_code == 201
        events = await http.get(
            created.json()["stream_url"], headers={"accept": "text/event-stream"}
        )
        assert "event: succeeded" in events.text
    with anyio.fail_after(20):
        while True:
            _, samples = await scrape(url.group(1))
            if value(samples, "axon_compaction_tasks_total") >= 1:
                break
            await anyio.sleep(0.05)
    assert value(samples, "axon_tasks_finished_total", state="succeeded") == 1
    assert value(samples, "axon_compaction_events_archived_total") == 5
    assert value(samples, "axon_sse_subscribers") == 0
    dev.send_signal(signal.SIGTERM)
    _, stderr = dev.communicate(timeout=30)
    access = [line for line in stderr.splitlines() if "axon.access" in line]
    assert any("POST /v1/tasks 201" in line and "request_id=" in line for line in access)
    assert not any(line.lstrip().startswith("{") for line in stderr.splitlines())
    assert key.group(1) not in stderr
