"""The user-facing CLI (``axon start|logs|status|ls|cancel|export|receipt``) against a real
API server and worker, run as ``python -m axon`` processes (``logs -f`` under a pty)."""

from __future__ import annotations

import json
import os
import pty
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from axon.apikeys import Role
from axon.worker import Worker
from tests import worker_tasks
from tests.conftest import Api

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["valkey"], indirect=True)]

AXON = [sys.executable, "-m", "axon"]
TASKS = worker_tasks.__name__  # registers test.progress with the in-process worker


class Cli:
    """Runs ``axon`` with the API's URL and a key in the environment."""

    def __init__(self, api: Api, key: str) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "AXON_API_KEY")},
            "AXON_URL": api.url,
            "AXON_API_KEY": key,
            "COLUMNS": "200",
        }

    async def __call__(self, *args: str, **env: str) -> tuple[int, str, str]:
        with anyio.fail_after(60):
            done = await anyio.run_process([*AXON, *args], env={**self.env, **env}, check=False)
        return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_start_follow_status_ls_export_receipt_verify(
    make_api: Callable[..., Api], worker: Worker, tmp_path: Path
) -> None:
    """start --follow streams a task to its end (exit 0 on success); status, ls, export
    and receipt work on it, and the files verify offline with `axon verify`."""
    api = make_api()
    cli = Cli(api, api.admin)
    code, out, err = await cli("start", "mock", "--arg", "count=3", "--follow")
    assert code == 0, err
    task_id = out.splitlines()[0]
    assert task_id.startswith("t_")
    assert "succeeded" in err
    assert err.count(" tick ") == 3

    code, out, _ = await cli("status", task_id, "--json")
    assert json.loads(out)["state"] == "succeeded"
    code, out, _ = await cli("status", task_id)
    assert "succeeded" in out
    code, out, _ = await cli("ls", "--state", "succeeded")
    assert task_id in out
    code, out, _ = await cli("ls", "--json", "--limit", "1")
    assert json.loads(out.splitlines()[0])["id"] == task_id

    code, out, _ = await cli("logs", task_id, "--json")
    lines = out.encode().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, len(lines) + 1))
    code, _, err = await cli("export", task_id, "-o", str(tmp_path / "events.ndjson"))
    assert code == 0, err
    assert (tmp_path / "events.ndjson").read_bytes().splitlines() == lines
    code, _, err = await cli("receipt", task_id, "-o", str(tmp_path / "task.tlog-proof"))
    assert code == 0, err
    assert api.signer is not None
    (tmp_path / "vkey").write_text(api.signer.verifier_key())
    code, out, err = await cli(
        "verify", str(tmp_path / "task.tlog-proof"), "--key", str(tmp_path / "vkey"),
        "--events", str(tmp_path / "events.ndjson"),
    )  # fmt: skip
    assert code == 0, out + err
    assert "VERIFIED" in out


async def test_failed_task_exit_code_and_logs_since(
    make_api: Callable[..., Api], worker: Worker
) -> None:
    """A followed task that fails exits 1; `logs --since N` shows only later events."""
    api = make_api()
    cli = Cli(api, api.admin)
    code, out, err = await cli(
        "start", "mock", "--json", '{"count": 2, "outcome": "failed"}', "--follow"
    )
    assert code == 1, err
    assert "failed" in err
    task_id = out.splitlines()[0]
    code, out, _ = await cli("logs", task_id, "--since", "2", "--json")
    assert code == 0
    seqs = [json.loads(line)["seq"] for line in out.splitlines()]
    assert seqs == list(range(3, 3 + len(seqs)))
    assert len(seqs) >= 2  # the second tick, then the failed event


async def test_errors_are_one_line_with_exit_codes(
    make_api: Callable[..., Api], tmp_path: Path
) -> None:
    """Bad key, missing task, no key, a reader starting a task, an unreachable server and
    bad arguments: one `axon: error:` line each, the right exit code, no traceback."""
    api = make_api()
    reader = await api.key(role=Role.READER)
    cases = [
        (Cli(api, "axon_000000000000_nope"), ("status", "t_x"), 1, "unauthenticated"),
        (Cli(api, api.admin), ("status", "t_missing"), 1, "task_not_found"),
        (Cli(api, api.admin), ("logs", "t_missing", "-f"), 1, "task_not_found"),
        (Cli(api, reader), ("start", "mock"), 1, "permission_denied"),
        (Cli(api, api.admin), ("start", "mock", "--arg", "novalue"), 2, "KEY=VALUE"),
        (Cli(api, api.admin), ("start", "mock", "--json", "[1]"), 2, "JSON object"),
        (Cli(api, api.admin), ("receipt", "t_missing", "-o", str(tmp_path / "r")), 1, "not_found"),
    ]
    for cli, args, expected, text in cases:
        code, _, err = await cli(*args)
        assert code == expected, (args, err)
        assert err.startswith("axon: error:"), (args, err)
        assert text in err, (args, err)
        assert "Traceback" not in err
    nokey = Cli(api, "")
    code, _, err = await nokey("status", "t_x")
    assert code == 2
    assert "AXON_API_KEY" in err
    code, _, err = await Cli(api, api.admin)("status", "t_x", AXON_URL="http://127.0.0.1:9")
    assert code == 1
    assert "Traceback" not in err
    assert err.startswith("axon: error:")


