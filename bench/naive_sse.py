"""The naive SSE server ``bench/sse.py`` measures Axon's shared live tails against.

It serves the same URL and the same frames as Axon's
``GET /v1/tasks/{id}/events`` (``Accept: text/event-stream``, ``?since_seq=N``):
``retry: 2000``, then ``id: <seq>`` / ``event: <kind>`` / ``data: <event bytes>``
per event, ``: keep-alive`` while idle, and the end after a terminal event. What
it leaves out is everything that makes Axon's cheap: no auth, no task lookup,
no shared tail. Each subscriber loops ``XREAD BLOCK 15000 COUNT 1000 STREAMS
<events key> <last id>`` on a Redis connection of its own (the client's pool
grows to one connection per blocked subscriber), the way a first version of
such an endpoint usually looks.

Run by ``bench/sse.py`` as a subprocess, the way it runs ``axon serve``::

    REDIS_URL=redis://127.0.0.1:PORT AXON_KEY_PREFIX=... python bench/naive_sse.py --port 0

It prints ``Naive SSE listening on http://HOST:PORT`` once it accepts connections;
SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from axon.connection import HiredisConnection
from axon.events import TERMINAL_KINDS, kind_of
from axon.keys import KeySpace, check_task_id
from axon.settings import Settings
from axon.store import xread_entries

BLOCK_MS = 15_000
"""How long one XREAD waits; a keep-alive comment goes out each time it times out."""
COUNT = 1000
MAX_CONNECTIONS = 1 << 20
KEEPALIVE = b": keep-alive\n\n"
HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no", "connection": "keep-alive"}


def create_app(settings: Settings) -> Starlette:
    """The naive app: one route, one blocking XREAD loop per subscriber."""
    keys = KeySpace(settings.key_prefix)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No socket timeout (the reads block on purpose), raw XREAD replies, and a pool
        # without redis-py's default cap of 100 connections: one per blocked subscriber.
        assert settings.redis_url is not None
        client = Redis.from_url(
            settings.redis_url,
            socket_timeout=None,
            connection_class=HiredisConnection,
            max_connections=MAX_CONNECTIONS,
        )
        client.set_response_callback("XREAD", lambda response, **options: response)
        state["client"] = client
        try:
            yield
        finally:
            await client.aclose()

    async def frames(task_id: str, since: int) -> AsyncIterator[bytes]:
        client = state["client"]
        key = keys.events(task_id)
        last: bytes | str = f"{since}-0"
        yield b"retry: 2000\n\n"
        while True:
            reply = await client.execute_command(
                "XREAD", "BLOCK", BLOCK_MS, "COUNT", COUNT, "STREAMS", key, last
            )
            entries = xread_entries(reply)
            if not entries:
                yield KEEPALIVE
                continue
            parts = []
            terminal = False
            for entry_id, fields in entries:
                raw: bytes = fields[1]
                kind = kind_of(raw)
                seq = entry_id[: entry_id.index(b"-")]
                parts.append(b"id: %s\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), raw))
                if kind in TERMINAL_KINDS:
                    terminal = True
                    break
            yield b"".join(parts)
            if terminal:
                return
            last = entries[-1][0]

    async def events(request: Request) -> Response:
        task_id = check_task_id(request.path_params["task_id"])
        since = int(request.query_params.get("since_seq", "0"))
        return StreamingResponse(
            frames(task_id, since), media_type="text/event-stream", headers=HEADERS
        )

    return Starlette(
        routes=[Route("/v1/tasks/{task_id}/events", events, methods=["GET"])],
        lifespan=lifespan,
    )


async def serve(settings: Settings, host: str, port: int) -> None:
    """Run the app under uvicorn with ``axon serve``'s settings; say when it listens."""
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        backlog=4096,
        server_header=False,
    )
    server = uvicorn.Server(config)
    running = asyncio.create_task(server.serve())
    while not server.started:
        if running.done():
            await running
            raise SystemExit(f"naive SSE server could not start on {host}:{port}")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    print(f"Naive SSE listening on http://{host}:{bound}", flush=True)
    await running


def main(argv: list[str] | None = None) -> int:
    """Parse ``--host``/``--port``, read ``REDIS_URL``/``AXON_KEY_PREFIX``, serve."""
    parser = argparse.ArgumentParser(description="Naive one-XREAD-per-subscriber SSE server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    settings = Settings(
        redis_url=os.environ["REDIS_URL"], key_prefix=os.environ.get("AXON_KEY_PREFIX", "axon")
    )
    # The same stack as `axon serve`: uvloop when installed, httptools picked by uvicorn.
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings, args.host, args.port))
    else:
        uvloop.run(serve(settings, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
