"""``axon mcp``: the MCP tools over stdio, for desktop agents (Claude Desktop, Cursor, …).

Two ways to reach Axon:

* **through the HTTP API** (the default): ``AXON_URL`` and ``AXON_API_KEY``
  (or ``--url``/``--key``). The key decides tenant and role, exactly as for
  ``/mcp`` and the REST API. Use this from a laptop or a container.
* **directly through Redis** (``--tenant``): ``REDIS_URL`` and the other
  ``AXON_*`` settings, acting as ``--tenant`` with ``--role`` (default
  writer). No API key is involved, so this is for a trusted operator on the
  deployment's own network.

Stdout carries the protocol; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer

from axon.apikeys import Principal, Role
from axon.cli_client import client_of
from axon.cli_serve import receipt_signer
from axon.client import DEFAULT_URL, Client
from axon.connection import open_store
from axon.errors import AxonError, ConfigError
from axon.mcp_backend import DirectBackend, HttpBackend, TaskBackend
from axon.mcp_tools import WaitLimits, build_server
from axon.services import Services
from axon.settings import Settings

COMMANDS = frozenset({"mcp"})


def add_commands(commands: Any) -> None:
    """Register ``axon mcp`` on the ``axon`` subparsers."""
    mcp = commands.add_parser(
        "mcp",
        help="serve Axon's MCP tools over stdio (for desktop agents)",
        description="Serve the MCP tools (start_task, stream_task, resume_task, …) over "
        "stdin/stdout. Through the HTTP API with AXON_URL/AXON_API_KEY (default), or "
        "directly through REDIS_URL as one tenant with --tenant. See docs/mcp.md.",
    )
    mcp.add_argument("--url", help=f"the Axon API (default: AXON_URL or {DEFAULT_URL})")
    mcp.add_argument(
        "--key", help="API key (default: AXON_API_KEY; prefer the variable: flags show in `ps`)"
    )
    mcp.add_argument(
        "--tenant",
        help="skip the API: act on REDIS_URL directly as this tenant (trusted operators only)",
    )
    mcp.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.WRITER.value,
        help="with --tenant: what the tools may do (default: writer)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until stdin closes; returns the exit code."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        if args.tenant:
            settings = Settings.from_env()
            principal = Principal(tenant=args.tenant, role=Role(args.role), key_id="stdio")
            anyio.run(_serve_direct, settings, principal)
        else:
            client = client_of(args, no_key_hint="or use --tenant to act on REDIS_URL directly")
            anyio.run(_serve_http, client)
    except KeyboardInterrupt:
        return 130
    except AxonError as exc:
        print(f"axon: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


async def _serve_http(client: Client) -> None:
    async with client:
        backend = HttpBackend(client)
        await _serve(build_server(_fixed(backend)))


async def _serve_direct(settings: Settings, principal: Principal) -> None:
    signer = receipt_signer(settings)  # prints its notes to stderr, never stdout
    async with open_store(settings) as store:
        await store.load_scripts()
        services = Services(settings, store, signer)
        async with anyio.create_task_group() as group:
            await group.start(services.tailer.run)
            backend = DirectBackend(services, principal)
            limits = WaitLimits(settings.mcp_max_waiting)
            await _serve(build_server(_fixed(backend), limits=limits))
            services.tailer.close()
            group.cancel_scope.cancel()


def _fixed(backend: TaskBackend) -> Any:
    async def backend_of(ctx: Context) -> TaskBackend:
        return backend

    return backend_of


async def _serve(server: MCPServer) -> None:
    await server.run_stdio_async()
