"""The MCP tools, through the official SDK's client: Streamable HTTP at ``/mcp`` (both
protocol eras) and ``axon mcp`` over stdio, against a real API server and worker."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.client import Client as McpClient
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from axon.apikeys import KeyStore, Role
from axon.embedded import ServerProcess
from axon.queue import Queue
from axon.store import Store
from axon.worker import Worker
from tests.conftest import Api, Backend

pytestmark = pytest.mark.anyio

TOOLS = {
    "start_task",
    "get_task_status",
    "stream_task",
    "resume_task",
    "cancel_task",
    "list_tasks",
    "get_task_receipt",
}
MODES = ["legacy", "2026-07-28"]
"""``legacy``: the 2025-11-25 initialize handshake (what SDK 1.x clients speak);
``2026-07-28``: the current protocol (SDK 2.x)."""
TRANSPORTS = [*MODES, "stdio"]
"""The two HTTP modes, and ``axon mcp`` over stdio (through the API) in a subprocess."""

Connect = Callable[..., AbstractAsyncContextManager[McpClient]]


@pytest.fixture
def backend(valkey: ServerProcess) -> Backend:
    """MCP is an interface over services the other suites test on every server kind."""
    return Backend(name="valkey", url=valkey.url, cluster=False, aof=True)


@pytest.fixture
async def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


@pytest.fixture
def connect(api: Api) -> Connect:
    """``connect(key=None, mode="legacy")``: an MCP client session on ``api``'s ``/mcp``."""

    @asynccontextmanager
    async def open_client(
        key: str | None = None, mode: str = "legacy", target: Api | None = None
    ) -> AsyncIterator[McpClient]:
        server = target or api
        if mode == "stdio":
            params = StdioServerParameters(
                command=sys.executable,
                args=["-m", "axon", "mcp"],
                env=stdio_env(AXON_URL=server.url, AXON_API_KEY=key or server.admin),
            )
            async with McpClient(params, mode="legacy", read_timeout_seconds=30) as client:
                yield client
            return
        headers = {"authorization": f"Bearer {key or server.admin}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(f"{server.url}/mcp", http_client=http)
            async with McpClient(transport, mode=mode, read_timeout_seconds=30) as client:
                yield client

    return open_client


def data(result: CallToolResult) -> dict[str, Any]:
    """The structured content of a successful call."""
    assert not result.is_error, result.content
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


def error(result: CallToolResult) -> dict[str, Any]:
    """The ``{code, message}`` of a tool error, checked against its text."""
    assert result.is_error
    assert result.structured_content is not None
    detail: dict[str, Any] = result.structured_content["error"]
    text = result.content[0].text  # type: ignore[union-attr]
    assert text.startswith(f"{detail['code']}: ")
    assert "Traceback" not in text
    return detail


async def read_all(client: McpClient, task_id: str, *, page: int = 3) -> list[dict[str, Any]]:
    """Every event of a task through ``stream_task`` calls with growing cursors."""
    events: list[dict[str, Any]] = []
    cursor = 0
    calls = 0
    with anyio.fail_after(30):
        while True:
            batch = data(
                await client.call_tool(
                    "stream_task",
                    {
                        "task_id": task_id,
                        "since_seq": cursor,
                        "max_events": page,
                        "wait_s": 5,
                        "include_raw": True,
                    },
                )
            )
            calls += 1
            events += batch["events"]
            assert batch["next_seq"] >= cursor
            cursor = batch["next_seq"]
            if batch["finished"]:
                break
    assert calls > 1
    return events


def assert_chain(events: list[dict[str, Any]]) -> None:
    """Seqs 1..n once each, every hash is the SHA-256 of the exact bytes, prev links."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["prev"] == "0" * 64
    for event in events:
        assert event["hash"] == hashlib.sha256(event["raw"].encode()).hexdigest()
        assert json.loads(event["raw"])["data"] == event["data"]
    for before, after in itertools.pairwise(events):
        assert after["prev"] == before["hash"]


# -- tools and schemas --------------------------------------------------------------


@pytest.mark.parametrize("mode", TRANSPORTS)
async def test_tools_are_listed_with_schemas_and_hints(connect: Connect, mode: str) -> None:
    """Seven tools, each with a description, input and output schemas and hints."""
    async with connect(mode=mode) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(listed) == TOOLS
    for tool in listed.values():
        assert len(tool.description or "") > 40
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None
        assert tool.annotations is not None
    assert listed["get_task_status"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert listed["cancel_task"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert listed["cancel_task"].annotations.idempotent_hint is True  # type: ignore[union-attr]
    assert listed["start_task"].annotations.read_only_hint is False  # type: ignore[union-attr]
    stream = listed["stream_task"].input_schema
    assert stream["required"] == ["task_id"]
    assert stream["properties"]["wait_s"]["maximum"] == 60
    assert set(listed["stream_task"].output_schema["required"]) >= {  # type: ignore[index]
        "events",
        "next_seq",
        "finished",
    }


# -- a task's life -----------------------------------------------------------------


@pytest.mark.parametrize("mode", TRANSPORTS)
async def test_start_and_read_to_completion_every_event_once(
    connect: Connect, worker: Worker, mode: str
) -> None:
    """A started mock task read through several stream_task calls: every event exactly
    once, in order, the chain intact, and the status shows the outcome."""
    async with connect(mode=mode) as client:
        started = data(
            await client.call_tool(
                "start_task",
                {"adapter": "mock", "args": {"count": 7, "interval_ms": 5}, "name": "mcp"},
            )
        )
        assert started["cursor"] == 0
        assert started["state"] == "queued"
        events = await read_all(client, started["task_id"])
        status = data(await client.call_tool("get_task_status", {"task_id": started["task_id"]}))
    assert_chain(events)
    assert events[0]["kind"] == "queued"
    assert events[-1]["kind"] == "succeeded"
    assert [e["kind"] for e in events].count("tick") == 7
    assert status["state"] == "succeeded"
    assert status["finished"] is True
    assert status["last_seq"] == len(events)
    assert status["outcome"] == events[-1]["data"]


async def test_resume_task_continues_after_last_seq(connect: Connect, worker: Worker) -> None:
    """An agent that lost its session resumes from its last seq in a new one: the
    events after it, nothing before, nothing twice."""
    async with connect() as client:
        task_id = data(
            await client.call_tool("start_task", {"adapter": "mock", "args": {"count": 5}})
        )["task_id"]
        first = data(
            await client.call_tool(
                "stream_task", {"task_id": task_id, "max_events": 2, "wait_s": 5}
            )
        )
    kept = first["next_seq"]
    assert kept == 2
    async with connect() as client:  # a new session
        with anyio.fail_after(20):
            rest: list[dict[str, Any]] = []
            cursor = kept
            while True:
                batch = data(
                    await client.call_tool(
                        "resume_task", {"task_id": task_id, "last_seq": cursor, "wait_s": 5}
                    )
                )
                rest += batch["events"]
                cursor = batch["next_seq"]
                if batch["finished"]:
                    break
    assert [e["seq"] for e in rest] == list(range(3, 3 + len(rest)))
    assert rest[0]["prev"] == first["events"][-1]["hash"]
    assert rest[-1]["kind"] == "succeeded"


@pytest.mark.parametrize("mode", TRANSPORTS)
async def test_cancel_running_task_ends_with_canceled_and_reason(
    connect: Connect, worker: Worker, mode: str
) -> None:
    """cancel_task stops a running task; its last event is canceled, with the reason."""
    async with connect(mode=mode) as client:
        task_id = data(
            await client.call_tool(
                "start_task", {"adapter": "mock", "args": {"forever": True, "interval_ms": 20}}
            )
        )["task_id"]
        cursor = 0
        with anyio.fail_after(20):
            while True:  # wait until it runs
                batch = data(
                    await client.call_tool(
                        "stream_task", {"task_id": task_id, "since_seq": cursor, "wait_s": 5}
                    )
                )
                cursor = batch["next_seq"]
                if any(e["kind"] == "tick" for e in batch["events"]):
                    break
        canceled = data(
            await client.call_tool(
                "cancel_task", {"task_id": task_id, "reason": "agent changed plan"}
            )
        )
        assert canceled["cancel_requested"] is True
        with anyio.fail_after(20):
            while True:
                batch = data(
                    await client.call_tool(
                        "stream_task", {"task_id": task_id, "since_seq": cursor, "wait_s": 5}
                    )
                )
                cursor = batch["next_seq"]
                if batch["finished"]:
                    break
        last = batch["events"][-1]
        status = data(await client.call_tool("get_task_status", {"task_id": task_id}))
    assert last["kind"] == "canceled"
    assert last["data"]["reason"] == "agent changed plan"
    assert status["state"] == "canceled"
    assert status["outcome"]["reason"] == "agent changed plan"


async def test_cancel_queued_task_records_reason(connect: Connect) -> None:
    """A queued task (no worker) is canceled at once, the reason in its canceled event."""
    async with connect() as client:
        task_id = data(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))[
            "task_id"
        ]
        status = data(await client.call_tool("cancel_task", {"task_id": task_id, "reason": "no"}))
        batch = data(await client.call_tool("stream_task", {"task_id": task_id}))
    assert status["state"] == "canceled"
    assert batch["finished"] is True
    assert batch["events"][-1]["kind"] == "canceled"
    assert batch["events"][-1]["data"] == {"reason": "no", "ran": False}


async def test_list_tasks_pages_newest_first(connect: Connect) -> None:
    """list_tasks returns the tenant's tasks newest first, a page at a time, with a filter."""
    async with connect() as client:
        ids = [
            data(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))["task_id"]
            for _ in range(3)
        ]
        first = data(await client.call_tool("list_tasks", {"limit": 2}))
        second = data(
            await client.call_tool("list_tasks", {"limit": 2, "cursor": first["next_cursor"]})
        )
        queued = data(await client.call_tool("list_tasks", {"state": "queued"}))
        bad = error(await client.call_tool("list_tasks", {"state": "sleeping"}))
    listed = [t["task_id"] for t in first["tasks"] + second["tasks"]]
    assert listed[:3] == ids[::-1]
    assert {t["task_id"] for t in queued["tasks"]} >= set(ids)
    assert bad["code"] == "INVALID_ARGUMENT"


