"""The user-facing commands: start, follow, inspect, cancel, export and prove tasks over HTTP.

    axon start ADAPTER [--arg k=v ...] [--json ARGS] [--lane L] [--timeout S] [--name N] [--follow]
    axon logs ID [-f] [--since N] [--json]
    axon status ID [--json]
    axon ls [--state S] [--adapter A] [--limit N] [--json]
    axon cancel ID
    axon export ID -o FILE
    axon receipt ID -o FILE [--seq N]

They talk to an Axon API server through ``axon.Client``: ``--url``/``AXON_URL``
(default ``http://127.0.0.1:8000``, where ``axon dev`` listens) and
``--key``/``AXON_API_KEY`` (prefer the variable: a flag shows in process
lists). Errors are one line on stderr, ``axon: error: <code>: <message>``,
with exit code 1 (2 for bad usage or configuration, 130 after Ctrl-C); never
a traceback. ``logs -f`` and ``start --follow`` exit 0 when the task
succeeded and 1 when it failed, was canceled or timed out.

Rendering (``logs`` without ``--json``): ``stdout``/``stderr`` events print
their lines to stdout/stderr as the task wrote them, ``progress`` events drive
a progress bar on a terminal, the terminal event is highlighted, and other
events print as ``[seq] kind data``. ``--json`` prints the exact event bytes,
one per line, for scripts and ``sha256sum``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from axon.client import DEFAULT_URL, Client
from axon.client_events import TaskEvent
from axon.errors import ApiError, AxonError, ConfigError, InvalidArgument
from axon.records import TaskState
from axon.wire import Task

COMMANDS = frozenset({"start", "logs", "status", "ls", "export", "receipt"})
"""Commands this module runs; ``cancel`` is shared with the Redis-direct commands."""

EXIT_INTERRUPTED = 130


def _add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", help=f"the Axon API (default: AXON_URL or {DEFAULT_URL})")
    parser.add_argument(
        "--key", help="API key (default: AXON_API_KEY; prefer the variable: flags show in `ps`)"
    )
    return parser


def add_commands(commands: Any) -> None:
    """Register the user-facing commands on the ``axon`` subparsers."""
    server = _add_server_args(argparse.ArgumentParser(add_help=False))
    start = commands.add_parser(
        "start",
        parents=[server],
        help="start a task through the API and print its id (or follow it)",
        description="Create and queue a task (POST /v1/tasks) and print its id; with "
        "--follow, stream its events until it ends (exit 0 if it succeeded, 1 otherwise).",
    )
    start.add_argument("adapter", help="mock, shell, python, docker, …")
    start.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one argument (VALUE is parsed as JSON if it can be, else taken as a string); "
        "repeatable",
    )
    start.add_argument(
        "--json", dest="args_json", metavar="ARGS", help="arguments as a JSON object"
    )
    start.add_argument("--lane", help="lane to queue it in (server default: default)")
    start.add_argument("--timeout", type=float, dest="timeout_s", help="run time limit (s)")
    start.add_argument("--name", help="a label for people")
    start.add_argument("--max-attempts", type=int, help="attempts for retryable failures")
    start.add_argument("--idempotency-key", help="retry-safe key (default: a random one)")
    start.add_argument("-f", "--follow", action="store_true", help="stream its events")

    logs = commands.add_parser(
        "logs",
        parents=[server],
        help="show a task's events (-f: follow until it ends, resuming across disconnects)",
        description="Print a task's events, readably, or with --json as their exact bytes. "
        "With -f, follow live until the task ends, reconnecting on its own; every event "
        "is shown once and its hash chain is verified.",
    )
    logs.add_argument("task_id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the task ends")
    logs.add_argument("--since", type=int, default=0, metavar="N", help="events after seq N")
    logs.add_argument("--json", action="store_true", help="exact event bytes, one per line")

    status = commands.add_parser("status", parents=[server], help="show one task")
    status.add_argument("task_id")
    status.add_argument("--json", action="store_true", help="the task as JSON")

    listing = commands.add_parser("ls", parents=[server], help="list your tasks, newest first")
    listing.add_argument("--state", choices=[s.value for s in TaskState])
    listing.add_argument("--adapter")
    listing.add_argument("--lane")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    export = commands.add_parser(
        "export",
        parents=[server],
        help="write a task's events as NDJSON (exact bytes, for `axon verify --events`)",
    )
    export.add_argument("task_id")
    export.add_argument(
        "-o", "--output", type=Path, required=True, help="file to write ('-': stdout)"
    )

    receipt = commands.add_parser(
        "receipt",
        parents=[server],
        help="save a finished task's receipt (or one event's proof) for `axon verify`",
    )
    receipt.add_argument("task_id")
    receipt.add_argument(
        "-o", "--output", type=Path, required=True, help="file to write ('-': stdout)"
    )
    receipt.add_argument("--seq", type=int, help="prove this event instead of the outcome")


def add_cancel_options(cancel: argparse.ArgumentParser) -> None:
    """``axon cancel`` goes through the API when it has a key (``--key``/``AXON_API_KEY``)."""
    _add_server_args(cancel)


def wants_api(args: argparse.Namespace) -> bool:
    """Whether ``axon cancel`` should use the API (a key is at hand) rather than Redis."""
    return bool(getattr(args, "key", None) or os.environ.get("AXON_API_KEY"))


def run(args: argparse.Namespace) -> int:
    """Run a user-facing command; returns the exit code."""
    err = Console(stderr=True, highlight=False)
    try:
        client = client_of(args)
        return anyio.run(_dispatch, client, args)
    except KeyboardInterrupt:
        err.print("axon: interrupted")
        return EXIT_INTERRUPTED
    except AxonError as exc:
        code = exc.error_code if isinstance(exc, ApiError) else exc.code
        print(f"axon: error: {code}: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError | InvalidArgument) else 1
    except OSError as exc:
        print(f"axon: error: {exc}", file=sys.stderr)
        return 1


def client_of(
    args: argparse.Namespace,
    *,
    no_key_hint: str = "`axon dev` prints one, `axon keys create` makes one",
) -> Client:
    """The API client of ``--url``/``--key``, else ``AXON_URL``/``AXON_API_KEY``.
    Without a key: a ConfigError ending with ``no_key_hint``."""
    url = args.url or os.environ.get("AXON_URL") or DEFAULT_URL
    key = args.key or os.environ.get("AXON_API_KEY")
    if not key:
        raise ConfigError(f"no API key: set AXON_API_KEY (or pass --key); {no_key_hint}")
    return Client(url, key)


async def _dispatch(client: Client, args: argparse.Namespace) -> int:
    async with client:
        command = args.command
        if command == "start":
            return await _start(client, args)
        if command == "logs":
            return await _logs(
                client, args.task_id, since=args.since, follow=args.follow, raw=args.json
            )
        if command == "status":
            _show_task(await client.get(args.task_id), as_json=args.json)
            return 0
        if command == "ls":
            return await _list(client, args)
        if command == "cancel":
            task = await client.cancel(args.task_id, reason=args.reason)
            print(msgspec.json.encode(task).decode())
            return 0
        if command == "export":
            return await _export(client, args)
        if command == "receipt":
            text = (
                await client.proof(args.task_id, args.seq)
                if args.seq is not None
                else await client.receipt(args.task_id)
            )
            _write_text(args.output, text)
            if str(args.output) != "-":
                print(f"axon: wrote {args.output}; check it with `axon verify {args.output} "
                      "--key <verifier key>`", file=sys.stderr)  # fmt: skip
            return 0
    raise InvalidArgument(f"unknown command {command!r}")  # pragma: no cover


async def _start(client: Client, args: argparse.Namespace) -> int:
    task = await client.start(
        args.adapter,
        _task_args(args.arg, args.args_json),
        lane=args.lane,
        timeout_s=args.timeout_s,
        name=args.name,
        max_attempts=args.max_attempts,
        idempotency_key=args.idempotency_key,
    )
    print(task.id, flush=True)
    if not args.follow:
        return 0
    return await _logs(client, task.id, since=0, follow=True, raw=False)


def _task_args(pairs: Sequence[str], args_json: str | None) -> dict[str, Any]:
    """``--json`` first, then each ``--arg KEY=VALUE`` (VALUE as JSON when it parses)."""
    args: dict[str, Any] = {}
    if args_json is not None:
        try:
            parsed = json.loads(args_json)
        except ValueError as exc:
            raise InvalidArgument(f"--json is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidArgument("--json must be a JSON object")
        args.update(parsed)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--arg takes KEY=VALUE, got {pair!r}")
        try:
            args[key] = json.loads(value)
        except ValueError:
            args[key] = value
    return args


# -- logs ----------------------------------------------------------------------------


async def _logs(client: Client, task_id: str, *, since: int, follow: bool, raw: bool) -> int:
    events = client.events(task_id, since, follow=follow)
    renderer = _Raw() if raw else _Readable(task_id)
    last: TaskEvent | None = None
    try:
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                renderer.show(event)
                last = event
    finally:
        renderer.close()
    if follow and last is not None and last.terminal:
        return 0 if last.kind == TaskState.SUCCEEDED.value else 1
    return 0


class _Raw:
    """``--json``: the exact event bytes, one per line."""

    def show(self, event: TaskEvent) -> None:
        sys.stdout.buffer.write(event.raw + b"\n")
        sys.stdout.buffer.flush()

    def close(self) -> None:
        sys.stdout.buffer.flush()


class _Readable:
    """Events for people: output lines as lines, progress as a bar, the outcome highlighted."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.progress: Progress | None = None
        self.bar: TaskID | None = None

    def show(self, event: TaskEvent) -> None:
        data = event.data
        if event.kind in ("stdout", "stderr") and isinstance(data.get("line"), str):
            stream = sys.stdout if event.kind == "stdout" else sys.stderr
            line = data["line"]
            stream.write(line if line.endswith("\n") else line + "\n")
            stream.flush()
        elif event.kind == "progress" and isinstance(data.get("fraction"), int | float):
            self._progress(float(data["fraction"]), data.get("message"))
        elif event.terminal:
            self._stop_progress()
            self.err.print(_outcome(event))
        else:
            stamp = datetime.fromtimestamp(event.ts / 1000, UTC).strftime("%H:%M:%S")
            body = msgspec.json.encode(data).decode() if data else ""
            self.err.print(
                f"[dim]{stamp} [{event.seq}][/dim] [bold]{event.kind}[/bold] {_escape(body)}"
            )

    def _progress(self, fraction: float, message: Any) -> None:
        text = str(message) if message is not None else ""
        if not self.err.is_terminal:
            self.err.print(f"progress {fraction:.0%} {_escape(text)}".rstrip())
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=self.err,
                transient=False,
            )
            self.progress.start()
            self.bar = self.progress.add_task(text or self.task_id, total=1.0)
        assert self.bar is not None
        self.progress.update(self.bar, completed=fraction, description=text or self.task_id)

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        self._stop_progress()


