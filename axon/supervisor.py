"""``axon serve --workers N``: several API processes behind one listening socket.

One Python process serves about one core's worth of requests and SSE frames.
To use more cores on one host, the parent binds the port once and starts N
``axon serve`` children that inherit the socket (``--fd``) and accept from it
in turn, as gunicorn and uvicorn's own ``--workers`` do. Each child is a
complete API server with its own Redis pools and live tailer; SSE resumption
needs no affinity, since any process serves any cursor.

The parent only supervises:

* it points every child at one ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary
  directory unless the operator set one) so a scrape of ``/metrics``, whichever
  child answers it, merges the counters of all of them (``axon.metrics``);
* a child that dies is replaced (with backoff), and its live gauges are dropped
  with ``mark_process_dead``; a child that dies before it ever listened means
  the configuration is wrong, so the parent stops them all and fails;
* SIGTERM/SIGINT are passed on as SIGTERM: each child drains its own streams
  (clients get ``axon.reconnect``) within ``shutdown_grace_s``, after which the
  stragglers are killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from axon.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
READY_PREFIX = "Axon API listening on "
"""What a child prints on stdout once it accepts connections."""
START_TIMEOUT_S = 60.0
RESTART_BACKOFF_MAX_S = 30.0

_log = logging.getLogger("axon.serve")
_Handler = Callable[[int, FrameType | None], Any] | int | None


class StartFailed(Exception):
    """A child exited before it ever listened: the configuration is wrong."""


class Child:
    """One ``axon serve --fd`` process and the thread forwarding its stdout."""

    def __init__(self, argv: list[str], fd: int, env: dict[str, str]) -> None:
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            argv,
            pass_fds=(fd,),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started = time.monotonic()
        self._forward = threading.Thread(target=self._forward_stdout, daemon=True)
        self._forward.start()

    def _forward_stdout(self) -> None:
        """Copy the child's stdout to ours, noting when it says it listens."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(READY_PREFIX):
                self.ready.set()
                continue  # the parent prints one line for all of them
            sys.stdout.write(f"[{self.process.pid}] {line}")
            sys.stdout.flush()

    def finish(self) -> None:
        """Wait for the stdout forwarder (after the process ended)."""
        self._forward.join(timeout=5)


class Supervisor:
    """The parent of ``axon serve --workers N`` (see the module doc)."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.children: list[Child] = []
        # A plain flag: a signal handler must not take a lock the interrupted code may hold.
        self._stopping = False
        self._own_metrics_dir: str | None = None

    def run(self) -> int:
        """Bind, start the children, supervise until a signal; the exit code."""
        try:
            sock = socket.create_server(
                (self.settings.api_host, self.settings.api_port), backlog=4096
            )
        except OSError as exc:
            print(
                f"axon: error: cannot listen on {self.settings.api_host}:"
                f"{self.settings.api_port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        previous = self._trap_signals()
        try:
            with sock:
                sock.set_inheritable(True)
                env = self._child_env()
                argv = [sys.executable, "-m", "axon", "serve", "--fd", str(sock.fileno())]
                try:
                    self._start_all(argv, sock.fileno(), env)
                except StartFailed as exc:
                    print(f"axon: error: {exc}", file=sys.stderr)
                    self._stop_all()
                    return 1
                if self._stopping:  # a signal while starting
                    self._stop_all()
                    return 0
                port = sock.getsockname()[1]
                url = f"http://{self.settings.api_host}:{port}"
                pids = ", ".join(str(child.process.pid) for child in self.children)
                print(
                    f"{READY_PREFIX}{url} ({self.workers} processes: {pids}; Ctrl-C to stop)",
                    flush=True,
                )
                self._supervise(argv, sock.fileno(), env)
                self._stop_all()
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._own_metrics_dir is not None:
                shutil.rmtree(self._own_metrics_dir, ignore_errors=True)

    def _trap_signals(self) -> dict[signal.Signals, _Handler]:
        def stop(signum: int, frame: FrameType | None) -> None:
            self._stopping = True

        previous: dict[signal.Signals, _Handler] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, stop)
        return previous

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not env.get(MULTIPROC_ENV):
            self._own_metrics_dir = tempfile.mkdtemp(prefix="axon-metrics-")
            env[MULTIPROC_ENV] = self._own_metrics_dir
        return env

    def _start_all(self, argv: list[str], fd: int, env: dict[str, str]) -> None:
        self.children = [Child(argv, fd, env) for _ in range(self.workers)]
        deadline = time.monotonic() + START_TIMEOUT_S
        for child in self.children:
            while not child.ready.wait(0.05):
                if self._stopping:
                    return
                code = child.process.poll()
                if code is not None:
                    child.finish()
                    raise StartFailed(
                        f"an API process exited with status {code} before it listened "
                        "(its error is above)"
                    )
                if time.monotonic() > deadline:
                    raise StartFailed(f"the API processes did not start in {START_TIMEOUT_S:g} s")

    def _supervise(self, argv: list[str], fd: int, env: dict[str, str]) -> None:
        """Replace children that die until told to stop."""
        backoff = 1.0
        while not self._sleep(0.2):
            for index, child in enumerate(self.children):
                code = child.process.poll()
                if code is None:
                    continue
                child.finish()
                self._forget(child.process.pid, env)
                lived = time.monotonic() - child.started
                if lived > 60:
                    backoff = 1.0
                _log.warning(
                    "API process %d exited with status %s after %.1f s; starting another in %.1f s",
                    child.process.pid,
                    code,
                    lived,
                    backoff,
                )
                if self._sleep(backoff):
                    return
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
                self.children[index] = Child(argv, fd, env)

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less when a signal asks to stop; whether to stop."""
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self._stopping

    @staticmethod
    def _forget(pid: int, env: dict[str, str]) -> None:
        """Drop a dead child's live gauges (SSE subscribers) from the merged metrics."""
        with contextlib.suppress(OSError):
            mark_process_dead(pid, env[MULTIPROC_ENV])  # type: ignore[no-untyped-call]

    def _stop_all(self) -> None:
        """SIGTERM every child, give them the drain grace, then kill what is left."""
        print("stopping: draining every API process", flush=True)
        for child in self.children:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + 5
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.warning("API process %d did not drain in time; killing it", child.process.pid)
                child.process.kill()
                child.process.wait()
            child.finish()