# -- receipts ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "stdio"])
async def test_receipt_verifies_offline_with_axon_verify(
    connect: Connect, worker: Worker, tmp_path: Path, mode: str
) -> None:
    """get_task_receipt's proof and key pass `axon verify`, with and without the export;
    before the task finished the tool says TASK_NOT_FINISHED."""
    async with connect(mode=mode) as client:
        task_id = data(
            await client.call_tool(
                "start_task", {"adapter": "mock", "args": {"forever": True, "interval_ms": 20}}
            )
        )["task_id"]
        early = error(await client.call_tool("get_task_receipt", {"task_id": task_id}))
        await client.call_tool("cancel_task", {"task_id": task_id})
        events: list[dict[str, Any]] = []
        cursor = 0
        with anyio.fail_after(20):
            while True:
                batch = data(
                    await client.call_tool(
                        "stream_task",
                        {"task_id": task_id, "since_seq": cursor, "wait_s": 5, "include_raw": True},
                    )
                )
                events += batch["events"]
                cursor = batch["next_seq"]
                if batch["finished"]:
                    break
        receipt = data(await client.call_tool("get_task_receipt", {"task_id": task_id}))
        one = data(await client.call_tool("get_task_receipt", {"task_id": task_id, "seq": 1}))
    assert early["code"] == "TASK_NOT_FINISHED"
    assert "axon verify" in receipt["how_to_verify"]
    proof = tmp_path / "receipt.tlog-proof"
    proof.write_text(receipt["proof"])
    export = tmp_path / "events.ndjson"
    export.write_text("".join(e["raw"] + "\n" for e in events))
    (tmp_path / "first.tlog-proof").write_text(one["proof"])
    for argv in (
        [str(proof)],
        [str(proof), "--events", str(export)],
        [str(tmp_path / "first.tlog-proof")],
    ):
        done = await anyio.run_process(
            [sys.executable, "-m", "axon", "verify", *argv, "--key", receipt["verifier_key"]],
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert b"VERIFIED" in done.stdout


# -- tenants and roles ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "stdio"])
async def test_other_tenant_gets_not_found_and_reader_cannot_write(
    connect: Connect, api: Api, mode: str
) -> None:
    """Another tenant's task id is NOT_FOUND for every tool; a reader key cannot start or
    cancel (PERMISSION_DENIED) but can read."""
    async with connect(mode=mode) as client:
        task_id = data(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))[
            "task_id"
        ]
    other = await api.key("globex", Role.ADMIN)
    reader = await api.key("acme", Role.READER)
    async with connect(other, mode=mode) as client:
        for tool, extra in (
            ("get_task_status", {}),
            ("stream_task", {}),
            ("resume_task", {"last_seq": 0}),
            ("cancel_task", {}),
            ("get_task_receipt", {}),
        ):
            found = error(await client.call_tool(tool, {"task_id": task_id, **extra}))
            assert found["code"] == "NOT_FOUND", tool
        assert data(await client.call_tool("list_tasks", {}))["tasks"] == []
    async with connect(reader, mode=mode) as client:
        refused = error(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))
        assert refused["code"] == "PERMISSION_DENIED"
        refused = error(await client.call_tool("cancel_task", {"task_id": task_id}))
        assert refused["code"] == "PERMISSION_DENIED"
        assert data(await client.call_tool("get_task_status", {"task_id": task_id}))["state"]


