"""Optional OpenTelemetry tracing of a task: API request → queue → worker run → appends.

Off unless configured (``AXON_OTEL_ENDPOINT``, or ``AXON_OTEL=1`` with the
standard ``OTEL_EXPORTER_OTLP_*`` variables): then every hook here returns at
once, nothing is imported from the SDK and nothing touches the network.

When on, the trace of one task is:

* ``POST /v1/tasks`` — the API's server span (``axon.access`` starts one per
  request, continuing an incoming ``traceparent`` header);
* the task record keeps that span's W3C ``traceparent`` (written by the create
  script), which is how the trace crosses the queue;
* ``axon.task.run`` — the worker's span for one attempt, a child of the
  request span, current while the adapter runs;
* ``axon.append`` — one span per append batch (events, seq range), a child
  of whatever span is current (the run, or an API request that cancelled a
  queued task).

Only ``opentelemetry-api`` is needed to import this module; ``configure``
needs the ``otel`` extra (the SDK and the OTLP/HTTP exporter).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from axon._version import __version__
from axon.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from axon.records import TaskRecord
    from axon.settings import Settings

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None
_RUN: ContextVar[trace.Span | None] = ContextVar("axon_run_span", default=None)


def enabled() -> bool:
    """Whether spans are recorded."""
    return _tracer is not None


def use(provider: trace.TracerProvider | None) -> None:
    """Trace through ``provider`` from now on (None: stop tracing).

    ``configure`` calls it; tests and programs embedding Axon call it with a
    provider of their own (e.g. one with an in-memory exporter).
    """
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("axon", __version__)


def configure(settings: Settings) -> TracerProvider | None:
    """Install the SDK with a batching OTLP/HTTP exporter when ``settings`` enable
    tracing; returns the provider (``shutdown()`` it on exit to flush), or None.

    Raises:
        ConfigError: tracing is enabled but the ``otel`` extra is not installed.
    """
    if not settings.otel_enabled:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"tracing is enabled (AXON_OTEL/AXON_OTEL_ENDPOINT) but the OpenTelemetry SDK is "
            f"missing ({exc.name}); install it with: pip install 'axon-tasks[otel]'"
        ) from None
    endpoint = settings.otel_endpoint
    if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    use(provider)
    return provider


# -- context that crosses process boundaries ------------------------------------


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, for the task record (None when off)."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, for log lines (None when off or no span)."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


# -- spans ----------------------------------------------------------------------


def start_server_span(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Any:
    """Start and activate the span of one HTTP request (continuing an incoming
    ``traceparent``); returns a handle for ``end_server_span``, or None when off."""
    if _tracer is None:
        return None
    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in (b"traceparent", b"tracestate")
    }
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    span = _tracer.start_span(
        f"{method} {path}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def end_server_span(handle: Any, *, method: str, route: str, status: int, request_id: str) -> None:
    """Name the span after its route template, record the status, end it."""
    span, token = handle
    span.update_name(f"{method} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("axon.request_id", request_id)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)
    span.end()
    otel_context.detach(token)


def start_run(record: TaskRecord, *, attempt: int, worker: str) -> None:
    """Start the worker's span of one run, as a child of the span that created the
    task, and make it current for the rest of the run's asyncio task."""
    if _tracer is None:
        return
    traceparent = getattr(record, "traceparent", None)
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    span = _tracer.start_span(
        "axon.task.run",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "axon.task_id": record.id,
            "axon.adapter": record.adapter,
            "axon.lane": record.lane,
            "axon.attempt": attempt,
            "axon.worker": worker,
        },
    )
    # No detach: the run's asyncio task ends with the run, and its context with it.
    otel_context.attach(trace.set_span_in_context(span))
    _RUN.set(span)


def end_run() -> None:
    """End the current run's span, if one was started."""
    span = _RUN.get()
    if span is not None:
        _RUN.set(None)
        span.end()


def append_span(task_id: str, first_seq: int, events: int, elapsed_ns: int, state: str) -> None:
    """Record an append batch that just landed (spans are made after the fact, so
    the append path pays nothing for tracing when it is off)."""
    tracer = _tracer
    if tracer is None:
        return
    end = time.time_ns()
    span = tracer.start_span(
        "axon.append",
        start_time=end - elapsed_ns,
        kind=trace.SpanKind.CLIENT,
        attributes={
            "axon.task_id": task_id,
            "axon.first_seq": first_seq,
            "axon.events": events,
            **({"axon.state": state} if state else {}),
        },
    )
    span.end(end_time=end)
