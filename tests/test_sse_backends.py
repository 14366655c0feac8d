"""The core SSE behaviour on Redis 7 and on a Redis Cluster (the live tail's Pub/Sub
subscribes on one node of the cluster and must still hear every shard's appends)."""

from __future__ import annotations

import pytest

from tests.test_sse import (
    test_backfill_then_live_then_end_after_terminal,
    test_resume_with_last_event_id_gets_every_event_once,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("backend", ["redis7", "cluster"], indirect=True),
]

__all__ = [
    "test_backfill_then_live_then_end_after_terminal",
    "test_resume_with_last_event_id_gets_every_event_once",
]
