"""The ``shell`` adapter: run one command confined, stream its output as events, stop it cleanly.

A run gets a fresh private work dir, a cleared environment, resource limits
and, with bubblewrap, a sandbox (see ``axon.adapters.sandbox``). Every line
the command writes becomes a ``stdout`` or ``stderr`` event as it arrives; the
exit code becomes the ``Outcome``. When the worker cancels the run, the
command's process group gets SIGTERM, then SIGKILL after ``ctx.stop_grace_s``;
the run returns only once nothing of it is left. ``docs/adapters-shell.md``
describes the arguments and guarantees.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from axon.adapters.base import AdapterError, Outcome, TaskContext
from axon.adapters.sandbox import (
    DEFAULT_RO_PATHS,
    DEFAULT_UID_POOL,
    SANDBOX_WORKDIR,
    LimitOverrides,
    ShellLimits,
    UidPool,
    bwrap_argv,
    bwrap_version,
    exec_spec,
    find_bwrap,
    kill_uid,
    make_workdir,
    merge_limits,
    remove_tree,
    trampoline_argv,
)
from axon.errors import ConfigError, EventTooLarge

SandboxMode = Literal["required", "auto", "off"]

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_ENV_ALLOWLIST = frozenset({"LANG", "LC_ALL", "TZ"})
TASK_ENV_PREFIX = "AXON_TASK_"
"""Environment names with this prefix are always allowed."""

MAX_LINE_BYTES = 16 * 1024
"""Longer lines are cut to this many bytes and flagged ``truncated``."""

DRAIN_TIMEOUT_S = 2.0
"""How long an unsandboxed command's pipes may stay open after it exited (held by an escapee)."""

MISSING_BWRAP = (
    "sandbox required but bubblewrap (bwrap) is not installed; install the Debian package "
    "bubblewrap or set AXON_SHELL_SANDBOX=auto/off"
)


class ShellArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ``shell`` task's arguments, as given (see ``docs/adapters-shell.md``)."""

    argv: list[str] | str
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    limits: LimitOverrides | None = None
    network: bool = False
    retry_on_exit_codes: list[int] = msgspec.field(default_factory=list)


class _Command(msgspec.Struct, frozen=True, kw_only=True):
    """A validated run: what to exec, where, with what."""

    argv: list[str]
    cwd: str  # relative to the work dir, normalized; "" for the work dir itself
    env: dict[str, str]
    limits: ShellLimits
    network: bool
    retry_on: frozenset[int]


