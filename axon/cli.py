"""The ``axon`` command line: the only place that reads the environment.

Commands:
    axon --version      print the version
    axon doctor         check the Redis at REDIS_URL (or the embedded Valkey)
    axon serve          run the HTTP API server (see ``axon.cli_serve``)
    axon dev            run everything (embedded Valkey, API, worker) until Ctrl-C
    axon worker         claim and run tasks (see ``axon.cli_tasks`` for the task commands)
    axon submit|task|cancel|dlq   create, inspect, cancel tasks in Redis; dead letters
    axon start|logs|status|ls|cancel|export|receipt   the same through the HTTP API
                        (``axon.cli_client``; AXON_URL, AXON_API_KEY)
    axon keys create|list|revoke  manage API keys (see ``axon.cli_keys``)
    axon keys receipt-init|receipt-show   the receipt signing key
    axon compactor      archive old events into signed snapshots (``axon.cli_compactor``)
    axon verify         verify a receipt offline (``axon.cli_verify``)
    axon mcp            the MCP tools over stdio for agents (``axon.cli_mcp``)

Exit codes: 0 success, 1 a check or operation failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from axon import cli_client, cli_compactor, cli_keys, cli_mcp, cli_serve, cli_tasks, cli_verify
from axon._version import __version__
from axon.connection import open_store
from axon.embedded import ServerProcess, valkey_binary
from axon.errors import AxonError
from axon.logs import LogFormat
from axon.logs import configure as configure_logs
from axon.settings import Settings
from axon.tracing import configure as configure_tracing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="axon",
        description="Durable background tasks for AI agents, on Redis Streams.",
    )
    parser.add_argument("--version", action="version", version=f"axon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "doctor",
        help="check the Redis server (REDIS_URL, or a throwaway embedded Valkey)",
        description="Connect to REDIS_URL (or start a throwaway embedded Valkey when unset) "
        "and report the server, its persistence and whether strict durability is available.",
    )
    cli_serve.add_commands(commands)
    cli_tasks.add_commands(commands)
    cli_client.add_commands(commands)
    cli_keys.add_commands(commands)
    cli_compactor.add_commands(commands)
    cli_verify.add_commands(commands)
    cli_mcp.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``axon`` and ``python -m axon``; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in cli_verify.COMMANDS:  # offline: needs no settings at all
        return cli_verify.run(args)
    if args.command in cli_mcp.COMMANDS:  # stdio: reads its own settings, stdout is the protocol
        return cli_mcp.run(args)
    if args.command in cli_client.COMMANDS or (
        args.command == "cancel" and cli_client.wants_api(args)
    ):  # through the HTTP API: AXON_URL and AXON_API_KEY, no Redis settings
        return cli_client.run(args)
    try:
        settings = Settings.from_env()
        _observe(args.command, settings)
        if args.command == "doctor":
            return _doctor(settings)
        if args.command in cli_serve.COMMANDS:
            return cli_serve.run(args, settings)
        if args.command in cli_tasks.COMMANDS:
            return cli_tasks.run(args, settings)
        if args.command in cli_keys.COMMANDS:
            return cli_keys.run(args, settings)
        if args.command in cli_compactor.COMMANDS:
            return cli_compactor.run(args, settings)
    except AxonError as exc:
        print(f"axon: error: {exc.message}", file=sys.stderr)
        return 2
    _parser().print_help()
    return 0


SERVICES = frozenset({"serve", "dev", "worker", "compactor"})
"""Long-running commands: they log through ``axon.logs`` and may trace."""


def _observe(command: str, settings: Settings) -> None:
    """Log format and tracing of a long-running command (see docs/observability.md):
    text in ``axon dev``, JSON elsewhere, unless ``AXON_LOG_FORMAT`` says otherwise."""
    if command not in SERVICES:
        return
    default: LogFormat = "text" if command == "dev" else "json"
    configure_logs(settings.log_format or default, level=settings.log_level)
    provider = configure_tracing(settings)
    if provider is not None:
        atexit.register(provider.shutdown)  # flush the last spans


def _doctor(settings: Settings) -> int:
    if settings.redis_url is None:
        with tempfile.TemporaryDirectory(prefix="axon-doctor-") as tmp:
            server = ServerProcess(valkey_binary(), Path(tmp), args=["--appendonly", "no"])
            server.start()
            try:
                print(f"REDIS_URL is unset: checked a throwaway embedded Valkey at {server.url}")
                return anyio.run(_check, settings, server.url)
            finally:
                server.stop()
    return anyio.run(_check, settings, settings.redis_url)


async def _check(settings: Settings, url: str) -> int:
    try:
        async with open_store(settings, url=url) as store:
            info = await store.server_info()
    except AxonError as exc:
        print(f"FAIL  cannot reach Redis: {exc.message}")
        return 1
    print(f"ok    server: {info.server} {info.version}")
    print(f"ok    cluster mode: {'on' if settings.redis_cluster else 'off'}")
    print(f"{'ok  ' if info.aof_enabled else 'note'}  appendonly: {info.aof_enabled}")
    strict = info.waitaof and info.aof_enabled
    print(
        f"{'ok  ' if strict else 'note'}  strict durability (WAITAOF): "
        + ("available" if strict else "unavailable (needs Redis >= 7.2 or Valkey, appendonly yes)")
    )
    if settings.durability == "strict" and not strict:
        print("FAIL  AXON_DURABILITY=strict but the server cannot confirm fsyncs")
        return 1
    return 0
