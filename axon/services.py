"""The services an interface (HTTP API, MCP) calls, built once per process.

The endpoints and MCP tools take everything from here: the catalog for task
records, the store for event bytes, the shared live tailer, and receipts.
"""

from __future__ import annotations

from axon.apikeys import KeyStore
from axon.catalog import TaskCatalog
from axon.notes import NoteSigner
from axon.queue import Queue
from axon.receipts import Receipts
from axon.settings import Settings
from axon.sse import StreamOptions
from axon.store import Store
from axon.tailer import Tailer


class Services:
    """What the endpoints use; built by the lifespan, or handed in by tests."""

    def __init__(self, settings: Settings, store: Store, signer: NoteSigner | None = None) -> None:
        self.settings = settings
        self.store = store
        self.receipts = Receipts(store, signer, trusted=settings.receipt_trusted_keys)
        self.queue = Queue(store)
        self.catalog = TaskCatalog(self.queue, idempotency_ttl_s=settings.idempotency_ttl_s)
        self.keys = KeyStore(store, cache_ttl_s=settings.api_key_cache_s)
        self.tailer = Tailer(
            store,
            buffer_events=settings.tail_buffer_events,
            heal_interval_s=settings.tail_heal_interval_s,
            keepalive_s=settings.sse_keepalive_s,
            send_timeout_s=settings.sse_send_timeout_s,
        )
        self.stream_options = StreamOptions(retry_ms=settings.sse_retry_ms)
