"""Structured logs: JSON lines from a real ``axon serve``, request ids, task ids, no secrets."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

import axon
from axon.api import create_app
from axon.apikeys import KeyStore, Role
from axon.connection import open_store
from axon.embedded import ServerProcess
from axon.errors import ConfigError
from axon.logs import ContextFilter, JsonLines, Text, configure, redact
from axon.queue import Queue
from axon.records import TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store
from axon.worker import Worker

pytestmark = pytest.mark.anyio

FAKE_KEY = "axon_0123456789ab_" + "S" * 43
"""Shaped like an API key; never issued, so the server refuses it."""


@axon.task("test.logging_line")
async def logging_line(ctx: Any) -> dict[str, bool]:
    """Log one line from inside a task, as adapter code would."""
    logging.getLogger("tests.task").warning("working on it")
    return {"ok": True}


@pytest.fixture
async def store(valkey: ServerProcess) -> AsyncIterator[Store]:
    """A store on the session Valkey under a prefix of this test's own."""
    settings = Settings(redis_url=valkey.url, key_prefix=f"lg{os.getpid()}{os.urandom(3).hex()}")
    async with open_store(settings) as opened:
        yield opened


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record of this test as JSON lines, with the logging context filter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLines())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each non-empty line parsed as one JSON object (fails on any other line)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def start_serve(env: dict[str, str]) -> subprocess.Popen[str]:
    """``axon serve --port 0`` with ``env``."""
    return subprocess.Popen(
        [sys.executable, "-m", "axon", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def test_serve_writes_json_lines_with_request_ids(
    valkey: ServerProcess, store: Store
) -> None:
    """``axon serve`` logs one JSON object per line; a valid X-Request-ID is echoed and
    on the request's access line, an invalid one is replaced; no key is ever logged."""
    admin, info = await KeyStore(store).create("acme", Role.ADMIN)
    env = {
        **os.environ,
        "REDIS_URL": valkey.url,
        "AXON_KEY_PREFIX": store.settings.key_prefix,
        "AXON_DATA_DIR": str(store.settings.data_dir),
    }
    env.pop("AXON_LOG_FORMAT", None)  # serve's default is JSON
    server = start_serve(env)
    try:
        assert server.stdout is not None
        for line in server.stdout:  # bounded by the test timeout
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                url = match.group(1)
                break
        headers = {"authorization": f"Bearer {admin}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as http:
            created = await http.post(
                "/v1/tasks", json={"adapter": "mock"}, headers={"x-request-id": "req-abc.123"}
            )
            assert created.status_code == 201
            assert created.headers["x-request-id"] == "req-abc.123"
            task_id = created.json()["id"]
            read = await http.get(f"/v1/tasks/{task_id}", headers={"x-request-id": "bad id!"})
            generated = read.headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
            refused = await http.get("/v1/tasks", headers={"authorization": f"Bearer {FAKE_KEY}"})
            assert refused.status_code == 401
            assert refused.headers["x-request-id"]
    finally:
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=30)
    lines = json_lines(stderr)  # every line, uvicorn's included, is JSON
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "axon.access"}
    create = access["req-abc.123"]
    assert create["route"] == "/v1/tasks"
    assert create["status"] == 201
    assert create["task_id"] == task_id
    assert create["key_id"] == info.id
    assert {"ts", "level", "message"} <= create.keys()
    get = access[generated]
    assert (get["route"], get["task_id"], get["method"]) == ("/v1/tasks/{task_id}", task_id, "GET")
    assert 401 in {line["status"] for line in access.values()}
    for secret in (admin, admin.rsplit("_", 1)[1], FAKE_KEY, "S" * 43):
        assert secret not in stderr
        assert secret not in stdout


async def test_task_lines_carry_the_task_id(store: Store, captured: io.StringIO) -> None:
    """A line logged while a worker runs a task names the task."""
    queue = Queue(store)
    record = await queue.submit(
        TaskSpec(tenant="acme", adapter="python", args={"function": "test.logging_line"})
    )
    worker = Worker(queue)
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        with anyio.fail_after(20):
            while (await store.get_task(record.id)).state is not TaskState.SUCCEEDED:
                await store.wait_events(record.id, after_seq=0, timeout_ms=100)
        worker.stop()
    lines = [line for line in json_lines(captured.getvalue()) if line["logger"] == "tests.task"]
    assert [line["task_id"] for line in lines] == [record.id]
    assert lines[0]["message"] == "working on it"
    assert "request_id" not in lines[0]


async def test_an_unhandled_error_is_a_json_500_with_its_request_id(
    store: Store, captured: io.StringIO
) -> None:
    """A bug in a route answers a JSON ``internal_error`` (no traceback in the body)
    that echoes the request id, and the error line and the access line both carry it,
    so an operator finds the traceback from the id a user reports."""

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug with a secret-free message")

    app = create_app(store.settings, store=store)
    app.add_route("/broken", broken, methods=["GET"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://axon") as http:
        reply = await http.get("/broken", headers={"x-request-id": "req-500"})
    assert reply.status_code == 500
    assert reply.headers["x-request-id"] == "req-500"
    body = reply.json()
    assert body["error"]["code"] == "internal_error"
    assert "Traceback" not in reply.text
    assert "RuntimeError" not in reply.text
    lines = [line for line in json_lines(captured.getvalue()) if line.get("request_id")]
    error = [line for line in lines if line["logger"] == "axon.api"]
    access = [line for line in lines if line["logger"] == "axon.access"]
    assert [line["request_id"] for line in error] == ["req-500"]
    assert "RuntimeError" in json.dumps(error[0])  # the traceback is in the log
    assert [(line["request_id"], line["status"]) for line in access] == [("req-500", 500)]


def test_secrets_are_redacted_in_both_formats() -> None:
    """An API key or bearer token that reaches a log call comes out redacted, the key id kept."""
    record = logging.LogRecord(
        "axon.test", logging.WARNING, __file__, 1,
        "refused %s with header Authorization: Bearer sekrit-token", (FAKE_KEY,), None,
    )  # fmt: skip
    for formatter in (JsonLines(), Text()):
        line = formatter.format(record)
        assert "S" * 43 not in line
        assert "sekrit-token" not in line
        assert "axon_0123456789ab_[REDACTED]" in line
    assert redact("nothing to hide") == "nothing to hide"


def test_configure_formats_every_logger_including_uvicorn() -> None:
    """``configure`` sends Axon's and uvicorn's records through one formatter: JSON
    objects, or text with the context fields at the end."""
    root = logging.getLogger()
    uvicorn = logging.getLogger("uvicorn.error")
    saved = (list(root.handlers), root.level, uvicorn.level)
    uvicorn.setLevel(logging.INFO)  # as `axon serve` has it (other tests' servers lower it)
    try:
        for log_format in ("json", "text"):
            out = io.StringIO()
            configure(log_format, level="info", stream=out)
            logging.getLogger("uvicorn.error").info("Started server process")
            logging.getLogger("axon.test").info("hello", extra={"task_id": "t_1"})
            text = out.getvalue().splitlines()
            assert len(text) == 2
            if log_format == "json":
                objects = [json.loads(line) for line in text]
                assert objects[0]["logger"] == "uvicorn.error"
                assert objects[1]["task_id"] == "t_1"
            else:
                assert text[1].endswith("task_id=t_1")
                assert "hello" in text[1]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        uvicorn.setLevel(saved[2])


def test_log_format_setting_is_validated() -> None:
    """AXON_LOG_FORMAT takes json or text, and nothing else."""
    assert Settings.from_env({"AXON_LOG_FORMAT": "text"}).log_format == "text"
    assert Settings.from_env({}).log_format is None
    with pytest.raises(ConfigError, match="AXON_LOG_FORMAT"):
        Settings.from_env({"AXON_LOG_FORMAT": "xml"})
