"""Axon: durable background tasks for AI agents, as hash-chained event logs on Redis Streams."""

from axon._version import __version__
from axon.adapters.python import Retry, task
from axon.chain import GENESIS, ChainHead, ChainVerifier, verify_chain
from axon.client import Client, SyncClient
from axon.client_events import TaskEvent
from axon.errors import (
    ApiError,
    AppendRejected,
    AxonError,
    ChainBroken,
    ConfigError,
    DurabilityTimeout,
    DurabilityUnsupported,
    EventsUnavailable,
    EventTooLarge,
    Fenced,
    IllegalTransition,
    InvalidArgument,
    InvalidEvent,
    InvalidTaskId,
    InvalidTaskSpec,
    ServerUnreachable,
    StaleHead,
    StoreUnavailable,
    TaskExists,
    TaskNotFound,
    TaskTerminal,
)
from axon.events import GENESIS_HASH, Event, decode_event, event_hash
from axon.records import TaskRecord, TaskSpec, TaskState
from axon.settings import Settings
from axon.store import Store, StoredEvent, Transition
from axon.writer import EventWriter, WriterStatistics

__all__ = [
    "GENESIS",
    "GENESIS_HASH",
    "ApiError",
    "AppendRejected",
    "AxonError",
    "ChainBroken",
    "ChainHead",
    "ChainVerifier",
    "Client",
    "ConfigError",
    "DurabilityTimeout",
    "DurabilityUnsupported",
    "Event",
    "EventTooLarge",
    "EventWriter",
    "EventsUnavailable",
    "Fenced",
    "IllegalTransition",
    "InvalidArgument",
    "InvalidEvent",
    "InvalidTaskId",
    "InvalidTaskSpec",
    "Retry",
    "ServerUnreachable",
    "Settings",
    "StaleHead",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "SyncClient",
    "TaskEvent",
    "TaskExists",
    "TaskNotFound",
    "TaskRecord",
    "TaskSpec",
    "TaskState",
    "TaskTerminal",
    "Transition",
    "WriterStatistics",
    "__version__",
    "decode_event",
    "event_hash",
    "task",
    "verify_chain",
]
