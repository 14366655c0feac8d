"""The signal stream that idle workers block on: no sequence of pushes and claims
leaves a blocked worker asleep while a lane holds work."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon.connection import open_store
from axon.queue import Queue
from axon.settings import Settings
from axon.store import now_ms

pytestmark = pytest.mark.anyio

LANES = ("high", "default", "low")


# One step of a scenario: push an id into a lane (at the back or the front), or let a
# worker claim up to n tasks (blocking if it finds none), or let a blocked worker wake.
_steps = st.one_of(
    st.tuples(st.just("push"), st.sampled_from(LANES), st.booleans()),
    st.tuples(st.just("claim"), st.integers(0, 1), st.integers(1, 3)),
    st.tuples(st.just("wake"), st.integers(0, 1), st.just(0)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(_steps, min_size=1, max_size=25))
def test_no_blocked_worker_sleeps_while_a_lane_holds_work(
    make_settings: Callable[..., Settings], steps: list[tuple[str, Any, Any]]
) -> None:
    """Two workers follow the claim loop's protocol (cursor from the signal stream, claim,
    block from the cursor when the lanes were empty); after every step, a blocked worker's
    wait would return at once whenever any lane holds a task."""

    async def scenario() -> None:
        async with open_store(make_settings(key_prefix=f"sig-{uuid.uuid4().hex[:12]}")) as store:
            queue = Queue(store)
            cursors = [await queue.signal_cursor() for _ in range(2)]
            blocked = [False, False]
            deadline = now_ms() + 60_000
            for n, (op, a, b) in enumerate(steps):
                if op == "push":
                    await queue.enqueue(f"t_{n}", a, front=b)
                elif op == "claim" and not blocked[a]:
                    got = await queue.claim_batch(b, claim_number=n, deadline_ms=deadline)
                    blocked[a] = not got
                elif op == "wake" and blocked[a]:
                    woke = await queue.wait_for_work(cursors[a], timeout_ms=1)
                    if woke != cursors[a]:
                        cursors[a], blocked[a] = woke, False
                depth = await queue.depth()
                waiting = sum(depth[lane] for lane in LANES)
                for worker in (0, 1):
                    if blocked[worker] and waiting:
                        woke = await queue.wait_for_work(cursors[worker], timeout_ms=1)
                        assert woke != cursors[worker], f"worker {worker} would sleep on work"

    anyio.run(scenario)
