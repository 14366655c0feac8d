"""Configuration as one explicit, frozen object.

Library code receives a ``Settings`` and never looks at the environment; only
the CLI calls ``Settings.from_env``. Every field has a default that works on a
laptop.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from axon.errors import ConfigError
from axon.events import DEFAULT_MAX_EVENT_BYTES

Durability = Literal["fast", "strict"]
SandboxMode = Literal["required", "auto", "off"]
LogFormat = Literal["json", "text"]

LANE_PATTERN = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")


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
        lanes: lane names, highest priority first.
        lane_fairness: every Nth claim of a worker scans lanes lowest first, so a
            busy high lane cannot starve the others (1 disables priority).
        worker_concurrency: tasks one worker runs at once.
        worker_claim_groups: claim groups a worker splits its concurrency into, each
            with its own claim loop and Redis connection, so one group's round trip
            overlaps the others' work (``axon.worker``); 1..8, at most the concurrency.
        heartbeat_interval_s / lease_timeout_s: how often a worker renews a lease,
            and how long a lease lasts without renewal before it may be reclaimed.
        watchdog_interval_s: how often a worker looks for expired leases and due retries.
        default_timeout_s: a task's run time limit when it sets none.
        cancel_grace_s / timeout_grace_s / shutdown_grace_s: how long a stopped run
            may take to end gracefully before it is killed, per reason.
        shell_sandbox: ``required`` (refuse without bubblewrap), ``auto`` (sandbox
            when available) or ``off``.
        redis_max_connections: connections per pool on a single server (each process
            has a command pool and a blocking pool); a request that finds them all
            busy waits for one. Cluster pools keep redis-py's own limit.
        api_host / api_port: where ``axon serve`` listens.
        api_workers: API processes ``axon serve`` runs on that port (``axon.supervisor``).
        max_body_bytes: largest request body the API accepts (413 beyond).
        http_keepalive_s: how long the API keeps an idle HTTP/1.1 connection open.
            Longer than clients' and load balancers' own idle timeouts (httpx 5 s,
            most balancers 60 s), so the client always closes first: a server that
            closes a connection just as a client reuses it fails that request.
        sse_keepalive_s: idle time after which an SSE stream sends a keep-alive comment.
        sse_retry_ms: the ``retry:`` hint SSE clients get for reconnecting.
        sse_send_timeout_s: a client that accepts no bytes for this long is disconnected.
        tail_buffer_events: recent events kept per watched task for live subscribers;
            a subscriber further behind than this is told it lagged and disconnected.
        tail_heal_interval_s: how often live tails re-read Redis in case a
            notification was lost.
        api_key_cache_s: how long a verified API key is trusted without asking Redis
            (a revocation reaches other API processes within this time).
        idempotency_ttl_s: how long an ``Idempotency-Key`` is remembered.
        mcp_max_waiting: MCP ``stream_task`` long-polls one tenant may have waiting at
            once in one API process (more get ``RATE_LIMITED``).
        cors_origins: browser origins (``https://app.example``) allowed to call the
            API from another origin; empty (the default) sends no CORS headers.
        data_dir: local state of ``axon dev``/``serve``/``compactor``: the receipt
            signing key and, by default, the archive.
        archive_dir: where the compactor writes archive blobs and servers read them
            (default ``<data_dir>/archive``); every server and compactor must share it.
        receipt_key_file: the Ed25519 receipt signing key (default ``<data_dir>/receipt.key``).
        receipt_trusted_keys: earlier receipt verifier keys still published (key rotation).
        compact_retention_s: how long a finished task's events stay in Redis before
            the compactor archives them.
        compact_tenant_retention: per-tenant overrides of ``compact_retention_s``.
        compact_interval_s: how often the compactor looks for work.
        compact_live_max_events / compact_live_keep_events: a running task with more
            events in Redis than the first has all but its last ``keep`` archived.
        compact_lock_s: how long one compactor replica may hold a task before another
            may take over (a replica that died mid-task).
        log_format: ``json`` (one object per line) or ``text``; None lets the command
            choose (text for ``axon dev``, JSON for the others).
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        metrics_enabled: serve ``GET /metrics`` on the API (meant for a private network).
        metrics_token: when set, ``/metrics`` (API, worker, compactor) requires
            ``Authorization: Bearer <token>``.
        metrics_host: where the worker's and the compactor's metrics endpoints listen.
        worker_metrics_port / compactor_metrics_port: their ports; None (the default)
            serves none, 0 picks a free port.
        otel_enabled: record OpenTelemetry traces and export them over OTLP/HTTP.
        otel_endpoint: the OTLP/HTTP collector (``http://host:4318``); None uses the
            standard ``OTEL_EXPORTER_OTLP_*`` variables.
        otel_service_name: the ``service.name`` of the exported spans.
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
    lanes: tuple[str, ...] = ("high", "default", "low")
    lane_fairness: int = 8
    worker_concurrency: int = 10
    worker_claim_groups: int = 2
    heartbeat_interval_s: float = 2.0
    lease_timeout_s: float = 10.0
    watchdog_interval_s: float = 1.0
    default_timeout_s: float = 3600.0
    cancel_grace_s: float = 0.2
    timeout_grace_s: float = 5.0
    shutdown_grace_s: float = 10.0
    shell_sandbox: SandboxMode = "required"
    redis_max_connections: int = 64
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 1
    max_body_bytes: int = 1 << 20
    http_keepalive_s: int = 65
    sse_keepalive_s: float = 15.0
    sse_retry_ms: int = 2000
    sse_send_timeout_s: float = 30.0
    tail_buffer_events: int = 1024
    tail_heal_interval_s: float = 10.0
    api_key_cache_s: float = 5.0
    idempotency_ttl_s: int = 86_400
    mcp_max_waiting: int = 64
    cors_origins: tuple[str, ...] = ()
    data_dir: str = ".axon"
    archive_dir: str | None = None
    receipt_key_file: str | None = None
    receipt_trusted_keys: tuple[str, ...] = ()
    compact_retention_s: float = 3600.0
    compact_tenant_retention: tuple[tuple[str, float], ...] = ()
    compact_interval_s: float = 30.0
    compact_live_max_events: int = 100_000
    compact_live_keep_events: int = 10_000
    compact_lock_s: float = 300.0
    log_format: LogFormat | None = None
    log_level: str = "info"
    metrics_enabled: bool = True
    metrics_token: str | None = None
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = None
    compactor_metrics_port: int | None = None
    otel_enabled: bool = False
    otel_endpoint: str | None = None
    otel_service_name: str = "axon"

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
        if not self.lanes or len(set(self.lanes)) != len(self.lanes):
            raise ConfigError("lanes must be a non-empty list of distinct names")
        for lane in self.lanes:
            if LANE_PATTERN.fullmatch(lane) is None:
                raise ConfigError(f"lane {lane!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-'")
        if self.lane_fairness < 1 or self.worker_concurrency < 1:
            raise ConfigError("lane_fairness and worker_concurrency must be at least 1")
        if not 1 <= self.worker_claim_groups <= 8:
            raise ConfigError("worker_claim_groups must be between 1 and 8")
        if not 0 < self.heartbeat_interval_s < self.lease_timeout_s:
            raise ConfigError("heartbeat_interval_s must be positive and below lease_timeout_s")
        for name in (
            "watchdog_interval_s",
            "default_timeout_s",
            "cancel_grace_s",
            "timeout_grace_s",
            "shutdown_grace_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if self.shell_sandbox not in ("required", "auto", "off"):
            raise ConfigError("shell_sandbox must be 'required', 'auto' or 'off'")
        if not 0 <= self.api_port <= 65535:
            raise ConfigError("api_port must be between 0 and 65535")
        for name in (
            "redis_max_connections",
            "max_body_bytes",
            "sse_retry_ms",
            "tail_buffer_events",
            "idempotency_ttl_s",
            "mcp_max_waiting",
            "http_keepalive_s",
            "api_workers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("sse_keepalive_s", "sse_send_timeout_s", "tail_heal_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        for origin in self.cors_origins:
            if origin != "*" and re.fullmatch(r"https?://[^/\s]+", origin) is None:
                raise ConfigError(
                    f"cors origin {origin!r}: use scheme://host[:port] (no path) or '*'"
                )
        if self.api_key_cache_s < 0:
            raise ConfigError("api_key_cache_s must be >= 0 (0 disables the cache)")
        if not self.data_dir:
            raise ConfigError("data_dir must not be empty")
        if self.compact_retention_s < 0 or any(s < 0 for _, s in self.compact_tenant_retention):
            raise ConfigError("compaction retention must be >= 0 seconds")
        if not self.compact_interval_s > 0 or not self.compact_lock_s > 0:
            raise ConfigError("compact_interval_s and compact_lock_s must be positive")
        if not 0 <= self.compact_live_keep_events < self.compact_live_max_events:
            raise ConfigError(
                "compact_live_keep_events must be >= 0 and below compact_live_max_events"
            )
        if self.log_format not in (None, "json", "text"):
            raise ConfigError("log_format must be 'json' or 'text'")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")
        if self.metrics_token is not None and len(self.metrics_token) < 16:
            raise ConfigError("metrics_token must be at least 16 characters")
        for port in (self.worker_metrics_port, self.compactor_metrics_port):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError("metrics ports must be between 0 and 65535")

    def archive_path(self) -> Path:
        """The archive directory: ``archive_dir``, else ``<data_dir>/archive``."""
        return Path(self.archive_dir) if self.archive_dir else Path(self.data_dir) / "archive"

    def receipt_key_path(self) -> Path:
        """The receipt signing key file: ``receipt_key_file``, else ``<data_dir>/receipt.key``."""
        if self.receipt_key_file:
            return Path(self.receipt_key_file)
        return Path(self.data_dir) / "receipt.key"

    def retention_s(self, tenant: str) -> float:
        """How long a finished task of ``tenant`` keeps its events in Redis."""
        for name, seconds in self.compact_tenant_retention:
            if name == tenant:
                return seconds
        return self.compact_retention_s

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

        def optional_integer(name: str) -> int | None:
            return integer(name, 0) if env.get(name, "").strip() else None

        def flag(name: str) -> bool:
            raw = env.get(name, "").strip().lower()
            if raw in ("", "0", "false", "no", "off"):
                return False
            if raw in ("1", "true", "yes", "on"):
                return True
            raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None

        def choice(name: str, default: str, options: tuple[str, ...]) -> str:
            raw = env.get(name) or default
            if raw not in options:
                raise ConfigError(f"{name} must be one of {', '.join(options)}; got {raw!r}")
            return raw

        def words(name: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())

        def retention() -> tuple[tuple[str, float], ...]:
            pairs = []
            for item in words("AXON_COMPACT_TENANT_RETENTION"):
                tenant, _, raw = item.partition("=")
                try:
                    pairs.append((tenant.strip(), float(raw)))
                except ValueError:
                    raise ConfigError(
                        "AXON_COMPACT_TENANT_RETENTION must look like 'acme=600,bigco=86400', "
                        f"got {item!r}"
                    ) from None
            return tuple(pairs)

        lanes = words("AXON_LANES")
        durability = env.get("AXON_DURABILITY", "fast") or "fast"
        if durability not in ("fast", "strict"):
            raise ConfigError(f"AXON_DURABILITY must be 'fast' or 'strict', got {durability!r}")
        log_format = (env.get("AXON_LOG_FORMAT") or "").strip().lower() or None
        if log_format not in (None, "json", "text"):
            raise ConfigError(f"AXON_LOG_FORMAT must be 'json' or 'text', got {log_format!r}")
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
            lanes=lanes or ("high", "default", "low"),
            lane_fairness=integer("AXON_LANE_FAIRNESS", 8),
            worker_concurrency=integer("AXON_WORKER_CONCURRENCY", 10),
            worker_claim_groups=integer("AXON_WORKER_CLAIM_GROUPS", 2),
            heartbeat_interval_s=number("AXON_HEARTBEAT_INTERVAL_S", 2.0),
            lease_timeout_s=number("AXON_LEASE_TIMEOUT_S", 10.0),
            watchdog_interval_s=number("AXON_WATCHDOG_INTERVAL_S", 1.0),
            default_timeout_s=number("AXON_DEFAULT_TIMEOUT_S", 3600.0),
            cancel_grace_s=number("AXON_CANCEL_GRACE_S", 0.2),
            timeout_grace_s=number("AXON_TIMEOUT_GRACE_S", 5.0),
            shutdown_grace_s=number("AXON_SHUTDOWN_GRACE_S", 10.0),
            shell_sandbox=choice(  # type: ignore[arg-type]
                "AXON_SHELL_SANDBOX", "required", ("required", "auto", "off")
            ),
            redis_max_connections=integer("AXON_REDIS_MAX_CONNECTIONS", 64),
            api_host=env.get("AXON_API_HOST") or "127.0.0.1",
            api_port=integer("AXON_API_PORT", 8000),
            api_workers=integer("AXON_API_WORKERS", 1),
            max_body_bytes=integer("AXON_MAX_BODY_BYTES", 1 << 20),
            http_keepalive_s=integer("AXON_HTTP_KEEPALIVE_S", 65),
            sse_keepalive_s=number("AXON_SSE_KEEPALIVE_S", 15.0),
            sse_retry_ms=integer("AXON_SSE_RETRY_MS", 2000),
            sse_send_timeout_s=number("AXON_SSE_SEND_TIMEOUT_S", 30.0),
            tail_buffer_events=integer("AXON_TAIL_BUFFER_EVENTS", 1024),
            tail_heal_interval_s=number("AXON_TAIL_HEAL_INTERVAL_S", 10.0),
            api_key_cache_s=number("AXON_API_KEY_CACHE_S", 5.0),
            idempotency_ttl_s=integer("AXON_IDEMPOTENCY_TTL_S", 86_400),
            mcp_max_waiting=integer("AXON_MCP_MAX_WAITING", 64),
            cors_origins=words("AXON_CORS_ORIGINS"),
            data_dir=env.get("AXON_DATA_DIR") or ".axon",
            archive_dir=env.get("AXON_ARCHIVE_DIR") or None,
            receipt_key_file=env.get("AXON_RECEIPT_KEY_FILE") or None,
            receipt_trusted_keys=words("AXON_RECEIPT_TRUSTED_KEYS"),
            compact_retention_s=number("AXON_COMPACT_RETENTION_S", 3600.0),
            compact_tenant_retention=retention(),
            compact_interval_s=number("AXON_COMPACT_INTERVAL_S", 30.0),
            compact_live_max_events=integer("AXON_COMPACT_LIVE_MAX_EVENTS", 100_000),
            compact_live_keep_events=integer("AXON_COMPACT_LIVE_KEEP_EVENTS", 10_000),
            compact_lock_s=number("AXON_COMPACT_LOCK_S", 300.0),
            log_format=log_format,  # type: ignore[arg-type]
            log_level=(env.get("AXON_LOG_LEVEL") or "info").lower(),
            metrics_enabled=flag("AXON_METRICS") if env.get("AXON_METRICS", "").strip() else True,
            metrics_token=env.get("AXON_METRICS_TOKEN") or None,
            metrics_host=env.get("AXON_METRICS_HOST") or "127.0.0.1",
            worker_metrics_port=optional_integer("AXON_WORKER_METRICS_PORT"),
            compactor_metrics_port=optional_integer("AXON_COMPACTOR_METRICS_PORT"),
            otel_enabled=flag("AXON_OTEL") or bool(env.get("AXON_OTEL_ENDPOINT")),
            otel_endpoint=env.get("AXON_OTEL_ENDPOINT") or None,
            otel_service_name=env.get("OTEL_SERVICE_NAME") or "axon",
        )