def _outcome(event: TaskEvent) -> str:
    style = {"succeeded": "bold green", "failed": "bold red", "timed_out": "bold red"}.get(
        event.kind, "bold yellow"
    )
    detail = msgspec.json.encode(event.data).decode() if event.data else ""
    return f"[{style}]{event.kind}[/{style}] (seq {event.seq}) {_escape(detail)}".rstrip()


def _escape(text: str) -> str:
    """Text as rich markup literal (``[`` would start a style)."""
    return text.replace("[", r"\[")


# -- the rest -----------------------------------------------------------------------------


def _show_task(task: Task, *, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.encode(task).decode())
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for field, value in msgspec.structs.asdict(task).items():
        if value in (None, {}, "") or field == "stream_url":
            continue
        if field.endswith("_ms") and isinstance(value, int) and value:
            value = f"{_when(value)} ({value})"
        shown = (
            json.dumps(value) if isinstance(value, dict) else str(getattr(value, "value", value))
        )
        table.add_row(field, _escape(shown))
    _stdout().print(table)


async def _list(client: Client, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise InvalidArgument("--limit must be at least 1")
    tasks = await _take(client.iter_tasks(args.state, args.adapter, args.lane), args.limit)
    if args.json:
        for task in tasks:
            print(msgspec.json.encode(task).decode())
        return 0
    table = Table()
    table.add_column("id", no_wrap=True, min_width=max((len(t.id) for t in tasks), default=2))
    table.add_column("state", no_wrap=True)
    table.add_column("adapter")
    table.add_column("name")
    table.add_column("events", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("finished", no_wrap=True)
    for task in tasks:
        table.add_row(
            task.id,
            _state(task.state),
            task.adapter,
            _escape(task.name or ""),
            str(task.events),
            _when(task.created_ms),
            _when(task.finished_ms) if task.finished_ms else "",
        )
    _stdout().print(table)
    return 0


async def _take(source: AsyncIterator[Task], limit: int) -> list[Task]:
    taken: list[Task] = []
    async for task in source:
        taken.append(task)
        if len(taken) >= limit:
            break
    return taken


def _stdout() -> Console:
    """Rich output on stdout: the terminal's width, or wide enough for whole rows in a pipe."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _state(state: TaskState) -> str:
    colour = {
        TaskState.SUCCEEDED: "green",
        TaskState.FAILED: "red",
        TaskState.TIMED_OUT: "red",
        TaskState.CANCELED: "yellow",
        TaskState.RUNNING: "cyan",
    }.get(state, "white")
    return f"[{colour}]{state.value}[/{colour}]"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _export(client: Client, args: argparse.Namespace) -> int:
    if str(args.output) == "-":
        async with contextlib.aclosing(client.events(args.task_id, follow=False)) as events:
            async for event in events:
                sys.stdout.buffer.write(event.raw + b"\n")
        sys.stdout.buffer.flush()
        return 0
    count = await client.export(args.task_id, args.output)
    print(f"axon: wrote {count} events to {args.output}", file=sys.stderr)
    return 0


def _write_text(path: Path, text: str) -> None:
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        path.write_text(text, encoding="utf-8")
