"""Finding adapters by name: the built-ins plus the ``axon.adapters`` entry points.

A package adds an adapter by declaring, in its ``pyproject.toml``::

    [project.entry-points."axon.adapters"]
    ffmpeg = "mypkg.adapters:FfmpegAdapter"

The entry point names a class (instantiated with no arguments) or an adapter
instance. Built-in names cannot be overridden by entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points

from axon.adapters.base import Adapter, AdapterError
from axon.adapters.docker import DockerAdapter
from axon.adapters.mock import MockAdapter
from axon.adapters.python import PythonAdapter
from axon.adapters.shell import ShellAdapter
from axon.settings import Settings

ENTRY_POINT_GROUP = "axon.adapters"


class AdapterRegistry:
    """Adapters by name."""

    def __init__(self, adapters: Mapping[str, Adapter]) -> None:
        self._adapters = dict(adapters)

    @classmethod
    def default(cls, settings: Settings) -> AdapterRegistry:
        """Built-ins (mock, python, shell, docker) and installed entry points."""
        adapters: dict[str, Adapter] = {
            "mock": MockAdapter(),
            "python": PythonAdapter(),
            "shell": ShellAdapter(sandbox=settings.shell_sandbox),
            "docker": DockerAdapter(),
        }
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in adapters:
                continue
            loaded = entry.load()
            adapter = loaded() if isinstance(loaded, type) else loaded
            if not isinstance(adapter, Adapter):
                raise AdapterError(f"entry point {entry.value!r} is not an Axon adapter")
            adapters[entry.name] = adapter
        return cls(adapters)

    def names(self) -> list[str]:
        """Registered adapter names, sorted."""
        return sorted(self._adapters)

    def get(self, name: str) -> Adapter:
        """The adapter called ``name``.

        Raises:
            AdapterError: no such adapter (not retryable).
        """
        adapter = self._adapters.get(name)
        if adapter is None:
            raise AdapterError(
                f"no adapter named {name!r}; this worker has {', '.join(self.names())}",
                adapter=name,
            )
        return adapter