async def test_bad_input_is_a_coded_tool_error(connect: Connect) -> None:
    """Arguments outside the schema, a malformed id and a cursor ahead of the log are
    tool errors with codes, never tracebacks."""
    async with connect() as client:
        task_id = data(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))[
            "task_id"
        ]
        ahead = error(await client.call_tool("stream_task", {"task_id": task_id, "since_seq": 99}))
        too_long = error(
            await client.call_tool("stream_task", {"task_id": task_id, "wait_s": 3600})
        )
        malformed = error(await client.call_tool("get_task_status", {"task_id": "no/such"}))
        missing = error(await client.call_tool("get_task_status", {"task_id": "t_nope"}))
        no_adapter = error(
            await client.call_tool("start_task", {"adapter": "mock", "args": {}, "timeout_s": -1})
        )
    assert ahead["code"] == "INVALID_CURSOR"
    assert too_long["code"] == "INVALID_ARGUMENT"
    assert malformed["code"] == "INVALID_ARGUMENT"
    assert missing["code"] == "NOT_FOUND"
    assert no_adapter["code"] == "INVALID_ARGUMENT"


async def test_mcp_requires_an_api_key(api: Api) -> None:
    """/mcp without a key, or with a wrong one, is a 401 with the API's error body."""
    async with httpx2.AsyncClient(timeout=10) as http:
        for headers in ({}, {"authorization": "Bearer axon_000000000000_nope"}):
            reply = await http.post(
                f"{api.url}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers=headers,
            )
            assert reply.status_code == 401
            assert reply.json()["error"]["code"] in ("unauthenticated", "invalid_key")


