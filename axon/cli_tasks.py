"""CLI commands that work with tasks: ``worker``, ``submit``, ``task``, ``cancel``, ``dlq``.

They need ``REDIS_URL`` (``axon dev`` prints the embedded Valkey's URL). Output
is JSON, one object per line, so scripts and agents can read it; errors go to
stderr as ``axon: error: <code>: <message>`` with exit code 1 (2 for bad usage
or configuration).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from functools import partial
from typing import Any

import anyio
import msgspec

from axon import cli_client, metrics
from axon.connection import open_store
from axon.errors import AxonError, ConfigError
from axon.queue import Queue
from axon.records import TaskSpec
from axon.settings import Settings
from axon.worker import Worker

COMMANDS = ("worker", "submit", "task", "cancel", "dlq")


def add_commands(commands: Any) -> None:
    """Register the task commands on the ``axon`` subparsers."""
    worker = commands.add_parser(
        "worker",
        help="claim and run tasks until SIGTERM/Ctrl-C",
        description="Run a worker: claim tasks from the lanes, run them through adapters, "
        "renew leases, reclaim expired ones. SIGTERM or Ctrl-C drains: no new claims, "
        "running tasks get AXON_SHUTDOWN_GRACE_S, the rest go back to the front of their lane.",
    )
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (registers its @axon.task functions); repeatable",
    )
    worker.add_argument("--concurrency", type=int, help="tasks at once (AXON_WORKER_CONCURRENCY)")
    worker.add_argument("--id", dest="worker_id", help="worker name (default host:pid:random)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://AXON_METRICS_HOST:PORT/metrics "
        "(default: AXON_WORKER_METRICS_PORT; unset: none; 0 picks a port)",
    )

    submit = commands.add_parser("submit", help="create a task and queue it")
    submit.add_argument("adapter", help="mock, shell, python, docker, …")
    submit.add_argument("--args", default="{}", help="task arguments as a JSON object")
    submit.add_argument("--tenant", default="default", help="owner of the task")
    submit.add_argument("--lane", default="default", help="lane to queue it in")
    submit.add_argument("--name", help="a label for people")
    submit.add_argument("--timeout", type=float, dest="timeout_s", help="run time limit (s)")
    submit.add_argument(
        "--max-attempts", type=int, default=1, help="attempts for retryable failures"
    )

    show = commands.add_parser("task", help="show a task's record")
    show.add_argument("task_id")

    cancel = commands.add_parser(
        "cancel",
        help="cancel a task (queued: at once; running: stop it)",
        description="Cancel a task. With an API key (--key or AXON_API_KEY) through the API "
        "at --url/AXON_URL; otherwise directly in the Redis at REDIS_URL.",
    )
    cancel.add_argument("task_id")
    cancel.add_argument("--reason", help="why; written into the task's canceled event")
    cli_client.add_cancel_options(cancel)

    dlq = commands.add_parser("dlq", help="dead letters: tasks that failed for good")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_list = dlq_commands.add_parser("list", help="list dead letters, oldest first")
    dlq_list.add_argument("--count", type=int, default=100)
    dlq_list.add_argument("--after", default="-", help="start after this entry id")
    replay = dlq_commands.add_parser("replay", help="submit a dead letter's task again")
    replay.add_argument("entry_id")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of ``COMMANDS``; returns the exit code."""
    if settings.redis_url is None:
        raise ConfigError("set REDIS_URL (`axon dev` prints the embedded Valkey's URL)")
    try:
        return anyio.run(_dispatch, args, settings)
    except AxonError as exc:
        print(f"axon: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    async with open_store(settings) as store:
        queue = Queue(store)
        if args.command == "worker":
            return await _worker(queue, args)
        if args.command == "submit":
            try:
                task_args = json.loads(args.args)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--args is not valid JSON: {exc}") from None
            spec = TaskSpec(
                tenant=args.tenant,
                adapter=args.adapter,
                args=task_args,
                lane=args.lane,
                name=args.name,
                timeout_s=args.timeout_s,
                max_attempts=args.max_attempts,
            )
            _out(await queue.submit(spec))
        elif args.command == "task":
            _out(await store.get_task(args.task_id))
        elif args.command == "cancel":
            state = await queue.cancel(args.task_id, reason=args.reason or "cancel requested")
            _out({"task_id": args.task_id, "state": state.value})
        elif args.dlq_command == "list":
            for letter in await queue.dead_letters(count=args.count, after=args.after):
                _out(letter)
        else:
            record = await queue.replay(args.entry_id)
            _out({"entry_id": args.entry_id, "task": msgspec.to_builtins(record)})
    return 0


async def _worker(queue: Queue, args: argparse.Namespace) -> int:
    # Like `python -m` and uvicorn: modules in the current directory are importable
    # (the `axon` console script otherwise only sees installed packages).
    if args.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--import {module}: {exc}") from None
    worker = Worker(queue, worker_id=args.worker_id, concurrency=args.concurrency)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    print(f"worker {worker.worker_id} draining", flush=True)
                    worker.stop()

        tg.start_soon(stop_on_signal)
        settings = queue.settings
        port = args.metrics_port if args.metrics_port is not None else settings.worker_metrics_port
        exposed = ""
        if port is not None:
            bound = await tg.start(partial(metrics.serve, settings, queue.store, port=port))
            exposed = f", metrics http://{settings.metrics_host}:{bound}/metrics"
        await tg.start(worker.run)
        print(
            f"worker {worker.worker_id} ready: lanes {', '.join(queue.settings.lanes)}, "
            f"adapters {', '.join(worker.adapters.names())}{exposed}",
            flush=True,
        )
        await worker.stopped.wait()
        tg.cancel_scope.cancel()
    _out({"worker": worker.worker_id, "statistics": worker.statistics()})
    return 0


def _out(value: Any) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)
