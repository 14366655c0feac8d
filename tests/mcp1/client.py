"""An agent on the MCP Python SDK 1.x (protocol 2025-11-25), run by tests/test_mcp.py.

It runs in its own virtualenv (``make mcp1`` builds ``.venv-mcp1`` with ``mcp<2``),
so this file is not imported by the suite and is checked by neither mypy nor
ruff's import rules: it must run on the 1.x API alone.

Usage: python client.py URL KEY  — prints one JSON object with what it saw.
"""

import json
import sys

import anyio
import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, key: str) -> None:
    report = {}
    headers = {"authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, session_id),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        report["protocol"] = init.protocolVersion
        report["session"] = bool(session_id())
        report["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        started = await session.call_tool(
            "start_task", {"adapter": "mock", "args": {"count": 3, "interval_ms": 10}}
        )
        task_id = started.structuredContent["task_id"]
        events, cursor, progress = [], 0, []

        async def on_progress(value, total, message):
            progress.append(value)

        while True:
            batch = await session.call_tool(
                "stream_task",
                {"task_id": task_id, "since_seq": cursor, "wait_s": 5, "include_raw": True},
                progress_callback=on_progress,
            )
            content = batch.structuredContent
            events += content["events"]
            cursor = content["next_seq"]
            if content["finished"]:
                break
        report["events"] = events
        missing = await session.call_tool("get_task_status", {"task_id": "t_nope"})
        report["missing"] = [missing.isError, missing.content[0].text]
    print(json.dumps(report))


anyio.run(main, sys.argv[1], sys.argv[2])