# -- long-poll ----------------------------------------------------------------------


async def test_long_poll_returns_when_an_event_arrives(connect: Connect, store: Store) -> None:
    """A waiting stream_task returns with the new event once a worker claims the task,
    well before its wait_s; with nothing new it returns empty after wait_s."""
    async with connect() as client:
        task_id = data(
            await client.call_tool("start_task", {"adapter": "mock", "args": {"count": 1}})
        )["task_id"]
        quiet = data(
            await client.call_tool(
                "stream_task", {"task_id": task_id, "since_seq": 1, "wait_s": 0.3}
            )
        )
        assert quiet["events"] == []
        assert quiet["next_seq"] == 1
        assert quiet["finished"] is False
        got: dict[str, Any] = {}
        returned = anyio.Event()

        async def poll() -> None:
            got.update(
                data(
                    await client.call_tool(
                        "stream_task", {"task_id": task_id, "since_seq": 1, "wait_s": 60}
                    )
                )
            )
            returned.set()

        worker = Worker(Queue(store))
        with anyio.fail_after(30):  # far below the 60 s the call may wait
            async with anyio.create_task_group() as group:
                group.start_soon(poll)
                await group.start(worker.run)
                await returned.wait()
                worker.stop()
    assert got["events"]
    assert got["events"][0]["seq"] == 2
    assert got["events"][0]["kind"] == "claimed"


@pytest.mark.parametrize("mode", MODES)
async def test_long_poll_sends_progress_notifications(connect: Connect, mode: str) -> None:
    """While a stream_task waits, a client that asked for progress gets notifications."""
    async with connect(mode=mode) as client:
        task_id = data(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))[
            "task_id"
        ]
        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        batch = data(
            await client.call_tool(
                "stream_task",
                {"task_id": task_id, "since_seq": 1, "wait_s": 2.5},
                progress_callback=on_progress,
            )
        )
    assert batch["events"] == []
    assert seen
    assert all(total == 2.5 for _, total, _ in seen)
    assert "after seq 1" in (seen[0][2] or "")


