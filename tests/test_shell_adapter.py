"""The shell adapter with real processes and real logs: events, outcomes, limits, sandbox, stopping.

Tests marked with the ``adapter`` fixture run twice: inside bubblewrap (skipped
when ``bwrap`` is not installed) and unsandboxed (``sandbox="off"``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from axon.adapters import Adapter, AdapterError, Outcome
from axon.adapters.sandbox import ShellLimits, bwrap_argv, bwrap_version
from axon.adapters.shell import MISSING_BWRAP, ShellAdapter
from axon.context import RunContext
from axon.embedded import ServerProcess
from axon.events import decode_event
from axon.records import TaskSpec
from axon.store import Store
from axon.writer import EventWriter
from tests.conftest import Backend

pytestmark = pytest.mark.anyio

HAS_BWRAP = shutil.which("bwrap") is not None
NO_BWRAP = "bubblewrap (bwrap) is not on PATH; sandbox tests need it (apt-get install bubblewrap)"
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason=NO_BWRAP)
IS_ROOT = os.geteuid() == 0

Events = list[tuple[str, dict[str, Any]]]

TMP = "/tmp"  # noqa: S108 - the sandbox's private /tmp, and the host's


@pytest.fixture
def backend(valkey: ServerProcess) -> Backend:
    """Valkey only: the adapter does not care which server kind holds the log."""
    return Backend(name="valkey", url=valkey.url, cluster=False, aof=True)


@pytest.fixture
def work_root() -> Iterator[Path]:
    """A dir for the runs' work dirs, traversable by the uids a root worker runs commands as."""
    root = Path(tempfile.mkdtemp(prefix="axon-shell-test-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root)


@pytest.fixture(params=["sandboxed", "unsandboxed"])
def adapter(request: pytest.FixtureRequest, work_root: Path) -> ShellAdapter:
    """The adapter inside bubblewrap, then without any sandbox."""
    if request.param == "sandboxed":
        if not HAS_BWRAP:
            pytest.skip(NO_BWRAP)
        return ShellAdapter(sandbox="required", work_root=work_root)
    return ShellAdapter(sandbox="off", work_root=work_root)


@pytest.fixture
def marker() -> str:
    """A string unique to this test, to find its processes by command line."""
    return f"axon-test-{uuid.uuid4().hex}"


def entries(path: Path) -> list[str]:
    """The names in ``path``."""
    return sorted(os.listdir(path))


def exists(path: str | Path) -> bool:
    """Whether ``path`` exists on the host."""
    return os.path.lexists(path)


def pids_with(marker: str) -> list[int]:
    """Live (non-zombie) host processes whose command line contains ``marker``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def wait_until_gone(marker: str, timeout_s: float) -> None:
    """Return once no process carries ``marker``; fail after ``timeout_s``."""
    with anyio.fail_after(timeout_s):
        while pids_with(marker):  # noqa: ASYNC110 - polling /proc, bounded by fail_after
            await anyio.sleep(0.01)


async def make_context(store: Store, args: dict[str, Any], *, grace_s: float = 5.0) -> RunContext:
    """A context for a fresh shell task, writing to its real log."""
    record = await store.create_task(TaskSpec(tenant="t", adapter="shell", args=args))
    writer = EventWriter(store, record.id, epoch=0)
    return RunContext(writer, args=args, attempt=1, stop_grace_s=grace_s)


async def events_of(store: Store, ctx: RunContext) -> Events:
    """The task's events after ``queued``, as (kind, data)."""
    stored = await store.read(ctx.task_id)
    return [(e.kind, decode_event(e.raw).data) for e in stored[1:]]


async def run_task(
    store: Store, adapter: ShellAdapter, args: dict[str, Any], *, grace_s: float = 5.0
) -> tuple[Outcome, Events]:
    """Run one shell task to its end; its outcome and events."""
    ctx = await make_context(store, args, grace_s=grace_s)
    with anyio.fail_after(30):
        outcome = await adapter.run(ctx)
    return outcome, await events_of(store, ctx)


def lines(events: Events, kind: str) -> list[str]:
    """The ``line`` of every event of ``kind``, in log order."""
    return [data["line"] for k, data in events if k == kind]


# -- output and outcome -------------------------------------------------------


def test_shell_adapter_is_an_adapter() -> None:
    """ShellAdapter satisfies the adapter protocol under the name ``shell``."""
    adapter = ShellAdapter()
    assert isinstance(adapter, Adapter)
    assert adapter.name == "shell"


async def test_output_lines_become_events_in_order(store: Store, adapter: ShellAdapter) -> None:
    """Each stdout and stderr line is one event, in order per stream; exit 0 succeeds."""
    script = "echo one; echo two >&2; echo three; echo four >&2; printf 'no newline'"
    outcome, events = await run_task(store, adapter, {"argv": ["sh", "-c", script]})
    assert outcome == Outcome(ok=True, data={"exit_code": 0})
    assert lines(events, "stdout") == ["one", "three", "no newline"]
    assert lines(events, "stderr") == ["two", "four"]
    assert {kind for kind, _ in events} == {"stdout", "stderr"}


async def test_nonzero_exit_fails_and_may_be_retryable(store: Store, adapter: ShellAdapter) -> None:
    """A non-zero exit fails with its code, retryable only if listed in retry_on_exit_codes."""
    outcome, _ = await run_task(store, adapter, {"argv": ["sh", "-c", "exit 3"]})
    assert not outcome.ok
    assert outcome.data["exit_code"] == 3
    assert "3" in outcome.data["error"]
    assert not outcome.retryable
    args = {"argv": ["sh", "-c", "exit 3"], "retry_on_exit_codes": [3, 75]}
    outcome, _ = await run_task(store, adapter, args)
    assert (outcome.ok, outcome.data["exit_code"], outcome.retryable) == (False, 3, True)


async def test_signal_death_is_reported_by_name(store: Store, adapter: ShellAdapter) -> None:
    """A command killed by a signal fails with a negative exit code and the signal's name."""
    outcome, _ = await run_task(store, adapter, {"argv": ["sh", "-c", "kill -KILL $$"]})
    assert not outcome.ok
    assert outcome.data["exit_code"] == -9
    assert outcome.data["signal"] == "SIGKILL"


async def test_shell_true_runs_a_string_with_sh(store: Store, adapter: ShellAdapter) -> None:
    """With shell: true, argv is one string run by /bin/sh -c."""
    args = {"argv": "for i in 1 2; do echo n$i; done | tr n m", "shell": True}
    outcome, events = await run_task(store, adapter, args)
    assert outcome.ok
    assert lines(events, "stdout") == ["m1", "m2"]


async def test_signals_have_default_dispositions(store: Store, adapter: ShellAdapter) -> None:
    """The command starts with default signal handling: a closed pipe ends a writer silently."""
    outcome, events = await run_task(store, adapter, {"argv": ["sh", "-c", "yes | head -n 1"]})
    assert outcome.ok
    assert lines(events, "stdout") == ["y"]
    assert lines(events, "stderr") == []


async def test_long_lines_are_cut_and_flagged(store: Store, work_root: Path) -> None:
    """Lines over the cap are cut (never inside a UTF-8 character) and flagged truncated."""
    adapter = ShellAdapter(sandbox="off", work_root=work_root, max_line_bytes=4)
    script = r"printf 'a\303\251\303\251\nabcd\nabcdefghij\nxy\nqrstuvw'"
    outcome, events = await run_task(store, adapter, {"argv": ["sh", "-c", script]})
    assert outcome.ok
    assert [data for kind, data in events if kind == "stdout"] == [
        {"line": "aé", "truncated": True},
        {"line": "abcd"},
        {"line": "abcd", "truncated": True},
        {"line": "xy"},
        {"line": "qrst", "truncated": True},
    ]


async def test_invalid_utf8_is_replaced(store: Store, adapter: ShellAdapter) -> None:
    """Bytes that are not UTF-8 arrive as U+FFFD instead of failing the run."""
    outcome, events = await run_task(store, adapter, {"argv": ["printf", r"ok\377\n"]})
    assert outcome.ok
    assert lines(events, "stdout") == ["ok\ufffd"]


async def test_cwd_is_inside_a_private_work_dir_removed_afterwards(
    store: Store, adapter: ShellAdapter, work_root: Path
) -> None:
    """The command runs in its own work dir (HOME; cwd is relative to it), deleted after the run."""
    args = {"argv": ["sh", "-c", 'echo data > f && cat f && pwd && echo "$HOME"'], "cwd": "a/./b"}
    outcome, events = await run_task(store, adapter, args)
    assert outcome.ok
    data, cwd, home = lines(events, "stdout")
    assert data == "data"
    assert cwd == f"{home}/a/b"
    if adapter.sandbox == "required":
        assert home == "/work"
    else:
        assert Path(home).parent == work_root
    assert entries(work_root) == []


# -- arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ({}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": [""]}, "argv"),
        ({"argv": "touch MARKER"}, "shell: true"),
        ({"argv": ["touch", "MARKER"], "shell": True}, "one non-empty command string"),
        ({"argv": ["touch", "MARKER"], "cwd": "/etc"}, "cwd"),
        ({"argv": ["touch", "MARKER"], "cwd": "../.."}, "cwd"),
        ({"argv": ["touch", "MARKER"], "cwd": "a/../../b"}, "cwd"),
        ({"argv": ["touch", "MARKER"], "env": {"SECRET": "x"}}, "'SECRET' is not allowed"),
        ({"argv": ["touch", "MARKER"], "env": {"PATH": TMP}}, "'PATH' is not allowed"),
        ({"argv": ["touch", "MARKER"], "env": {"LANG": 1}}, "env"),
        ({"argv": ["touch", "MARKER"], "netwrok": True}, "netwrok"),
        ({"argv": ["touch", "MARKER"], "limits": {"cpu_s": 0}}, "cpu_s"),
        ({"argv": ["touch", "MARKER"], "limits": {"ram": 5}}, "ram"),
        ({"argv": ["touch", "MARKER"], "retry_on_exit_codes": [True]}, "retry_on_exit_codes"),
        ({"argv": ["touch", "MARKER\0"]}, "NUL"),
    ],
)
async def test_bad_args_raise_and_run_nothing(
    store: Store, work_root: Path, tmp_path: Path, args: dict[str, Any], complaint: str
) -> None:
    """Malformed or disallowed arguments raise a non-retryable AdapterError before anything runs."""
    target = tmp_path / "ran"
    adapter = ShellAdapter(sandbox="off", work_root=work_root)
    args = _replace(args, "MARKER", str(target))
    ctx = await make_context(store, args)
    with pytest.raises(AdapterError) as caught:
        await adapter.run(ctx)
    assert complaint in caught.value.message
    assert not caught.value.retryable
    assert await events_of(store, ctx) == []
    assert not exists(target)
    assert entries(work_root) == []


