"""Verifying a task's hash chain from event bytes alone.

Pure and I/O-free, so an auditor, a client or a test can run it on bytes that
came from anywhere: Redis, an SSE stream, an export file. Verification walks
the events in order and checks, for each one, that

* it is a single-line, well-formed event object (contract 1),
* it belongs to the expected task,
* its ``seq`` is the next one (no gap, no duplicate, no reordering),
* its ``prev`` is the SHA-256 of the bytes of the event before it,

and optionally that the last hash equals a head the caller trusts (a task
record, a signed checkpoint). Without that final check, a chain that lost
its tail still looks valid: a prefix of a chain is a chain.

Where a chain breaks is reported precisely: ``ChainBroken.index`` is the
position in the input and ``ChainBroken.seq`` the seq expected there. An event
whose own fields were altered is reported at its own position; an event whose
bytes were altered in a way that keeps it well-formed is caught one position
later, where the next ``prev`` no longer matches (or at the head check).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from axon.errors import ChainBroken, InvalidEvent
from axon.events import GENESIS_HASH, Event, decode_event, event_hash


class ChainHead(msgspec.Struct, frozen=True, kw_only=True):
    """The last verified position of a chain: its seq and the hash of its bytes."""

    seq: int
    hash: str


GENESIS = ChainHead(seq=0, hash=GENESIS_HASH)
"""The head of an empty chain."""


class ChainVerifier:
    """Incremental verifier: feed event bytes in order, one at a time.

    Useful when events arrive in pages or over a stream; ``verify_chain`` wraps
    it for a complete sequence. Start from ``GENESIS`` or from a trusted head
    (for instance a checkpoint) to verify a suffix.
    """

    __slots__ = ("_count", "_head", "_task")

    def __init__(self, *, task: str | None = None, start: ChainHead = GENESIS) -> None:
        self._task = task
        self._head = start
        self._count = 0

    @property
    def head(self) -> ChainHead:
        """The head after the last accepted event."""
        return self._head

    @property
    def count(self) -> int:
        """How many events have been accepted so far."""
        return self._count

    def feed(self, raw: bytes) -> Event:
        """Check one event against the chain so far and advance the head.

        Raises:
            ChainBroken: the event does not continue the chain; the head is unchanged.
        """
        index = self._count
        expected_seq = self._head.seq + 1

        def broken(reason: str, message: str) -> ChainBroken:
            return ChainBroken(
                f"chain broken at seq {expected_seq} (input position {index}): {message}",
                index=index,
                seq=expected_seq,
                reason=reason,
            )

        if b"\n" in raw or b"\r" in raw:
            raise broken("malformed", "event bytes contain a line break")
        try:
            event = decode_event(raw)
        except InvalidEvent as exc:
            raise broken("malformed", exc.message) from None
        if self._task is None:
            self._task = event.task
        elif event.task != self._task:
            raise broken("wrong_task", f"event belongs to task {event.task!r}, not {self._task!r}")
        if event.seq != expected_seq:
            if event.seq <= self._head.seq:
                raise broken("duplicate_or_reordered", f"got seq {event.seq} again or too early")
            raise broken("gap", f"got seq {event.seq}; {event.seq - expected_seq} event(s) missing")
        if event.prev != self._head.hash:
            raise broken(
                "prev_mismatch",
                f"prev is {event.prev[:16]}…, but the previous event hashes to "
                f"{self._head.hash[:16]}…",
            )
        self._head = ChainHead(seq=event.seq, hash=event_hash(raw))
        self._count += 1
        return event

    def check_head(self, expected: ChainHead) -> None:
        """Check that the verified chain ends exactly at ``expected``.

        Raises:
            ChainBroken: the chain is shorter, longer or ends in different bytes.
        """
        head = self._head
        if head == expected:
            return
        index = max(self._count - 1, 0)
        if head.seq < expected.seq:
            raise ChainBroken(
                f"chain ends at seq {head.seq} but the trusted head is at seq {expected.seq}",
                index=self._count,
                seq=head.seq + 1,
                reason="truncated",
            )
        if head.seq > expected.seq:
            raise ChainBroken(
                f"chain continues to seq {head.seq} past the trusted head at seq {expected.seq}",
                index=index,
                seq=head.seq,
                reason="longer_than_head",
            )
        raise ChainBroken(
            f"event seq {head.seq} hashes to {head.hash[:16]}…, the trusted head is "
            f"{expected.hash[:16]}…",
            index=index,
            seq=head.seq,
            reason="head_mismatch",
        )


def verify_chain(
    events: Iterable[bytes],
    *,
    task: str | None = None,
    start: ChainHead = GENESIS,
    expected_head: ChainHead | None = None,
) -> ChainHead:
    """Verify a complete sequence of event bytes and return its head.

    Args:
        events: event bytes, in order.
        task: the task id every event must carry; by default, the first event's.
        start: the trusted head the sequence continues (``GENESIS`` for a whole log).
        expected_head: if given, the chain must end exactly there.

    Raises:
        ChainBroken: with the position, seq and reason of the first break.
    """
    verifier = ChainVerifier(task=task, start=start)
    for raw in events:
        verifier.feed(raw)
    if expected_head is not None:
        verifier.check_head(expected_head)
    return verifier.head