class ShellAdapter:
    """Runs ``argv`` as a confined process; output lines become events.

    Args:
        sandbox: ``"required"`` refuses to run without bubblewrap; ``"auto"`` runs
            unsandboxed (and says so in a ``log`` event) when it is missing;
            ``"off"`` never sandboxes.
        bwrap_path: the bwrap executable; ``None`` looks up ``bwrap`` on PATH.
        env_allowlist: environment names a task may set (plus any ``AXON_TASK_*``).
        limits: the default resource limits of a run.
        max_limits: the most a task may ask for in ``limits``; ``None`` for no ceiling.
        uid_pool: host uids a root worker runs commands as (one per concurrent run);
            ``None`` keeps root, which leaves ``nproc`` unenforced and lets a sandbox
            read root-only files under its read-only binds.
        work_root: where per-run work dirs are created (default: the system temp dir).
        ro_paths: host paths visible read-only inside the sandbox.
        tmp_size_mb: size of the sandbox's private ``/tmp``.
        max_line_bytes: longer output lines are cut and flagged ``truncated``.
    """

    name = "shell"

    def __init__(
        self,
        *,
        sandbox: SandboxMode = "required",
        bwrap_path: str | None = None,
        env_allowlist: Iterable[str] = DEFAULT_ENV_ALLOWLIST,
        limits: ShellLimits | None = None,
        max_limits: ShellLimits | None = None,
        uid_pool: range | None = DEFAULT_UID_POOL,
        work_root: str | os.PathLike[str] | None = None,
        ro_paths: Iterable[str] = DEFAULT_RO_PATHS,
        tmp_size_mb: int = 256,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        if sandbox not in ("required", "auto", "off"):
            raise ConfigError(f"sandbox must be 'required', 'auto' or 'off', got {sandbox!r}")
        if max_line_bytes < 1 or tmp_size_mb < 1:
            raise ConfigError("max_line_bytes and tmp_size_mb must be positive")
        self.sandbox: SandboxMode = sandbox
        self._bwrap_path = bwrap_path
        self._env_allowlist = frozenset(env_allowlist)
        self._limits = limits if limits is not None else ShellLimits()
        self._max_limits = max_limits
        try:
            self._uids = UidPool(uid_pool) if uid_pool is not None else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._work_root = os.fspath(work_root) if work_root is not None else None
        self._ro_paths = tuple(ro_paths)
        self._tmp_size_mb = tmp_size_mb
        self._sizes_tmpfs: dict[str, bool] = {}  # bwrap path -> has --size (bubblewrap >= 0.7)
        self._max_line = max_line_bytes

    async def run(self, ctx: TaskContext) -> Outcome:
        """Run the task's command to its end; see the module docstring.

        Raises:
            AdapterError: bad arguments, no bubblewrap while it is required, or a
                command that could not be started (never retryable).
        """
        command = self._parse(ctx.args)
        bwrap = self._resolve_bwrap()
        uid = self._uids.acquire() if self._uids is not None and os.geteuid() == 0 else None
        try:
            try:
                workdir, host_cwd = make_workdir(self._work_root, owner=uid, cwd=command.cwd)
            except OSError as exc:
                message = f"could not create the run's work dir: {exc}"
                raise AdapterError(message, retryable=False) from exc
            try:
                if bwrap is None and self.sandbox == "auto":
                    await ctx.log(
                        "bubblewrap (bwrap) is not installed: running unsandboxed, without "
                        "filesystem, network or process isolation (limits, a cleared "
                        "environment and a private work dir still apply)",
                        sandbox="off",
                    )
                return await self._execute(ctx, command, bwrap, uid, workdir, host_cwd)
            finally:
                with anyio.CancelScope(shield=True):
                    await _remove_workdir(ctx, workdir)
        finally:
            if uid is not None and self._uids is not None:
                self._uids.release(uid)

    # -- arguments ----------------------------------------------------------

    def _parse(self, raw: dict[str, Any]) -> _Command:
        try:
            args = msgspec.convert(raw, ShellArgs)
        except msgspec.ValidationError as exc:
            raise AdapterError(f"invalid shell arguments: {exc}", retryable=False) from None
        if args.shell:
            if not isinstance(args.argv, str) or not args.argv:
                raise _bad("with shell: true, argv must be one non-empty command string")
            argv = ["/bin/sh", "-c", args.argv]
        else:
            if isinstance(args.argv, str):
                raise _bad(
                    "argv must be a list of strings (commands run without a shell); "
                    "set shell: true to run a string with /bin/sh -c"
                )
            if not args.argv or not args.argv[0]:
                raise _bad("argv must name a program to run")
            argv = list(args.argv)
        if any("\0" in part for part in argv):
            raise _bad("argv must not contain NUL characters")
        env = self._check_env(args.env)
        try:
            limits = merge_limits(self._limits, args.limits, self._max_limits)
        except ValueError as exc:
            raise _bad(str(exc)) from None
        if any(isinstance(code, bool) for code in args.retry_on_exit_codes):
            raise _bad("retry_on_exit_codes must be a list of integers")
        return _Command(
            argv=argv,
            cwd=_check_cwd(args.cwd),
            env=env,
            limits=limits,
            network=args.network,
            retry_on=frozenset(args.retry_on_exit_codes),
        )

    def _check_env(self, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise _bad(f"invalid environment variable {name!r}")
            if name not in self._env_allowlist and not name.startswith(TASK_ENV_PREFIX):
                allowed = ", ".join(sorted(self._env_allowlist))
                raise _bad(
                    f"environment variable {name!r} is not allowed; allowed: {allowed} "
                    f"and names starting with {TASK_ENV_PREFIX}"
                )
        return env

    def _resolve_bwrap(self) -> str | None:
        """The bwrap to use, or ``None`` to run unsandboxed; raises when it is required."""
        if self.sandbox == "off":
            return None
        bwrap = find_bwrap(self._bwrap_path)
        if bwrap is None and self.sandbox == "required":
            raise AdapterError(MISSING_BWRAP, retryable=False, bwrap_path=self._bwrap_path)
        return bwrap

    async def _has_size_option(self, bwrap: str) -> bool:
        """Whether this bwrap can cap a tmpfs (``--size``, bubblewrap >= 0.7); asked once."""
        known = self._sizes_tmpfs.get(bwrap)
        if known is None:
            try:
                result = await anyio.run_process(
                    [bwrap, "--version"], stdin=subprocess.DEVNULL, env={}, check=False
                )
            except OSError:
                known = False
            else:
                known = bwrap_version(result.stdout) >= (0, 7)
            self._sizes_tmpfs[bwrap] = known
        return known

    # -- running ------------------------------------------------------------

    async def _execute(
        self,
        ctx: TaskContext,
        command: _Command,
        bwrap: str | None,
        uid: int | None,
        workdir: Path,
        host_cwd: Path,
    ) -> Outcome:
        tmp_size_mb = self._tmp_size_mb if bwrap and await self._has_size_option(bwrap) else None
        home = SANDBOX_WORKDIR if bwrap is not None else str(workdir)
        env = {"PATH": BASE_PATH, "HOME": home, "TMPDIR": "/tmp", **command.env}  # noqa: S108
        status_r, status_w = os.pipe()
        try:
            os.set_blocking(status_r, False)
            if bwrap is not None:
                argv = bwrap_argv(
                    bwrap,
                    command=command.argv,
                    workdir=str(workdir),
                    cwd=command.cwd,
                    network=command.network,
                    status_fd=status_w,
                    ro_paths=self._ro_paths,
                    tmp_size_mb=tmp_size_mb,
                )
            else:
                argv = command.argv
            spec = exec_spec(
                argv=argv,
                env=env,
                limits=command.limits,
                uid=uid,
                status_fd=status_w,
                keep_status_fd=bwrap is not None,
            )
            try:
                # Shielded: a cancellation mid-spawn must not leave a process nobody stops;
                # it is delivered right after, inside supervise(), which stops the process.
                with anyio.CancelScope(shield=True):
                    process = await anyio.open_process(
                        trampoline_argv(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        cwd=host_cwd,
                        env=spec,
                        start_new_session=True,
                        pass_fds=(status_w,),
                    )
            except OSError as exc:
                raise AdapterError(f"could not start the command: {exc}", retryable=False) from exc
            finally:
                os.close(status_w)
            run = _Run(
                ctx,
                process,
                status_r,
                sandboxed=bwrap is not None,
                uid=uid,
                max_line=self._max_line,
            )
            code = await run.supervise()
        finally:
            os.close(status_r)
        return _outcome(code, command.retry_on)


class _Run:
    """One started process: its output pumps, its status pipe, and how to stop it.

    Unsandboxed, the trampoline execs the command itself, which leads its own
    process group. Sandboxed, the process is bwrap's monitor; the command runs
    under the sandbox's init (``child_pid``, reported on the status pipe), in
    that init's process group, inside a pid namespace that dies with the init.
    With a uid of its own (root workers), every process left running as that
    uid is killed at the end, whichever group or session it moved to.
    """

    def __init__(
        self,
        ctx: TaskContext,
        process: anyio.abc.Process,
        status_fd: int,
        *,
        sandboxed: bool,
        uid: int | None,
        max_line: int,
    ) -> None:
        self._ctx = ctx
        self._process = process
        self._status_fd = status_fd
        self._status_buf = b""
        self._sandboxed = sandboxed
        self._uid = uid
        self._max_line = max_line
        self._failure: Exception | None = None
        self._open_readers = 3
        self._all_read = anyio.Event()
        self.child_pid: int | None = None
        self.reported_exit: int | None = None
        self.exec_error: str | None = None
        self.last_stderr: str | None = None

    async def supervise(self) -> int:
        """Pump output until the process ended and its pipes closed; returns the exit code.

        On cancellation (or a failed emit) the process is stopped in a shielded
        cleanup before the exception propagates.
        """
        process = self._process
        assert process.stdout is not None
        assert process.stderr is not None
        drained = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._guard, tg.cancel_scope, self._pump, process.stdout, "stdout")
                tg.start_soon(self._guard, tg.cancel_scope, self._pump, process.stderr, "stderr")
                tg.start_soon(self._guard, tg.cancel_scope, self._read_status)
                await process.wait()
                await self._kill_leftovers()
                with anyio.move_on_after(DRAIN_TIMEOUT_S) as drain:
                    await self._all_read.wait()
                drained = not drain.cancelled_caught
                tg.cancel_scope.cancel()
            if self._failure is not None:
                raise self._failure
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop(self._ctx.stop_grace_s)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()
        if not drained:
            await self._ctx.log(
                "stopped reading output: a process outside the command's process group "
                "still holds its stdout/stderr open"
            )
        return self._exit_code()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM the command's process group, SIGKILL after ``grace_s``, and reap."""
        self._drain_status()
        if self._process.returncode is None and grace_s > 0 and self._terminate():
            with anyio.move_on_after(grace_s):
                await self._process.wait()
        self._kill()
        await self._process.wait()
        await self._kill_leftovers()

    async def _kill_leftovers(self) -> None:
        """After the main process ended: kill what it left behind (its group, its uid)."""
        if not self._sandboxed:  # a sandbox's pid namespace died with its init
            self._signal_group(self._process.pid, signal.SIGKILL)
        if self._uid is not None:
            await anyio.to_thread.run_sync(kill_uid, self._uid)

    def _terminate(self) -> bool:
        if not self._sandboxed:
            self._signal_group(self._process.pid, signal.SIGTERM)
            return True
        init = self._sandbox_init()
        if init is None:  # the sandbox is not set up yet: nothing to ask nicely
            return False
        # The command shares the init's group; the init (pid 1 of its namespace) has
        # no SIGTERM handler, so only the command and its children see the signal.
        self._signal_group(init, signal.SIGTERM)
        return True

    def _kill(self) -> None:
        if not self._sandboxed:
            self._signal_group(self._process.pid, signal.SIGKILL)
            return
        init = self._sandbox_init()
        if init is not None:  # the init's death takes its whole pid namespace along
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
        if self._process.returncode is None:  # bwrap itself (--die-with-parent covers a race)
            self._signal_group(self._process.pid, signal.SIGKILL)

    def _sandbox_init(self) -> int | None:
        """The sandbox init's host pid, while it is still bwrap's child (never a reused pid)."""
        if self.child_pid is None or self._process.returncode is not None:
            return None
        try:
            with open(f"/proc/{self.child_pid}/stat", "rb") as stat:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return self.child_pid if parent == self._process.pid else None

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    # -- readers --------------------------------------------------------------

    async def _guard(
        self, scope: anyio.CancelScope, reader: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Run one reader; its failure (say, a fenced emit) stops the run."""
        try:
            await reader(*args)
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
            scope.cancel()
        self._open_readers -= 1
        if self._open_readers == 0:
            self._all_read.set()

    async def _pump(self, stream: anyio.abc.ByteReceiveStream, kind: str) -> None:
        """Emit each line of ``stream`` as it arrives; over-long lines are cut once."""
        limit = self._max_line
        buf = bytearray()
        skipping = False  # inside an over-long line whose head was already emitted
        async for chunk in stream:
            buf += chunk
            while (end := buf.find(b"\n")) >= 0:
                line = bytes(buf[:end])
                del buf[: end + 1]
                if skipping:
                    skipping = False
                elif len(line) > limit:
                    await self._emit_line(kind, line[:limit], truncated=True)
                else:
                    await self._emit_line(kind, line, truncated=False)
            if len(buf) > limit:
                if not skipping:
                    await self._emit_line(kind, bytes(buf[:limit]), truncated=True)
                    skipping = True
                buf.clear()
        if buf and not skipping:
            await self._emit_line(kind, bytes(buf), truncated=False)

    async def _emit_line(self, kind: str, raw: bytes, *, truncated: bool) -> None:
        # A cut line may end inside a UTF-8 sequence: a non-final decode drops that tail.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(raw, final=not truncated)
        if kind == "stderr":
            self.last_stderr = text
        while True:
            data: dict[str, Any] = {"line": text}
            if truncated:
                data["truncated"] = True
            try:
                await self._ctx.emit(kind, data)
                return
            except EventTooLarge:  # the store's event size limit is smaller (escapes count)
                if len(text) <= 1:
                    raise
                text, truncated = text[: len(text) // 2], True

    async def _read_status(self) -> None:
        """Collect the JSON lines bwrap (or the trampoline) writes on the status pipe."""
        while True:
            await anyio.wait_readable(self._status_fd)
            try:
                data = os.read(self._status_fd, 4096)
            except BlockingIOError:
                continue
            if not data:
                return
            self._feed_status(data)

    def _drain_status(self) -> None:
        """Read whatever status is already written (after the reader was cancelled)."""
        with contextlib.suppress(OSError):
            while data := os.read(self._status_fd, 4096):
                self._feed_status(data)

    def _feed_status(self, data: bytes) -> None:
        *lines, self._status_buf = (self._status_buf + data).split(b"\n")
        for line in lines:
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if not isinstance(status, dict):
                continue
            if isinstance(status.get("child-pid"), int):
                self.child_pid = status["child-pid"]
            if isinstance(status.get("exit-code"), int):
                self.reported_exit = status["exit-code"]
            if isinstance(status.get("exec-error"), str):
                self.exec_error = status["exec-error"]

    # -- the end --------------------------------------------------------------

    def _exit_code(self) -> int:
        """The command's exit code; negative for a signal (bwrap reports those as 128+n)."""
        returncode = self._process.returncode
        assert returncode is not None
        if self.exec_error is not None:
            raise AdapterError(self.exec_error, retryable=False)
        if not self._sandboxed or returncode < 0:
            return returncode
        if self.reported_exit is None:  # bwrap gave up before the command ran
            reason = self.last_stderr or f"bwrap exited with status {returncode}"
            message = f"the sandbox could not start the command: {reason}"
            raise AdapterError(message, retryable=False)
        code = self.reported_exit
        if 128 < code < 128 + signal.NSIG:
            return -(code - 128)
        return code


def _outcome(code: int, retry_on: frozenset[int]) -> Outcome:
    if code == 0:
        return Outcome(ok=True, data={"exit_code": 0})
    retryable = code in retry_on
    if code < 0:
        name = _signal_name(-code)
        data = {"exit_code": code, "signal": name, "error": f"command was killed by {name}"}
        return Outcome(ok=False, data=data, retryable=retryable)
    data = {"exit_code": code, "error": f"command exited with code {code}"}
    return Outcome(ok=False, data=data, retryable=retryable)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _check_cwd(cwd: str | None) -> str:
    """``cwd`` normalized, relative to the work dir; raises for absolute paths and ``..``."""
    if cwd is None:
        return ""
    path = PurePosixPath(cwd)
    if "\0" in cwd or path.is_absolute() or ".." in path.parts:
        raise _bad(f"cwd must be a path inside the work dir (relative, without '..'), got {cwd!r}")
    return "" if str(path) == "." else str(path)


def _bad(message: str) -> AdapterError:
    return AdapterError(f"invalid shell arguments: {message}", retryable=False)


async def _remove_workdir(ctx: TaskContext, workdir: Path) -> None:
    try:
        await anyio.to_thread.run_sync(remove_tree, workdir)
    except OSError as exc:  # never mask the run's outcome (or its cancellation)
        with contextlib.suppress(Exception):
            await ctx.log("could not remove the run's work dir", path=str(workdir), error=str(exc))
