"""CLI commands that manage API keys: ``axon keys create|list|revoke``.

They talk to the Redis at ``REDIS_URL``, which must be the one the server uses
(``axon dev`` prints the embedded Valkey's URL). ``create`` prints only the new
key on stdout, so ``KEY=$(axon keys create --tenant acme)`` works; ``list`` and
``revoke`` print JSON, one object per line, never a secret or its digest.
Errors go to stderr as ``axon: error: <code>: <message>`` with exit code 1 (2
for bad usage or configuration).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import msgspec

from axon.apikeys import KeyStore, Role
from axon.connection import open_store
from axon.errors import AxonError, ConfigError
from axon.settings import Settings

COMMANDS = frozenset({"keys"})


def add_commands(commands: Any) -> None:
    """Register ``keys`` and its actions on the ``axon`` subparsers."""
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Manage the API keys HTTP clients authenticate with. Needs REDIS_URL "
        "pointing at the Redis the server uses.",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="create a key and print it (shown once)",
        description="Create an API key for a tenant and print only the key on stdout. "
        "Only its SHA-256 is stored: copy it now, it cannot be shown again.",
    )
    create.add_argument("--tenant", required=True, help="the tenant whose tasks the key acts on")
    create.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.WRITER.value,
        help="reader: read tasks; writer: also start and cancel them; admin: also "
        "administer (default: writer)",
    )
    create.add_argument("--name", help="a label for people, shown by `axon keys list`")
    listing = actions.add_parser(
        "list",
        help="list keys as JSON lines (never their secrets)",
        description="Print one JSON object per key, oldest first: id, tenant, role, name, "
        "created_ms, revoked_ms (null while the key is live).",
    )
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = actions.add_parser(
        "revoke",
        help="revoke a key for good (idempotent)",
        description="Revoke a key by its id (see `axon keys list`). Servers stop accepting it "
        "within their cache TTL (a few seconds).",
    )
    revoke.add_argument("key_id", help="the key's id: 12 hex characters, not the key itself")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``axon keys ...``; returns the exit code."""
    if settings.redis_url is None:
        print(
            "axon: error: set REDIS_URL to the Redis the Axon server uses: API keys live "
            "there (`axon dev` prints its URL)",
            file=sys.stderr,
        )
        return 2
    try:
        return anyio.run(_dispatch, args, settings)
    except AxonError as exc:
        print(f"axon: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    async with open_store(settings) as store:
        keys = KeyStore(store, cache_ttl_s=0)
        if args.keys_command == "create":
            key, info = await keys.create(args.tenant, Role(args.role), name=args.name)
            print(key, flush=True)
            print(
                f"axon: created API key {info.id} (tenant {info.tenant}, role {info.role}); "
                "it is shown only this once",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            for info in await keys.list(tenant=args.tenant):
                _out(info)
        else:
            _out(await keys.revoke(args.key_id))
    return 0


def _out(value: Any) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)
