"""How the shell adapter confines a command: rlimits, a throwaway uid, bubblewrap, a work dir.

Pure helpers with no event-loop code: the resource limits (``ShellLimits``),
the pool of unprivileged uids a root worker runs commands as, the private
work dir, the ``bwrap`` command line, and the tiny exec trampoline that
applies all of it in the child before the command (or ``bwrap``) starts.

Why a trampoline: ``anyio.open_process`` has no ``preexec_fn``, and the limits
must be in place before the first instruction of the command runs. The
trampoline is ``python -I -S -c <code>`` started from the worker's own
interpreter; it reads its instructions from one environment variable, sets
the limits, drops to the run's uid, and ``execve``s with exactly the
command's environment. If the exec fails it reports why on the status pipe.

Why a throwaway uid: the kernel does not apply ``RLIMIT_NPROC`` to processes
of the host's root user, and a sandbox that bubblewrap sets up as root maps
the inner uid onto host root, so root-only files under the read-only binds
stay readable. Running the trampoline (and so ``bwrap``) as an otherwise unused
uid makes the sandbox an unprivileged user namespace: the process limit holds
and the host's private files are out of reach.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import msgspec

SANDBOX_WORKDIR = "/work"
"""Where the run's private work dir appears inside the sandbox (also ``HOME``)."""

SANDBOX_UID = 65534
"""The uid (and gid) the command has inside the sandbox ("nobody")."""

DEFAULT_UID_POOL = range(2_100_000_000, 2_100_000_000 + 1_000_000)
"""Host uids a root worker runs commands as, one per concurrent run (no passwd entry needed)."""

DEFAULT_RO_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""Host paths visible read-only in the sandbox; symlinks (merged /usr) are recreated as links."""

EXEC_SPEC_VAR = "AXON_SHELL_EXEC"
"""The trampoline's only input: an environment variable (never in argv, so never in ``ps``)."""

Positive = Annotated[int, msgspec.Meta(ge=1)]


class ShellLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resource limits of one run, applied with ``setrlimit`` (soft = hard) before exec.

    Attributes:
        cpu_s: CPU seconds per process (``RLIMIT_CPU``); SIGXCPU, then SIGKILL a second later.
        memory_mb: address space per process (``RLIMIT_AS``).
        nofile: open files per process (``RLIMIT_NOFILE``).
        fsize_mb: largest file a process may write (``RLIMIT_FSIZE``); beyond it, SIGXFSZ.
        nproc: processes and threads of the run's uid (``RLIMIT_NPROC``).
    """

    cpu_s: Positive = 60
    memory_mb: Positive = 1024
    nofile: Positive = 256
    fsize_mb: Positive = 256
    nproc: Positive = 256


class LimitOverrides(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``limits`` argument of a task: any subset of ``ShellLimits``."""

    cpu_s: Positive | None = None
    memory_mb: Positive | None = None
    nofile: Positive | None = None
    fsize_mb: Positive | None = None
    nproc: Positive | None = None


def merge_limits(
    defaults: ShellLimits, overrides: LimitOverrides | None, ceiling: ShellLimits | None
) -> ShellLimits:
    """The defaults with a task's overrides applied; raises ``ValueError`` above ``ceiling``."""
    if overrides is None:
        return defaults
    changes = {k: v for k, v in msgspec.structs.asdict(overrides).items() if v is not None}
    if ceiling is not None:
        for key, value in changes.items():
            cap = getattr(ceiling, key)
            if value > cap:
                raise ValueError(f"limits.{key} may be at most {cap}, got {value}")
    return msgspec.structs.replace(defaults, **changes)


def rlimits(limits: ShellLimits) -> list[tuple[str, int, int]]:
    """``(RLIMIT_name, soft, hard)`` triples for the trampoline; cores are always off."""
    mib = 1 << 20
    return [
        ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
        ("RLIMIT_AS", limits.memory_mb * mib, limits.memory_mb * mib),
        ("RLIMIT_NOFILE", limits.nofile, limits.nofile),
        ("RLIMIT_FSIZE", limits.fsize_mb * mib, limits.fsize_mb * mib),
        ("RLIMIT_NPROC", limits.nproc, limits.nproc),
        ("RLIMIT_CORE", 0, 0),
    ]


# -- the trampoline ----------------------------------------------------------

TRAMPOLINE = """\
import json, os, resource, signal
import warnings  # os.execvpe imports it lazily: too late once the uid may not read the stdlib
spec = json.loads(os.environ["AXON_SHELL_EXEC"])
fd = spec["status_fd"]
try:
    # Python ignores these at startup, and an ignored signal stays ignored across exec.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    for name, soft, hard in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if spec["uid"] is not None:
        os.setgroups([])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    os.umask(0o077)
    if not spec["keep_status_fd"]:
        os.set_inheritable(fd, False)
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
except OSError as exc:
    message = "cannot run %r: %s" % (spec["argv"][0], exc.strerror or exc)
    os.write(fd, json.dumps({"exec-error": message}).encode() + b"\\n")
    os._exit(127)
"""


def trampoline_argv() -> list[str]:
    """The worker's own interpreter, isolated (``-I``) and without site-packages (``-S``)."""
    return [os.path.realpath(sys.executable), "-I", "-S", "-c", TRAMPOLINE]


def exec_spec(
    *,
    argv: Sequence[str],
    env: dict[str, str],
    limits: ShellLimits,
    uid: int | None,
    status_fd: int,
    keep_status_fd: bool,
) -> dict[str, str]:
    """The trampoline's whole environment: one variable holding its instructions."""
    spec: dict[str, Any] = {
        "argv": list(argv),
        "env": env,
        "rlimits": rlimits(limits),
        "uid": uid,
        "gid": uid,
        "status_fd": status_fd,
        "keep_status_fd": keep_status_fd,
    }
    return {EXEC_SPEC_VAR: json.dumps(spec)}


