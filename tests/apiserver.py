"""A real uvicorn API server on a free port, in a thread with its own event loop.

The server opens its own Redis clients in its own loop, exactly as ``axon
serve`` does; tests talk to it over TCP with httpx.
"""

from __future__ import annotations

import asyncio
import threading

from axon.notes import NoteSigner
from axon.server import ApiServer, build_server
from axon.settings import Settings


class LiveServer:
    """``start()`` it, use ``url``, ``drain()`` or ``stop()`` it."""

    def __init__(
        self, settings: Settings, *, port: int = 0, signer: NoteSigner | None = None
    ) -> None:
        self.settings = settings
        self.server: ApiServer = build_server(
            settings, host="127.0.0.1", port=port, signer=signer, log_level="warning"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="axon-api", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            serving = asyncio.ensure_future(self.server.serve())
            try:
                await self.server.wait_started()
            except BaseException as exc:
                self._failed = exc
                self._ready.set()
                raise
            self._ready.set()
            await serving

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._failed = self._failed or exc
            self._ready.set()

    def start(self, timeout_s: float = 30.0) -> LiveServer:
        """Start and wait until it listens."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the API server did not start")
        if self._failed is not None:
            raise RuntimeError(f"the API server failed to start: {self._failed!r}")
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drain(self, timeout_s: float = 30.0) -> None:
        """Graceful shutdown: streams get ``axon.reconnect``; wait for the thread to end."""
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.drain)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("the API server did not stop")

    def stop(self) -> None:
        """Same as ``drain``: there is no other clean way to stop uvicorn."""
        self.drain()
