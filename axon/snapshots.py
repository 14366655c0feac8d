"""The snapshot record: what a task's compaction rolled into the archive, and where.

One record per task (``KeySpace.snapshot``), replaced by every compaction run
in the same script that trims Redis, so a reader that finds an event missing
from Redis always finds the archive segment holding it. It carries:

* the archived range (events ``1 .. archived_to``), the chain hash of its last
  event and the Merkle root of that prefix, with the signed checkpoint of it;
* the archive segments (each up to ``SEGMENT_MAX_EVENTS`` events or
  ``SEGMENT_MAX_BYTES`` bytes, so serving one page reads one small blob);
* the archived tree chunks (``axon.tree``), so proofs of archived events still work;
* a summary of the state it folds: events and bytes, counts per kind, outcome.

Pure data and encoding; the compactor writes it, the store and tree read it.
"""

from __future__ import annotations

import bisect

import msgspec

SEGMENT_MAX_EVENTS = 4096
SEGMENT_MAX_BYTES = 8 << 20
"""A segment closes at whichever bound comes first (a single larger event gets its own)."""


class Segment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One archive blob holding events ``first .. last`` (inclusive), one per line."""

    first: int
    last: int
    ref: str
    bytes: int


class Summary(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the archived events add up to.

    Attributes:
        events / bytes: how many events, and their total size.
        kinds: events per kind.
        outcome: the terminal kind, once the archive holds the task's last event.
    """

    events: int = 0
    bytes: int = 0
    kinds: dict[str, int] = msgspec.field(default_factory=dict)
    outcome: str | None = None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task's compacted prefix. New fields get defaults (schema evolution)."""

    task: str
    archived_to: int
    head_hash: str
    root: str
    checkpoint: str
    segments: list[Segment]
    tree_chunks: list[str] = msgspec.field(default_factory=list)
    summary: Summary = msgspec.field(default_factory=Summary)
    compacted_ms: int = 0
    v: int = 1

    def segment_for(self, seq: int) -> Segment | None:
        """The segment holding event ``seq``, if archived."""
        if not 1 <= seq <= self.archived_to or not self.segments:
            return None
        firsts = [segment.first for segment in self.segments]
        index = bisect.bisect_right(firsts, seq) - 1
        if index < 0:
            return None
        segment = self.segments[index]
        return segment if segment.first <= seq <= segment.last else None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The record's stored bytes."""
    return _encoder.encode(snapshot)


def decode_snapshot(raw: bytes) -> Snapshot:
    """A stored record; ``msgspec.ValidationError``/``DecodeError`` if it is not one."""
    return _decoder.decode(raw)