# -- bubblewrap --------------------------------------------------------------


def bwrap_argv(
    bwrap: str,
    *,
    command: Sequence[str],
    workdir: str,
    cwd: str,
    network: bool,
    status_fd: int,
    ro_paths: Sequence[str] = DEFAULT_RO_PATHS,
    tmp_size_mb: int | None = 256,
) -> list[str]:
    """The ``bwrap`` command line that runs ``command`` confined.

    Read-only system dirs, the host work dir bound read-write at ``/work``, a
    private size-capped tmpfs on ``/tmp``, fresh ``/proc`` and ``/dev``, every
    namespace unshared (the network only while ``network`` is false), an
    unprivileged uid in a new user namespace, no controlling terminal, and
    death with the parent. bwrap reports the sandbox's pid and the command's
    exit code on ``status_fd`` as JSON lines. ``tmp_size_mb=None`` leaves ``/tmp``
    uncapped, for bubblewrap older than 0.7 (which has no ``--size``).
    """
    args = [bwrap]
    for path in ro_paths:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    inner_cwd = str(PurePosixPath(SANDBOX_WORKDIR, cwd)) if cwd else SANDBOX_WORKDIR
    args += [
        "--proc", "/proc",
        "--dev", "/dev",
        *(["--size", str(tmp_size_mb << 20)] if tmp_size_mb is not None else []),
        "--tmpfs", "/tmp",  # noqa: S108 - the sandbox's own tmpfs
        "--bind", workdir, SANDBOX_WORKDIR,
        "--chdir", inner_cwd,
        "--unshare-all",
        *(["--share-net"] if network else []),
        "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--die-with-parent",
        "--new-session",
        "--json-status-fd", str(status_fd),
        "--",
        *command,
    ]  # fmt: skip
    return args


def find_bwrap(path: str | None) -> str | None:
    """The bwrap executable to use: ``path`` if it is executable, else ``bwrap`` on PATH."""
    if path is None:
        return shutil.which("bwrap")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def bwrap_version(output: bytes) -> tuple[int, ...]:
    """``(0, 8, 0)`` from ``bwrap --version`` output (``bubblewrap 0.8.0``); ``()`` if unclear."""
    words = output.decode(errors="replace").split()
    try:
        return tuple(int(part) for part in words[-1].split("."))
    except (IndexError, ValueError):
        return ()


# -- uids and work dirs ------------------------------------------------------


class UidPool:
    """Hands out distinct uids from a range to concurrent runs of one adapter.

    Picks at random, so workers on one host rarely share a uid either; two runs
    that did would only share their ``RLIMIT_NPROC`` budget (each sandbox has
    its own pid namespace, so they cannot see or signal each other).
    """

    def __init__(self, uids: range) -> None:
        if len(uids) == 0 or uids.start < 1 or uids.stop > 2**32 - 1:
            raise ValueError("uid pool must be a non-empty range of valid, non-root uids")
        self._uids = uids
        self._used: set[int] = set()

    def acquire(self) -> int:
        """A uid no other run of this pool holds."""
        if len(self._used) >= len(self._uids):
            raise RuntimeError("every uid of the pool is in use")
        while True:
            uid = self._uids[random.randrange(len(self._uids))]  # noqa: S311 - not security
            if uid not in self._used:
                self._used.add(uid)
                return uid

    def release(self, uid: int) -> None:
        """Return ``uid`` to the pool."""
        self._used.discard(uid)


def pids_of_uid(uid: int) -> list[int]:
    """Host pids of live processes whose real uid is ``uid`` (zombies excluded)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as status:
                fields = dict(
                    line.split(b":", 1) for line in status.read().splitlines() if b":" in line
                )
        except OSError:  # exited meanwhile
            continue
        real_uid = int(fields.get(b"Uid", b"-1 ").split()[0])
        if real_uid == uid and not fields.get(b"State", b"").strip().startswith(b"Z"):
            pids.append(int(entry.name))
    return pids


def kill_uid(uid: int, *, rounds: int = 50) -> int:
    """SIGKILL every process running as ``uid`` until none is left; returns how many.

    A run's uid is its own, so this reaches what a process group cannot: children
    that called ``setsid``. Forking cannot outrun it: a process with SIGKILL
    pending cannot fork, so each round leaves fewer survivors.
    """
    killed = 0
    for _ in range(rounds):
        pids = pids_of_uid(uid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.002)  # let the kernel finish them off before looking again
    return killed


def make_workdir(root: str | None, *, owner: int | None, cwd: str) -> tuple[Path, Path]:
    """A fresh private work dir (0700, owned by ``owner``) and ``cwd`` created inside it.

    Returns ``(workdir, host_cwd)``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="axon-shell-", dir=root))
    try:
        if owner is not None:
            os.chown(workdir, owner, owner)
        here = workdir
        for part in PurePosixPath(cwd).parts if cwd else ():
            here = here / part
            here.mkdir(mode=0o700, exist_ok=True)
            if owner is not None:
                os.chown(here, owner, owner)
    except BaseException:
        remove_tree(workdir)
        raise
    return workdir, here


def remove_tree(path: Path) -> None:
    """Delete ``path``, even where the command took away its own write or search permissions.

    Root needs no help; any other owner first restores ``rwx`` on every directory
    (never through a symlink: the command may have planted links to host dirs).
    """
    if os.geteuid() != 0:
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IRWXU)
        for parent, dirnames, _files in os.walk(path):
            for name in dirnames:
                child = os.path.join(parent, name)
                if not os.path.islink(child):
                    with contextlib.suppress(OSError):
                        os.chmod(child, stat.S_IRWXU)
    shutil.rmtree(path)