async def test_limits_above_the_ceiling_are_refused(store: Store, work_root: Path) -> None:
    """A task may not raise its limits above the adapter's max_limits."""
    adapter = ShellAdapter(sandbox="off", work_root=work_root, max_limits=ShellLimits(nproc=64))
    ctx = await make_context(store, {"argv": ["true"], "limits": {"nproc": 65}})
    with pytest.raises(AdapterError, match="nproc may be at most 64"):
        await adapter.run(ctx)


async def test_missing_work_root_is_an_adapter_error(store: Store, tmp_path: Path) -> None:
    """A work root that does not exist fails the run with an AdapterError, not a traceback."""
    adapter = ShellAdapter(sandbox="off", work_root=tmp_path / "missing")
    ctx = await make_context(store, {"argv": ["true"]})
    with pytest.raises(AdapterError, match="could not create the run's work dir"):
        await adapter.run(ctx)


async def test_missing_program_is_an_adapter_error(store: Store, adapter: ShellAdapter) -> None:
    """A program that does not exist raises a non-retryable AdapterError naming it."""
    ctx = await make_context(store, {"argv": ["axon-no-such-program"]})
    with anyio.fail_after(30), pytest.raises(AdapterError, match="axon-no-such-program") as caught:
        await adapter.run(ctx)
    assert not caught.value.retryable


