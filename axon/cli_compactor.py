"""``axon compactor``: archive old events and sign snapshots (see ``axon.compactor``).

    axon compactor                 run until SIGINT/SIGTERM (several replicas are safe)
    axon compactor --once          one pass, then print its report as JSON
    axon compactor --task ID [--force]   compact one task now (--force: ignore retention)
    axon compactor stats           totals over every replica, as JSON

Needs REDIS_URL, the receipt signing key (snapshots carry a signed checkpoint)
and the archive directory the API servers read (``AXON_ARCHIVE_DIR``, default
``<data dir>/archive``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from functools import partial
from typing import Any

import anyio
import msgspec

from axon import metrics
from axon.compactor import Compactor
from axon.connection import open_store
from axon.errors import AxonError, ConfigError
from axon.receiptkey import load_signer
from axon.receipts import Receipts
from axon.settings import Settings

COMMANDS = frozenset({"compactor"})


def add_commands(commands: Any) -> None:
    """Register ``compactor`` on the ``axon`` subparsers."""
    compactor = commands.add_parser(
        "compactor",
        help="archive old events into signed snapshots and trim them from Redis",
        description="Roll the events of finished tasks past their retention (and the old "
        "prefix of very long running tasks) into archive segments and signed snapshots, "
        "then trim them from Redis. Runs until SIGINT/SIGTERM unless --once, --task or stats.",
    )
    compactor.add_argument("action", nargs="?", choices=["stats"], help="print totals and exit")
    compactor.add_argument("--once", action="store_true", help="one pass, then print its report")
    compactor.add_argument("--task", metavar="ID", help="compact this one task now")
    compactor.add_argument(
        "--metrics-port",
        type=int,
        help="while running, serve Prometheus metrics at http://AXON_METRICS_HOST:PORT/metrics "
        "(default: AXON_COMPACTOR_METRICS_PORT; unset: none; 0 picks a port)",
    )
    compactor.add_argument(
        "--force", action="store_true", help="with --task: ignore the retention window"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``axon compactor``; returns the exit code."""
    if settings.redis_url is None:
        raise ConfigError("set REDIS_URL to the Redis the Axon servers use")
    if args.force and args.task is None:
        raise ConfigError("--force applies to --task only")
    try:
        return anyio.run(_dispatch, args, settings)
    except AxonError as exc:
        print(f"axon: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    signer = load_signer(
        env_value=os.environ.get("AXON_RECEIPT_KEY") or None, path=settings.receipt_key_path()
    )
    async with open_store(settings) as store:
        receipts = Receipts(store, signer)
        compactor = Compactor(store, receipts, settings=settings)
        if args.action == "stats":
            _out(await compactor.statistics())
            return 0
        if signer is None:
            raise ConfigError(
                f"the compactor signs snapshots: create a receipt key (`axon keys receipt-init`, "
                f"looked for {settings.receipt_key_path()}) or set AXON_RECEIPT_KEY"
            )
        if args.task is not None:
            result = await compactor.compact_task(args.task, force=args.force)
            if result is None:
                print(f"axon: task {args.task} has nothing to compact yet", file=sys.stderr)
            else:
                _out(result)
            return 0
        if args.once:
            await compactor.sweep()
            _out(await compactor.run_once())
            return 0
        print(
            f"Axon compactor running (archive: {store.archive.describe()}; "
            f"every {settings.compact_interval_s:g} s). Ctrl-C to stop.",
            flush=True,
        )
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:
                port = args.metrics_port
                port = settings.compactor_metrics_port if port is None else port
                if port is not None:
                    bound = await group.start(partial(metrics.serve, settings, store, port=port))
                    print(
                        f"Compactor metrics at http://{settings.metrics_host}:{bound}/metrics",
                        flush=True,
                    )
                group.start_soon(compactor.run)
                async for signum in signals:
                    print(f"{signal.Signals(signum).name}: stopping", flush=True)
                    group.cancel_scope.cancel()
                    break
        _out(await compactor.statistics())
    return 0


def _out(value: Any) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)
