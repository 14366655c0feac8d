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
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec

from axon.apikeys import KeyStore, Role
from axon.connection import open_store
from axon.errors import AxonError, ConfigError
from axon.receiptkey import init_key, load_signer
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
    init = actions.add_parser(
        "receipt-init",
        help="create the Ed25519 key that signs receipts (no Redis needed)",
        description="Create the receipt signing key: a C2SP signed-note key named after the "
        "deployment's origin, written 0600 to --file (default: <data dir>/receipt.key, where "
        "`axon serve`, `axon dev` and `axon compactor` look). Prints the verifier key "
        "auditors check receipts with.",
    )
    init.add_argument(
        "--origin",
        default="axon.local",
        help="the deployment's origin, e.g. axon.example/prod: the key name and the prefix "
        "of every checkpoint origin (default: axon.local)",
    )
    init.add_argument("--file", type=Path, help="where to write the key")
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key (old receipts then need "
        "the old verifier key: list it in AXON_RECEIPT_TRUSTED_KEYS)",
    )
    show = actions.add_parser(
        "receipt-show",
        help="print the receipt verifier key (public; no Redis needed)",
        description="Print the note verifier key of the receipt signing key "
        "(AXON_RECEIPT_KEY or the key file), then any earlier keys still trusted.",
    )
    show.add_argument("--file", type=Path, help="the key file (default: <data dir>/receipt.key)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``axon keys ...``; returns the exit code."""
    if args.keys_command in ("receipt-init", "receipt-show"):
        try:
            return _receipt_key(args, settings)
        except AxonError as exc:
            print(f"axon: error: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
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


def _receipt_key(args: argparse.Namespace, settings: Settings) -> int:
    path = args.file if args.file is not None else settings.receipt_key_path()
    if args.keys_command == "receipt-init":
        created = init_key(path, args.origin, force=args.force)
        print(created.verifier_key(), flush=True)
        print(
            f"axon: wrote the receipt signing key to {path} (mode 0600); the line above is "
            "its public verifier key",
            file=sys.stderr,
        )
        return 0
    signer = load_signer(env_value=os.environ.get("AXON_RECEIPT_KEY") or None, path=path)
    if signer is None:
        print(
            f"axon: error: no receipt signing key at {path} (and AXON_RECEIPT_KEY is unset); "
            "create one with `axon keys receipt-init`",
            file=sys.stderr,
        )
        return 1
    print(signer.verifier_key())
    for key in settings.receipt_trusted_keys:
        if key != signer.verifier_key():
            print(key)
    return 0


def _out(value: Any) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)