# -- environment ------------------------------------------------------------------


async def test_environment_is_cleared_and_allowlisted(
    store: Store, adapter: ShellAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's environment never leaks in; only the base variables and allowed names do."""
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("AXON_TASK_FROM_WORKER", "leak")
    args = {"argv": ["env"], "env": {"LANG": "C.UTF-8", "AXON_TASK_ID": "42"}}
    outcome, events = await run_task(store, adapter, args)
    assert outcome.ok
    env = dict(line.split("=", 1) for line in lines(events, "stdout"))
    env.pop("PWD", None)  # bubblewrap sets it to the working directory
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": env["HOME"],
        "TMPDIR": TMP,
        "LANG": "C.UTF-8",
        "AXON_TASK_ID": "42",
    }
    assert "hunter2" not in str(events)


# -- limits -------------------------------------------------------------------------


async def test_memory_limit_applies(store: Store, adapter: ShellAdapter) -> None:
    """An allocation beyond memory_mb fails inside the command."""
    code = "b = bytearray(512 << 20)"
    args = {"argv": ["python3", "-c", code], "limits": {"memory_mb": 128}}
    outcome, events = await run_task(store, adapter, args)
    assert outcome.data["exit_code"] == 1
    assert "MemoryError" in lines(events, "stderr")


async def test_file_size_limit_kills_with_sigxfsz(store: Store, adapter: ShellAdapter) -> None:
    """Writing past fsize_mb gets the writer killed by SIGXFSZ, reported as such."""
    args = {
        "argv": ["dd", "if=/dev/zero", "of=big", "bs=1048576", "count=3"],
        "limits": {"fsize_mb": 1},
    }
    outcome, _ = await run_task(store, adapter, args)
    assert outcome.data["signal"] == "SIGXFSZ"
    assert outcome.data["exit_code"] == -25


