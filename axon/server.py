"""Running the HTTP API under uvicorn, with a shutdown that drains SSE streams.

uvicorn's own shutdown waits for open responses to finish, and an SSE
response never finishes by itself. ``ApiServer.drain`` first tells every
stream to send its ``axon.reconnect`` frame and end (so clients resume by
``Last-Event-ID`` on another process), then lets uvicorn close the listeners
and wait for the rest, up to ``Settings.shutdown_grace_s``.

Signals are the caller's business (``axon serve`` and ``axon dev`` use
anyio's signal receiver), so uvicorn's own handlers are switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import anyio
import uvicorn
from starlette.applications import Starlette

from axon.api import create_app
from axon.mcp_http import McpEndpoint
from axon.notes import NoteSigner
from axon.services import Services
from axon.settings import Settings
from axon.store import Store


class ApiServer(uvicorn.Server):
    """A uvicorn server for the Axon app that can drain its SSE streams."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """No signal handlers of uvicorn's own: whoever runs the server handles them."""
        yield

    def drain(self) -> None:
        """Ask SSE streams to end with a reconnect frame, release MCP long-polls, then stop
        serving.

        Call it on the server's event loop (``loop.call_soon_threadsafe`` from elsewhere).
        """
        services: Services | None = getattr(self.app.state, "services", None)
        if services is not None:
            services.tailer.close()
        mcp: McpEndpoint | None = getattr(self.app.state, "mcp", None)
        if mcp is not None:
            mcp.drain()
        self.should_exit = True

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the server is not listening")

    async def wait_started(self, timeout_s: float = 30.0) -> None:
        """Wait until the server listens; ``OSError`` if it gave up starting.

        uvicorn exposes only a ``started`` flag, so this polls it.
        """
        with anyio.fail_after(timeout_s):
            while not self.started:
                if self.should_exit:
                    raise OSError(f"the API server could not start on port {self.config.port}")
                await anyio.sleep(0.01)


def build_server(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    store: Store | None = None,
    signer: NoteSigner | None = None,
    log_level: str = "info",
) -> ApiServer:
    """An ``ApiServer`` for ``settings`` (``host``/``port`` override the settings);
    ``signer`` is the receipt signing key (None: receipts answer 503)."""
    app = create_app(settings, store=store, signer=signer)
    config = uvicorn.Config(
        app,
        host=host or settings.api_host,
        port=settings.api_port if port is None else port,
        lifespan="on",
        log_level=log_level,
        log_config=None,  # records go to the root logger, formatted by axon.logs
        access_log=False,  # axon.access writes one line per request instead
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)),
        backlog=4096,
        timeout_keep_alive=settings.http_keepalive_s,
        server_header=False,
    )
    return ApiServer(config, app)