async def test_too_many_waiting_long_polls_are_rate_limited(
    make_api: Callable[..., Api],
) -> None:
    """Past AXON_MCP_MAX_WAITING waiting calls of a tenant, the next one is RATE_LIMITED;
    calls that need not wait are not limited."""
    api = make_api(mcp_max_waiting=1)
    headers = {"authorization": f"Bearer {api.admin}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(f"{api.url}/mcp", http_client=http)
        async with McpClient(transport, mode="legacy", read_timeout_seconds=30) as client:
            task_id = data(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))[
                "task_id"
            ]
            results: list[CallToolResult] = []

            async def wait_call() -> None:
                args = {"task_id": task_id, "since_seq": 1, "wait_s": 2}
                results.append(await client.call_tool("stream_task", args))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as group:
                    group.start_soon(wait_call)
                    group.start_soon(wait_call)
            immediate = await client.call_tool("stream_task", {"task_id": task_id})
    limited = [error(r) for r in results if r.is_error]
    assert [e["code"] for e in limited] == ["RATE_LIMITED"]
    assert sum(1 for r in results if not r.is_error) == 1
    assert not immediate.is_error


async def test_drain_releases_waiting_long_polls(make_api: Callable[..., Api]) -> None:
    """Draining the server (SIGTERM) does not wait on agents: a waiting stream_task
    returns at once with what there is (no events), not an error or a cut connection."""
    api = make_api()
    headers = {"authorization": f"Bearer {api.admin}"}
    got: list[CallToolResult] = []
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        transport = streamable_http_client(f"{api.url}/mcp", http_client=http)
        async with McpClient(transport, mode="legacy", read_timeout_seconds=60) as client:
            task_id = data(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))[
                "task_id"
            ]
            waiting = anyio.Event()

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                waiting.set()

            async def poll() -> None:
                args = {"task_id": task_id, "since_seq": 1, "wait_s": 60}
                got.append(
                    await client.call_tool("stream_task", args, progress_callback=on_progress)
                )

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(poll)
                    await waiting.wait()  # the first progress notification: it waits now
                    await anyio.to_thread.run_sync(api.server.drain)
    batch = data(got[0])
    assert batch["events"] == []
    assert batch["finished"] is False


# -- stdio -------------------------------------------------------------------------


def stdio_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AXON_", "REDIS_"))}
    env.update(extra)
    return env


async def test_stdio_directly_through_redis(api: Api, worker: Worker, backend: Backend) -> None:
    """`axon mcp --tenant` acts on REDIS_URL as that tenant; a reader role cannot start."""
    settings = api.settings
    env = stdio_env(
        REDIS_URL=backend.url,
        AXON_KEY_PREFIX=settings.key_prefix,
        AXON_DATA_DIR=settings.data_dir,
        AXON_RECEIPT_KEY=api.signer.signer_key() if api.signer else "",
    )
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "axon", "mcp", "--tenant", "acme"], env=env
    )
    async with McpClient(params, mode="legacy", read_timeout_seconds=30) as client:
        task_id = data(
            await client.call_tool("start_task", {"adapter": "mock", "args": {"count": 3}})
        )["task_id"]
        events = await read_all(client, task_id, page=2)
        receipt = data(await client.call_tool("get_task_receipt", {"task_id": task_id}))
    assert_chain(events)
    assert receipt["proof"].startswith("c2sp.org/tlog-proof@v1")
    # the task is acme's: the API sees it with acme's key
    keys = KeyStore(api.store)
    assert (await keys.authenticate(api.admin)).tenant == "acme"
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await http.get(f"{api.url}/v1/tasks/{task_id}", headers=api.headers())
    assert reply.status_code == 200
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "axon", "mcp", "--tenant", "acme", "--role", "reader"],
        env=env,
    )
    async with McpClient(params, mode="legacy", read_timeout_seconds=30) as client:
        refused = error(await client.call_tool("start_task", {"adapter": "mock", "args": {}}))
    assert refused["code"] == "PERMISSION_DENIED"


