"""OpenTelemetry tracing of a task across API → queue → worker → append, and off by default."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from axon import tracing
from axon.queue import Queue
from axon.records import TaskState
from axon.settings import Settings
from axon.store import Store
from axon.worker import Worker
from tests.conftest import Api

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["valkey"], indirect=True)]

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{INCOMING_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, into an in-memory exporter; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


async def run_until(store: Store, task_id: str, state: TaskState) -> None:
    """Run a worker in this process until the task reaches ``state``."""
    worker = Worker(Queue(store))
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        with anyio.fail_after(20):
            after = 0
            while (await store.get_task(task_id)).state is not state:
                events = await store.wait_events(task_id, after_seq=after, timeout_ms=200)
                after = events[-1].seq if events else after
        worker.stop()


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_one_trace_spans_create_run_and_appends(
    make_api: Callable[..., Api], spans: InMemorySpanExporter
) -> None:
    """The API request, the worker's run and every append of the task share one trace
    id; the run is a child of the request and the run's appends children of the run."""
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        reply = await http.post("/v1/tasks", json={"adapter": "mock", "args": {"count": 3}})
        assert reply.status_code == 201
        task_id = reply.json()["id"]
        record = await api.store.get_task(task_id)
        await run_until(api.store, task_id, TaskState.SUCCEEDED)
    finished = spans.get_finished_spans()
    (request,) = [s for s in named(finished, "POST /v1/tasks") if s.kind is SpanKind.SERVER]
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    trace_id = request.context.trace_id
    assert record.traceparent is not None
    assert record.traceparent.startswith(f"00-{trace_id:032x}-{request.context.span_id:016x}-")
    (run,) = named(finished, "axon.task.run")
    assert run.context.trace_id == trace_id
    assert run.parent is not None
    assert run.parent.span_id == request.context.span_id
    assert run.attributes is not None
    assert run.attributes["axon.task_id"] == task_id
    appends = [
        s
        for s in named(finished, "axon.append")
        if s.attributes is not None and s.attributes["axon.task_id"] == task_id
    ]
    # claimed, 3 ticks (possibly batched together), succeeded
    assert sum(int(str((s.attributes or {})["axon.events"])) for s in appends) == 5
    for append in appends:
        assert append.context.trace_id == trace_id
        assert append.parent is not None
        assert append.parent.span_id == run.context.span_id
    assert appends[-1].attributes is not None
    assert appends[-1].attributes["axon.state"] == "succeeded"


async def test_incoming_traceparent_is_continued(
    make_api: Callable[..., Api], spans: InMemorySpanExporter
) -> None:
    """A request carrying a W3C traceparent joins that trace; the route names its span."""
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        reply = await http.post(
            "/v1/tasks", json={"adapter": "mock"}, headers={"traceparent": INCOMING}
        )
        task_id = reply.json()["id"]
        assert (await http.get(f"/v1/tasks/{task_id}")).status_code == 200
    record = await api.store.get_task(task_id)
    assert record.traceparent is not None
    assert record.traceparent.split("-")[1] == INCOMING_TRACE
    finished = spans.get_finished_spans()
    (get,) = named(finished, "GET /v1/tasks/{task_id}")
    assert task_id not in get.name


async def test_tracing_off_records_nothing(make_api: Callable[..., Api]) -> None:
    """Without configuration no trace context is stored and nothing is set up."""
    assert not tracing.enabled()
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        reply = await http.post(
            "/v1/tasks", json={"adapter": "mock"}, headers={"traceparent": INCOMING}
        )
    record = await api.store.get_task(reply.json()["id"])
    assert record.traceparent is None
    assert tracing.current_traceparent() is None
    assert tracing.configure(Settings()) is None
    assert not tracing.enabled()