async def test_cancel_through_the_api(make_api: Callable[..., Api], worker: Worker) -> None:
    """`axon cancel --reason` with an API key goes through the API; a followed task then
    ends canceled (exit 1), the reason in its canceled event."""
    api = make_api()
    cli = Cli(api, api.admin)
    code, out, _ = await cli("start", "mock", "--json", '{"forever": true, "interval_ms": 20}')
    task_id = out.strip()
    code, out, err = await cli("cancel", task_id, "--reason", "wrong branch")
    assert code == 0, err
    assert json.loads(out)["id"] == task_id
    assert json.loads(out)["cancel_reason"] == "wrong branch"
    code, _, err = await cli("logs", task_id, "-f")
    assert code == 1
    assert "canceled" in err
    code, out, _ = await cli("logs", task_id, "--json")
    last = json.loads(out.strip().splitlines()[-1])
    assert last["kind"] == "canceled"
    assert last["data"]["reason"] == "wrong branch"


async def read_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``axon ARGS`` on a pty; what it showed there and its exit code."""
    controller, terminal = pty.openpty()
    process = await anyio.open_process(
        [*AXON, *args], stdin=terminal, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    seen = b""
    with anyio.fail_after(30):
        while True:
            try:
                chunk = await anyio.to_thread.run_sync(os.read, controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        code = await process.wait()
    os.close(controller)
    return code, seen.decode(errors="replace")


async def test_logs_follow_under_a_terminal(make_api: Callable[..., Api], worker: Worker) -> None:
    """`axon logs -f` on a pty shows the task's events live and exits on the terminal event."""
    api = make_api()
    cli = Cli(api, api.admin)
    code, out, _ = await cli("start", "mock", "--json", '{"count": 5, "interval_ms": 100}')
    code, text = await read_terminal(["logs", out.strip(), "-f"], {**cli.env, "TERM": "xterm"})
    assert code == 0, text
    assert text.count('{"i":') == 5  # every tick, once
    assert "succeeded" in text


async def test_progress_renders_as_a_bar_on_a_terminal(
    make_api: Callable[..., Api], worker: Worker
) -> None:
    """`progress` events drive a progress bar on a terminal (plain lines elsewhere); the
    task's output lines print as themselves."""
    api = make_api()
    cli = Cli(api, api.admin)
    args = '{"function": "test.progress", "kwargs": {"steps": 4}}'
    code, out, err = await cli("start", "python", "--json", args)
    assert code == 0, err
    task_id = out.strip()
    code, text = await read_terminal(["logs", task_id, "-f"], {**cli.env, "TERM": "xterm"})
    assert code == 0, text
    assert "100%" in text
    assert "━" in text  # the bar itself
    assert "all steps done" in text
    code, out, err = await cli("logs", task_id)  # not a terminal: plain lines
    assert "progress 50% step 2 of 4" in err
    assert "all steps done" in out


async def test_ctrl_c_stops_logs_follow_cleanly(
    make_api: Callable[..., Api], worker: Worker
) -> None:
    """Ctrl-C (SIGINT) during `logs -f` of a task that never ends exits 130 with one line,
    no traceback."""
    api = make_api()
    cli = Cli(api, api.admin)
    code, out, _ = await cli("start", "mock", "--json", '{"forever": true, "interval_ms": 50}')
    task_id = out.strip()
    process = await anyio.open_process([*AXON, "logs", task_id, "-f"], env=cli.env)
    assert process.stderr is not None
    seen = b""
    with anyio.fail_after(30):
        async for chunk in process.stderr:  # wait until it is following: a tick arrived
            seen += chunk
            if b" tick " in seen:
                break
        process.send_signal(signal.SIGINT)
        async for chunk in process.stderr:
            seen += chunk
        code = await process.wait()
    assert code == 130, seen.decode(errors="replace")
    assert b"Traceback" not in seen
    assert b"axon: interrupted" in seen
    await cli("cancel", task_id)