def test_stdio_without_a_key_says_how_to_configure() -> None:
    """`axon mcp` with neither a key nor --tenant exits 2 with one line on stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "axon", "mcp"],
        capture_output=True,
        text=True,
        env=stdio_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("axon: error: invalid_config: no API key")
    assert len(done.stderr.strip().splitlines()) == 1


# -- resumability across replicas (2025-11-25 sessions) -------------------------------

LEGACY = "2025-11-25"


def sse_messages(text: str) -> list[tuple[str | None, dict[str, Any] | None]]:
    """(id, JSON-RPC message) of each SSE event in ``text`` (None for a priming event)."""
    found: list[tuple[str | None, dict[str, Any] | None]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event_id = None
        payload = ""
        for line in block.split("\n"):
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                payload += line[5:].strip()
        if event_id is not None or payload:
            found.append((event_id, json.loads(payload) if payload else None))
    return found


async def read_until_response(
    http: httpx2.AsyncClient, url: str, *, session: str, last_event_id: str, call_id: int
) -> str:
    """Resume a stream with Last-Event-ID and read it until the response to ``call_id``
    (what a client does: the stream may stay open after it)."""
    text = ""
    headers = {"mcp-session-id": session, "last-event-id": last_event_id}
    async with http.stream("GET", url, headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["mcp-session-id"] == session
        async for line in stream.aiter_lines():
            text += line + "\n"
            if line.startswith("data:") and f'"id":{call_id}' in line.replace(" ", ""):
                break
    return text


async def open_session(http: httpx2.AsyncClient, url: str) -> str:
    """Initialize a 2025-11-25 session by hand; its id."""
    reply = await http.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
    )
    assert reply.status_code == 200, reply.text
    session = reply.headers["mcp-session-id"]
    note = await http.post(
        url,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={"mcp-session-id": session},
    )
    assert note.status_code == 202
    return session


@pytest.mark.parametrize("where", ["same replica", "another replica"])
async def test_dropped_stream_resumes_with_last_event_id(
    make_api: Callable[..., Api], store: Store, where: str
) -> None:
    """A client loses its connection while a long-poll waits on replica A; reconnecting
    with Last-Event-ID — to A, or to replica B, which has no such session in memory —
    gets the call's response from the event store in Redis. Another tenant's key cannot
    resume it."""
    first = make_api()
    second = first if where == "same replica" else make_api()
    headers = {
        "authorization": f"Bearer {first.admin}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": LEGACY,
    }
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        session = await open_session(http, f"{first.url}/mcp")
        created = await http.post(
            f"{first.url}/v1/tasks", json={"adapter": "mock", "args": {"count": 1}}
        )
        task_id = created.json()["id"]
        call = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "stream_task",
                "arguments": {"task_id": task_id, "since_seq": 1, "wait_s": 30},
            },
        }
        priming: str | None = None
        async with http.stream(
            "POST", f"{first.url}/mcp", json=call, headers={"mcp-session-id": session}
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("id:"):
                    priming = line[3:].strip()
                    break
        assert priming is not None  # the connection is gone now, the call still waits on A
        assert priming.startswith(f"{session}.")

        worker = Worker(Queue(store))
        other = await first.key("globex", Role.ADMIN)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                await group.start(worker.run)
                resumed = await read_until_response(
                    http, f"{second.url}/mcp", session=session, last_event_id=priming, call_id=7
                )
                stranger = await http.get(
                    f"{second.url}/mcp",
                    headers={
                        "mcp-session-id": session,
                        "last-event-id": priming,
                        "authorization": f"Bearer {other}",
                    },
                )
                worker.stop()
    messages = sse_messages(resumed)
    response = [m for _, m in messages if m is not None and m.get("id") == 7]
    assert len(response) == 1
    result = response[0]["result"]
    assert result["structuredContent"]["events"][0]["kind"] == "claimed"
    assert all(event_id and event_id.startswith(f"{session}.") for event_id, _ in messages)
    assert stranger.status_code == 404


# -- an SDK 1.x client ------------------------------------------------------------------

MCP1_PYTHON = Path(__file__).resolve().parents[1] / ".venv-mcp1" / "bin" / "python"


@pytest.mark.skipif(not MCP1_PYTHON.exists(), reason="no MCP SDK 1.x virtualenv: run `make mcp1`")
async def test_sdk_1x_client_reads_a_task_to_completion(api: Api, worker: Worker) -> None:
    """An agent on the MCP SDK 1.x (protocol 2025-11-25, in its own virtualenv) lists the
    tools, starts a task and reads every event once with a verified chain."""
    done = await anyio.run_process(
        [
            str(MCP1_PYTHON),
            str(Path(__file__).parent / "mcp1" / "client.py"),
            f"{api.url}/mcp",
            api.admin,
        ],
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["protocol"] == LEGACY
    assert report["session"] is True
    assert set(report["tools"]) == TOOLS
    assert_chain(report["events"])
    assert report["events"][-1]["kind"] == "succeeded"
    assert report["missing"][0] is True
    assert report["missing"][1].startswith("NOT_FOUND: ")
