"""The ``axon`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from axon import __version__
from axon.embedded import ServerProcess

AXON = [sys.executable, "-m", "axon"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m axon`` with ``args`` and capture its output."""
    full_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [*AXON, *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


def test_version() -> None:
    """`axon --version` prints the package version."""
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"axon {__version__}"


def test_doctor_against_a_server(valkey: ServerProcess) -> None:
    """`axon doctor` reports the server and its strict-durability support."""
    result = run("doctor", env={"REDIS_URL": valkey.url})
    assert result.returncode == 0, result.stderr
    assert "valkey 9" in result.stdout
    assert "strict durability (WAITAOF): available" in result.stdout


def test_doctor_with_embedded_valkey() -> None:
    """Without REDIS_URL, `axon doctor` checks a throwaway embedded Valkey."""
    result = run("doctor")
    assert result.returncode == 0, result.stderr
    assert "embedded Valkey" in result.stdout


def test_doctor_unreachable_server_fails_cleanly() -> None:
    """An unreachable REDIS_URL is a failed check with a message, not a traceback."""
    result = run("doctor", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stdout
    assert "Traceback" not in result.stderr


def test_bad_configuration_exits_2() -> None:
    """A malformed AXON_* variable exits 2 with a one-line error."""
    result = run("doctor", env={"AXON_DURABILITY": "paranoid"})
    assert result.returncode == 2
    assert result.stderr.startswith("axon: error: AXON_DURABILITY")
    assert "Traceback" not in result.stderr


def test_dev_runs_the_whole_system_until_sigterm(tmp_path: Path) -> None:
    """`axon dev` starts an embedded Valkey, the API and a worker, prints the URL and a dev
    admin key (saved 0600 in the data dir) that runs a task end to end, and stops it all
    cleanly on SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env |= {"AXON_COMPACT_RETENTION_S": "0", "AXON_COMPACT_INTERVAL_S": "0.2"}
    proc = subprocess.Popen(
        [*AXON, "dev", "--data-dir", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the first line; bounded by the test timeout
        assert "Embedded Valkey is running at redis://127.0.0.1:" in line
        banner: list[str] = []
        while not banner or "Press Ctrl-C" not in banner[-1]:
            banner.append(proc.stdout.readline())
        text = "".join(banner)
        url = re.search(r"API\s+(http://\S+)", text)
        key = re.search(r"Admin key\s+(axon_\S+)", text)
        assert url is not None, text
        assert key is not None, text
        assert (tmp_path / "dev-key").read_text().strip() == key.group(1)
        assert (tmp_path / "dev-key").stat().st_mode & 0o777 == 0o600
        assert "curl" in text
        headers = {"authorization": f"Bearer {key.group(1)}"}
        with httpx.Client(base_url=url.group(1), headers=headers, timeout=20) as client:
            created = client.post("/v1/tasks", json={"adapter": "mock", "args": {"count": 2}})
            assert created.status_code == 201, created.text
            events = client.get(
                created.json()["stream_url"], headers={"accept": "text/event-stream"}
            )
            assert "event: succeeded" in events.text
            # the in-process compactor archives the finished task (retention 0 here) ...
            archive = tmp_path / "archive"
            deadline = time.monotonic() + 20
            while not (archive.exists() and any(p.is_file() for p in archive.rglob("*"))):
                assert time.monotonic() < deadline, "the dev compactor archived nothing"
                time.sleep(0.05)
            # ... and replay and the receipt still work, verified offline
            replay = client.get(
                created.json()["stream_url"], headers={"accept": "text/event-stream"}
            )
            assert replay.text == events.text
            receipt = client.get(f"/v1/tasks/{created.json()['id']}/receipt")
            assert receipt.status_code == 200, receipt.text
            (tmp_path / "task.tlog-proof").write_text(receipt.text)
            (tmp_path / "vkey").write_text(client.get("/v1/receipt-key").text)
        assert (tmp_path / "receipt.key").stat().st_mode & 0o777 == 0o600
        verified = run("verify", str(tmp_path / "task.tlog-proof"), "--key", str(tmp_path / "vkey"))
        assert "VERIFIED" in verified.stdout, verified.stdout + verified.stderr
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Embedded Valkey stopped." in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dev_hands_running_tasks_back_on_sigterm(tmp_path: Path, valkey: ServerProcess) -> None:
    """On SIGTERM `axon dev` lets its worker hand a running task back to its lane
    (state queued, a `requeued` event) before it exits, instead of cutting it off."""
    env = {**os.environ, "REDIS_URL": valkey.url, "AXON_KEY_PREFIX": f"devback{os.getpid()}"}
    proc = subprocess.Popen(
        [*AXON, "dev", "--data-dir", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        while not banner or "Press Ctrl-C" not in banner[-1]:
            banner.append(proc.stdout.readline())
        text = "".join(banner)
        url = re.search(r"API\s+(http://\S+)", text)
        assert url is not None, text
        headers = {"authorization": f"Bearer {(tmp_path / 'dev-key').read_text().strip()}"}
        with httpx.Client(base_url=url.group(1), headers=headers, timeout=20) as client:
            body = {"adapter": "mock", "args": {"count": 100_000, "interval_ms": 50}}
            task_id = client.post("/v1/tasks", json=body).json()["id"]
            with client.stream(
                "GET", f"/v1/tasks/{task_id}/events", headers={"accept": "text/event-stream"}
            ) as stream:
                for line in stream.iter_lines():
                    if line == "event: tick":  # it is running
                        break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        shown = run("task", task_id, env=env)
        assert json.loads(shown.stdout)["state"] == "queued", shown.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_task_commands_round_trip(valkey: ServerProcess) -> None:
    """submit, task, cancel and dlq list work end to end and print JSON."""
    import json

    env = {"REDIS_URL": valkey.url, "AXON_KEY_PREFIX": f"cli{os.getpid()}"}
    submitted = run("submit", "mock", "--args", '{"count": 1}', "--tenant", "acme", env=env)
    assert submitted.returncode == 0, submitted.stderr
    task = json.loads(submitted.stdout)
    assert (task["state"], task["tenant"], task["adapter"]) == ("queued", "acme", "mock")
    shown = json.loads(run("task", task["id"], env=env).stdout)
    assert shown["id"] == task["id"]
    canceled = run("cancel", task["id"], env=env)
    assert json.loads(canceled.stdout) == {"task_id": task["id"], "state": "canceled"}
    again = run("cancel", task["id"], env=env)
    assert again.returncode == 1
    assert "task_terminal" in again.stderr
    assert run("dlq", "list", env=env).stdout == ""


def test_task_commands_report_bad_input(valkey: ServerProcess) -> None:
    """Bad JSON, unknown lanes, unknown tasks and a missing REDIS_URL are one-line errors."""
    env = {"REDIS_URL": valkey.url, "AXON_KEY_PREFIX": f"cli{os.getpid()}"}
    bad_json = run("submit", "mock", "--args", "{nope", env=env)
    assert (bad_json.returncode, "Traceback" in bad_json.stderr) == (2, False)
    bad_lane = run("submit", "mock", "--lane", "urgent", env=env)
    assert bad_lane.returncode == 1
    assert "unknown lane" in bad_lane.stderr
    missing = run("task", "t_missing", env=env)
    assert missing.returncode == 1
    assert "task_not_found" in missing.stderr
    no_url = run("task", "t_missing")
    assert no_url.returncode == 2
    assert "REDIS_URL" in no_url.stderr


def test_dlq_commands_reject_bad_ids(valkey: ServerProcess) -> None:
    """A malformed dead-letter id or count is an invalid_argument error, not a server error."""
    env = {"REDIS_URL": valkey.url, "AXON_KEY_PREFIX": f"cli{os.getpid()}"}
    replay = run("dlq", "replay", "not-an-id", env=env)
    assert replay.returncode == 1
    assert "invalid_argument" in replay.stderr
    listing = run("dlq", "list", "--count", "0", env=env)
    assert listing.returncode == 1
    assert "invalid_argument" in listing.stderr
    missing = run("dlq", "replay", "1-0", env=env)
    assert missing.returncode == 1
    assert "task_not_found" in missing.stderr


def test_receipt_key_commands(tmp_path: Path) -> None:
    """receipt-init writes a 0600 key and prints its verifier key; it refuses to overwrite
    without --force; receipt-show prints the same verifier key; none needs Redis."""
    env = {"AXON_DATA_DIR": str(tmp_path / "data")}
    created = run("keys", "receipt-init", "--origin", "axon.example/prod", env=env)
    assert created.returncode == 0, created.stderr
    vkey = created.stdout.strip()
    assert vkey.startswith("axon.example/prod+")
    path = tmp_path / "data" / "receipt.key"
    assert path.stat().st_mode & 0o777 == 0o600
    secret = path.read_text().strip()
    assert secret.startswith("PRIVATE+KEY+axon.example/prod+")
    assert secret not in created.stdout + created.stderr  # the private key is never printed
    again = run("keys", "receipt-init", env=env)
    assert again.returncode == 1
    assert "receipt_key_exists" in again.stderr
    assert "Traceback" not in again.stderr
    shown = run("keys", "receipt-show", env=env)
    assert shown.stdout.strip() == vkey
    path.chmod(0o644)
    insecure = run("keys", "receipt-show", env=env)
    assert insecure.returncode == 1
    assert "receipt_key_insecure" in insecure.stderr
    missing = run("keys", "receipt-show", env={"AXON_DATA_DIR": str(tmp_path / "none")})
    assert missing.returncode == 1
    assert "receipt-init" in missing.stderr


def test_compactor_needs_a_signing_key(tmp_path: Path, valkey: ServerProcess) -> None:
    """Without a receipt key the compactor refuses to start, saying how to make one;
    its stats work without one."""
    env = {"REDIS_URL": valkey.url, "AXON_DATA_DIR": str(tmp_path), "AXON_KEY_PREFIX": "nokey"}
    refused = run("compactor", "--once", env=env)
    assert refused.returncode == 2
    assert "receipt-init" in refused.stderr
    stats = run("compactor", "stats", env=env)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["tasks_compacted"] == 0
