"""Configuration as one explicit, frozen object.

Library code receives a ``Settings`` and never looks at the environment; only
the CLI calls ``Settings.from_env``. Every field has a default that works on a
laptop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

from axon.errors import ConfigError
from axon.events import DEFAULT_MAX_EVENT_BYTES

Durability = Literal["fast", "strict"]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything Axon needs to know about its environment.

    Attributes:
        redis_url: where Redis lives; ``None`` means "start an embedded Valkey".
        redis_cluster: treat ``redis_url`` as a seed node of a Redis Cluster.
        key_prefix: first segment of every key, to share one Redis between deployments.
        max_event_bytes: upper bound of one encoded event.
        max_batch_events: most events one append script call carries.
        max_batch_bytes: most event bytes one append script call carries.
        durability: ``fast`` acknowledges when Redis applied the append; ``strict``
            also waits until the AOF write is fsynced (WAITAOF, Redis >= 7.2 / Valkey).
        durability_replicas: with ``strict``, how many replicas must also have fsynced.
        durability_timeout_ms: with ``strict``, how long to wait for the fsync.
    """

    redis_url: str | None = None
    redis_cluster: bool = False
    key_prefix: str = "axon"
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_batch_events: int = 512
    max_batch_bytes: int = 4 << 20
    durability: Durability = "fast"
    durability_replicas: int = 0
    durability_timeout_ms: int = 2000

    def __post_init__(self) -> None:
        if not self.key_prefix or any(c in self.key_prefix for c in "{} \n"):
            raise ConfigError("key_prefix must be non-empty, without braces or whitespace")
        if self.max_event_bytes < 256:
            raise ConfigError("max_event_bytes must be at least 256")
        if self.max_batch_events < 1:
            raise ConfigError("max_batch_events must be at least 1")
        if self.max_batch_bytes < self.max_event_bytes:
            raise ConfigError("max_batch_bytes must be at least max_event_bytes")
        if self.durability not in ("fast", "strict"):
            raise ConfigError("durability must be 'fast' or 'strict'")
        if self.durability_replicas < 0 or self.durability_timeout_ms < 1:
            raise ConfigError("durability_replicas must be >= 0 and durability_timeout_ms >= 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``REDIS_URL`` and ``AXON_*`` variables; only the CLI calls this.

        Raises:
            ConfigError: a variable is present but malformed.
        """
        env = os.environ if environ is None else environ

        def integer(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from None

        def flag(name: str) -> bool:
            raw = env.get(name, "").strip().lower()
            if raw in ("", "0", "false", "no", "off"):
                return False
            if raw in ("1", "true", "yes", "on"):
                return True
            raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")

        durability = env.get("AXON_DURABILITY", "fast") or "fast"
        if durability not in ("fast", "strict"):
            raise ConfigError(f"AXON_DURABILITY must be 'fast' or 'strict', got {durability!r}")
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            redis_cluster=flag("AXON_REDIS_CLUSTER"),
            key_prefix=env.get("AXON_KEY_PREFIX") or "axon",
            max_event_bytes=integer("AXON_MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES),
            max_batch_events=integer("AXON_MAX_BATCH_EVENTS", 512),
            max_batch_bytes=integer("AXON_MAX_BATCH_BYTES", 4 << 20),
            durability=durability,  # type: ignore[arg-type]
            durability_replicas=integer("AXON_DURABILITY_REPLICAS", 0),
            durability_timeout_ms=integer("AXON_DURABILITY_TIMEOUT_MS", 2000),
        )