async def test_fork_bomb_is_contained(store: Store, adapter: ShellAdapter, marker: str) -> None:
    """Forks beyond nproc fail, the run ends, and none of the forked processes survives it."""
    if adapter.sandbox == "off" and not IS_ROOT:
        pytest.skip("unsandboxed, nproc counts every process of the worker's own uid")
    code = (
        "import os, sys, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 5000:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('fork failed after', n, flush=True)\n"
        "    sys.exit(0)\n"
        "print('forked', n, flush=True)\n"
    )
    args = {"argv": ["python3", "-c", code, marker], "limits": {"nproc": 32, "cpu_s": 10}}
    started = time.monotonic()
    outcome, events = await run_task(store, adapter, args)
    assert outcome.ok
    (report,) = lines(events, "stdout")
    assert report.startswith("fork failed after")
    assert int(report.split()[-1]) < 32
    assert time.monotonic() - started < 10
    await wait_until_gone(marker, 2)


@needs_bwrap
async def test_shell_fork_bomb_is_contained(store: Store, work_root: Path, marker: str) -> None:
    """The classic shell fork bomb ends with the run and leaves no process behind."""
    adapter = ShellAdapter(work_root=work_root)
    args = {
        "argv": ["sh", "-c", "b() { b | b & }; b; sleep 1", marker],
        "limits": {"nproc": 32, "cpu_s": 5},
    }
    await run_task(store, adapter, args)  # fork failures make the exit code vary
    await wait_until_gone(marker, 2)


# -- sandbox ------------------------------------------------------------------------


@needs_bwrap
async def test_writes_outside_the_work_dir_do_not_reach_the_host(
    store: Store, work_root: Path
) -> None:
    """System dirs are read-only, host dirs absent, /tmp private; only the work dir is writable."""
    open_dir = tempfile.mkdtemp(prefix="axon-escape-")  # world-writable on the host
    os.chmod(open_dir, 0o777)  # noqa: S103 - a dir anyone may write to, unless sandboxed
    name = f"axon-escape-{uuid.uuid4().hex}"
    targets = [f"/etc/{name}", f"/usr/{name}", f"{open_dir}/{name}", f"/work/main/{name}"]
    try:
        script = "".join(f'touch "{t}" 2>/dev/null && echo "wrote {t}"; ' for t in targets)
        script += f'touch "/tmp/{name}" && echo tmp-ok; echo inside > mine && cat mine'
        adapter = ShellAdapter(work_root=work_root)
        outcome, events = await run_task(store, adapter, {"argv": script, "shell": True})
        assert outcome.ok
        assert lines(events, "stdout") == ["tmp-ok", "inside"]
        for target in [*targets, os.path.join(TMP, name)]:
            assert not exists(target)
    finally:
        shutil.rmtree(open_dir)


