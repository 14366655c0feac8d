"""SSE frames rendered by the script in Redis equal the frames built in Python, byte for byte."""

from __future__ import annotations

import pytest

from axon.errors import EventsUnavailable
from axon.queue import Queue
from axon.records import TaskSpec, TaskState
from axon.sse import frames_of
from axon.store import Store
from axon.writer import EventWriter

pytestmark = pytest.mark.anyio


async def test_script_frames_equal_python_frames(store: Store) -> None:
    """Pages rendered in Redis are exactly the Python frames of the same events, stop
    after the terminal event, and report the last seq (unicode and big data included)."""
    record = await Queue(store).submit(TaskSpec(tenant="acme", adapter="mock"))
    writer = EventWriter(store, record.id, epoch=0)
    for i in range(30):
        await writer.emit("step", {"i": i, "text": 'é\u2028𝄞\n"', "big": "x" * (i * 500)})
    await writer.transition(TaskState.CANCELED, "canceled")
    for after, limit in [(0, 1000), (0, 7), (5, 10), (25, 100), (31, 5)]:
        frames, last, terminal = await store.read_frames(record.id, after_seq=after, limit=limit)
        raws = await store.read_raw(record.id, after_seq=after, limit=limit)
        assert (frames, last, terminal) == frames_of(after, raws)
    assert (await store.read_frames(record.id, after_seq=32)) == (b"", 32, False)


async def test_script_frames_report_trimmed_events(store: Store) -> None:
    """A cursor before trimmed events is EventsUnavailable, never a silent skip."""
    record = await Queue(store).submit(TaskSpec(tenant="acme", adapter="mock"))
    writer = EventWriter(store, record.id, epoch=0)
    for i in range(10):
        await writer.emit("step", {"i": i})
    await store.redis.xtrim(store.keys.events(record.id), minid="5-0", approximate=False)
    with pytest.raises(EventsUnavailable):
        await store.read_frames(record.id, after_seq=2)
    frames, last, _ = await store.read_frames(record.id, after_seq=4)
    assert frames.startswith(b"id: 5\n")
    assert last == 11
