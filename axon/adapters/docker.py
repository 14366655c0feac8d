"""The ``docker`` adapter: run an image through the docker CLI.

Args: ``image`` (required), ``command`` (list of strings, optional), ``env``
(object of strings, optional). The container is named ``axon-<task id>``, its
output lines become ``stdout`` events, its exit code the outcome; on cancel or
timeout it is removed with ``docker rm -f``. Where no Docker engine answers
(``docker info`` fails), the run fails at once with a clear, non-retryable
error instead of pretending.
"""

from __future__ import annotations

import shutil
from typing import Any

import anyio

from axon.adapters.base import AdapterError, Outcome, TaskContext


class DockerAdapter:
    """Runs containers with the docker CLI."""

    name = "docker"

    def __init__(self, docker: str = "docker") -> None:
        self._docker = docker

    async def available(self) -> str | None:
        """None if a Docker engine answers, else the reason it does not."""
        if shutil.which(self._docker) is None:
            return f"the {self._docker!r} CLI is not installed"
        with anyio.move_on_after(5):
            result = await anyio.run_process(
                [self._docker, "info", "--format", "{{.ServerVersion}}"], check=False
            )
            if result.returncode == 0:
                return None
            return "no Docker engine is reachable: " + result.stderr.decode(errors="replace")[:300]
        return "no Docker engine answered within 5 s"

    async def run(self, ctx: TaskContext) -> Outcome:
        image = ctx.args.get("image")
        command = ctx.args.get("command", [])
        env = ctx.args.get("env", {})
        if not isinstance(image, str) or not image:
            raise AdapterError("docker: args need 'image'", field="image")
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise AdapterError("docker: 'command' must be a list of strings", field="command")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise AdapterError("docker: 'env' must map names to strings", field="env")
        problem = await self.available()
        if problem is not None:
            raise AdapterError(f"docker adapter not configured: {problem}", retryable=False)
        name = f"axon-{ctx.task_id}"
        argv = [self._docker, "run", "--rm", "--name", name]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        argv += [image, *command]
        process = await anyio.open_process(argv, stdin=None)
        try:
            assert process.stdout is not None
            buffer = b""
            async for chunk in process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    await ctx.emit("stdout", {"line": line.decode(errors="replace")})
            if buffer:
                await ctx.emit("stdout", {"line": buffer.decode(errors="replace")})
            code = await process.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.run_process([self._docker, "rm", "-f", name], check=False)
                process.kill()
                await process.wait()
            raise
        data: dict[str, Any] = {"exit_code": code}
        return Outcome(ok=code == 0, data=data)