@needs_bwrap
@pytest.mark.skipif(not IS_ROOT, reason="only a root worker has root-only host files to protect")
async def test_root_only_files_stay_unreadable(store: Store, work_root: Path) -> None:
    """A root worker's sandbox cannot read files only root may read (it runs as its own uid)."""
    secret = Path("/etc") / f"axon-secret-{uuid.uuid4().hex}"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    try:
        adapter = ShellAdapter(work_root=work_root)
        outcome, events = await run_task(store, adapter, {"argv": ["cat", str(secret)]})
        assert not outcome.ok
        assert "hunter2" not in lines(events, "stdout")
    finally:
        secret.unlink()


@needs_bwrap
async def test_network_is_off_unless_asked_for(store: Store, work_root: Path) -> None:
    """Without network: true a connection to a listening host port fails; with it, it connects."""
    adapter = ShellAdapter(work_root=work_root)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
        outcome, events = await run_task(store, adapter, {"argv": ["python3", "-c", code]})
        assert not outcome.ok
        assert any("Error" in line for line in lines(events, "stderr"))
        with pytest.raises(BlockingIOError):
            listener.accept()
        args = {"argv": ["python3", "-c", code], "network": True}
        outcome, _ = await run_task(store, adapter, args)
        assert outcome.ok
        listener.accept()[0].close()


@needs_bwrap
async def test_sandbox_runs_as_nobody_with_private_proc(store: Store, work_root: Path) -> None:
    """Inside the sandbox the command is uid 65534 and sees only its own processes."""
    adapter = ShellAdapter(work_root=work_root)
    outcome, events = await run_task(
        store, adapter, {"argv": ["sh", "-c", "id -u; ls /proc | grep -c '^[0-9]'"]}
    )
    assert outcome.ok
    uid, processes = lines(events, "stdout")
    assert uid == "65534"
    assert int(processes) <= 4  # bwrap's init, sh, ls, grep


def test_bwrap_argv_confines_everything() -> None:
    """The bwrap command line unshares every namespace, binds the work dir, and caps /tmp."""
    argv = bwrap_argv(
        "/usr/bin/bwrap",
        command=["echo", "hi"],
        workdir="/host/run",
        cwd="sub",
        network=False,
        status_fd=7,
        ro_paths=["/usr", "/does-not-exist"],
        tmp_size_mb=1,
    )
    joined = " ".join(argv)
    assert argv[0] == "/usr/bin/bwrap"
    assert argv[-3:] == ["--", "echo", "hi"]
    assert "--ro-bind /usr /usr" in joined
    assert "/does-not-exist" not in joined
    assert f"--size {1 << 20} --tmpfs {TMP}" in joined
    assert "--bind /host/run /work --chdir /work/sub" in joined
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--share-net" not in argv
    assert "--json-status-fd 7" in joined
    with_net = bwrap_argv(
        "bwrap", command=["true"], workdir="/w", cwd="", network=True, status_fd=3, tmp_size_mb=None
    )
    assert "--share-net" in with_net
    assert "--size" not in with_net
    assert "--chdir /work " in " ".join(with_net)


@pytest.mark.parametrize(
    ("output", "version"),
    [(b"bubblewrap 0.8.0\n", (0, 8, 0)), (b"bubblewrap 0.6.1", (0, 6, 1)), (b"", ()), (b"x y", ())],
)
def test_bwrap_version_is_parsed(output: bytes, version: tuple[int, ...]) -> None:
    """``bwrap --version`` output becomes a comparable tuple; anything else is ``()``."""
    assert bwrap_version(output) == version


# -- sandbox modes ----------------------------------------------------------------------


