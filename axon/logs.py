"""Logging: one JSON object per line for operators, or readable text on a laptop.

Every line carries the context it belongs to, taken from contextvars rather
than passed around: the ``request_id`` of the HTTP request being served (set by
``axon.access.AccessMiddleware``), the ``task_id`` of the task a worker is
running (set when the run starts), and with tracing on the ``trace_id``. Each
request and each task run is its own asyncio task, so a value set there stays
with that task and everything it starts, and vanishes with it.

Secrets never reach the output: nothing logs headers, and the formatters
replace anything shaped like an API key or a bearer token with ``[REDACTED]``
as a last line of defence.

Only the CLI calls ``configure`` (``AXON_LOG_FORMAT``, ``AXON_LOG_LEVEL``); a
program embedding Axon keeps its own logging setup and may add
``ContextFilter`` to its handlers to get the same fields.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]

REQUEST_ID: ContextVar[str | None] = ContextVar("axon_request_id", default=None)
"""The id of the HTTP request this code serves (``X-Request-ID``), if any."""

TASK_ID: ContextVar[str | None] = ContextVar("axon_task_id", default=None)
"""The task this code works on (a worker's run, an API call about one task), if any."""

_KEY = re.compile(r"\baxon_([0-9a-f]{12})_[A-Za-z0-9_\-]{20,}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")


def redact(text: str) -> str:
    """``text`` with API key secrets and bearer tokens replaced by ``[REDACTED]``
    (a key keeps its id, which names it in ``axon keys list`` without granting anything)."""
    if "axon_" in text:
        text = _KEY.sub(r"axon_\1_[REDACTED]", text)
    if "earer" in text:
        text = _BEARER.sub(r"\1 [REDACTED]", text)
    return text


def bind_task(task_id: str) -> None:
    """Put ``task_id`` on every later log line of the current asyncio task (and the
    tasks it starts). A worker calls it once per run, in the run's own task."""
    TASK_ID.set(task_id)


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``task_id`` and (tracing on) ``trace_id`` to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if getattr(record, "task_id", None) is None:
            record.task_id = TASK_ID.get()
        if getattr(record, "trace_id", None) is None:
            from axon import tracing  # tracing imports nothing of ours

            record.trace_id = tracing.current_trace_id()
        return True


class JsonLines(JsonFormatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the context
    fields that are set, and any ``extra={...}`` the call gave; secrets redacted."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for name in ("request_id", "task_id", "trace_id"):
            if log_data.get(name) is None:
                log_data.pop(name, None)
        for name, value in log_data.items():
            if isinstance(value, str):
                log_data[name] = redact(value)
        return log_data


class Text(logging.Formatter):
    """``12:00:00 INFO  axon.worker  message  task_id=… request_id=…``, secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s  %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [
            f"{name}={value}"
            for name in ("task_id", "request_id")
            if (value := getattr(record, name, None)) is not None
        ]
        return redact(f"{line}  {' '.join(context)}" if context else line)


def configure(
    log_format: LogFormat = "json", *, level: str = "info", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record (Axon's, uvicorn's, libraries') to ``stream`` (stderr)
    in ``log_format``, at ``level`` and above; replaces earlier root handlers.

    Returns the installed handler.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else Text())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers (if it configured any) would print a second, text line.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)
    return handler