async def test_required_sandbox_without_bwrap_refuses(
    store: Store, work_root: Path, tmp_path: Path
) -> None:
    """With sandbox required and no bubblewrap, the run fails clearly and runs nothing."""
    target = tmp_path / "ran"
    adapter = ShellAdapter(bwrap_path=str(tmp_path / "no-bwrap"), work_root=work_root)
    ctx = await make_context(store, {"argv": ["touch", str(target)]})
    with pytest.raises(AdapterError) as caught:
        await adapter.run(ctx)
    assert caught.value.message == MISSING_BWRAP
    assert not caught.value.retryable
    assert await events_of(store, ctx) == []
    assert not exists(target)
    assert entries(work_root) == []


async def test_auto_sandbox_without_bwrap_runs_unsandboxed_and_says_so(
    store: Store, work_root: Path, tmp_path: Path
) -> None:
    """With sandbox auto and no bubblewrap, the command runs unsandboxed after a log event."""
    adapter = ShellAdapter(
        sandbox="auto", bwrap_path=str(tmp_path / "no-bwrap"), work_root=work_root
    )
    outcome, events = await run_task(store, adapter, {"argv": ["echo", "hi"]})
    assert outcome.ok
    (first_kind, first), second = events
    assert first_kind == "log"
    assert first["sandbox"] == "off"
    assert "unsandboxed" in first["message"]
    assert second == ("stdout", {"line": "hi"})


# -- stopping ---------------------------------------------------------------------------


async def _start_and_cancel(
    store: Store, adapter: ShellAdapter, argv: list[str], marker: str, *, grace_s: float
) -> float:
    """Run ``argv`` until it printed ``ready``, cancel the run; seconds until it returned."""
    ctx = await make_context(store, {"argv": argv}, grace_s=grace_s)
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await adapter.run(ctx)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while ("stdout", {"line": "ready"}) not in await events_of(store, ctx):  # noqa: ASYNC110
                await anyio.sleep(0.01)  # polling the log, bounded by fail_after
            assert pids_with(marker)  # the command is running and visible from the host
            cancelled_at = time.monotonic()
            scope.cancel()
        elapsed = time.monotonic() - cancelled_at
    assert scope.cancelled_caught  # the cancellation propagated out of run()
    return elapsed


async def test_cancel_stops_the_process(store: Store, adapter: ShellAdapter, marker: str) -> None:
    """Cancelling the run SIGTERMs the command; it is gone well within the grace period."""
    code = "import time; print('ready', flush=True); time.sleep(60)"
    elapsed = await _start_and_cancel(
        store, adapter, ["python3", "-c", code, marker], marker, grace_s=5
    )
    assert elapsed < 1.0
    await wait_until_gone(marker, 0.5)


async def test_cancel_kills_a_process_ignoring_sigterm(
    store: Store, adapter: ShellAdapter, marker: str
) -> None:
    """A command that ignores SIGTERM is SIGKILLed once stop_grace_s has passed."""
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    elapsed = await _start_and_cancel(
        store, adapter, ["python3", "-c", code, marker], marker, grace_s=0.5
    )
    assert 0.45 <= elapsed < 3.0
    await wait_until_gone(marker, 0.5)


async def test_background_children_do_not_outlive_the_run(
    store: Store, adapter: ShellAdapter, marker: str
) -> None:
    """Processes the command left running in the background are killed when it exits."""
    script = f"python3 -c 'import time; time.sleep(60)' {marker} & echo started"
    outcome, events = await run_task(store, adapter, {"argv": ["sh", "-c", script]})
    assert outcome.ok
    assert lines(events, "stdout") == ["started"]
    await wait_until_gone(marker, 2)


@pytest.mark.skipif(not IS_ROOT, reason="only a root worker gives each run a uid of its own")
async def test_setsid_escapees_do_not_outlive_an_unsandboxed_run(
    store: Store, work_root: Path, marker: str
) -> None:
    """Even a child that left the process group (setsid) dies with an unsandboxed run."""
    adapter = ShellAdapter(sandbox="off", work_root=work_root)
    script = (
        f"setsid python3 -c 'import time; time.sleep(60)' {marker} </dev/null >/dev/null 2>&1 &"
    )
    outcome, _ = await run_task(store, adapter, {"argv": ["sh", "-c", script]})
    assert outcome.ok
    await wait_until_gone(marker, 2)


def _replace(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every string, recursively."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: _replace(item, old, new) for key, item in value.items()}
    return value
