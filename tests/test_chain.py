"""Hash-chain verification properties: axon/chain.py on chains built by axon/events.py.

A valid chain of any length and payload verifies to its true head; any
single-byte tampering, dropped, duplicated, swapped or foreign event is caught
at a precise input position with a machine-readable reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon.chain import GENESIS, ChainHead, ChainVerifier, verify_chain
from axon.errors import ChainBroken, InvalidEvent
from axon.events import GENESIS_HASH, build_event, check_kind, encode_data, event_hash

TASK = "task-a"
OTHER_TASK = "task-b"
TS0 = 1_700_000_000_000
KINDS = ["started", "log", "tool.call", "llm_token", "step-2"]

utf8_text = st.text(alphabet=st.characters(codec="utf-8"))
"""Any text that can be encoded, including characters beyond the BMP."""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | utf8_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(utf8_text, inner, max_size=3),
    max_leaves=5,
)
payload = st.dictionaries(utf8_text, json_values, max_size=3)
"""One event's ``data``: a JSON object, possibly empty."""


@st.composite
def chain_data(draw: st.DrawFn, min_size: int = 0, max_size: int = 40) -> list[dict[str, Any]]:
    """The data of n events (n in min_size..max_size), cycling through a few drawn payloads.

    Drawing a handful of payloads instead of one per event keeps generation fast
    while chains still reach 40 events; every event differs anyway by seq and prev.
    """
    n = draw(st.integers(min_size, max_size), label="events")
    pool = draw(st.lists(payload, min_size=1, max_size=3), label="payloads")
    return [pool[k % len(pool)] for k in range(n)]


payloads = chain_data()
nonempty_payloads = chain_data(min_size=1)
two_or_more_payloads = chain_data(min_size=2)

FAST = settings(max_examples=100, deadline=None)
"""For properties over payloads and byte positions, where the input space is large."""
QUICK = settings(max_examples=50, deadline=None)
"""For structural properties, where the input space is little more than n and i."""


def build_chain(data: list[dict[str, Any]], *, task: str = TASK) -> list[bytes]:
    """Event bytes with seq 1..n, each ``prev`` the hash of the bytes before it."""
    events: list[bytes] = []
    prev = GENESIS_HASH
    for seq, item in enumerate(data, start=1):
        raw = build_event(
            task=task,
            seq=seq,
            prev=prev,
            ts=TS0 + seq,
            kind=check_kind(KINDS[seq % len(KINDS)]),
            data=encode_data(item),
        )
        events.append(raw)
        prev = event_hash(raw)
    return events


def head_of(events: list[bytes]) -> ChainHead:
    """The head a writer would record after appending ``events`` to an empty log."""
    if not events:
        return GENESIS
    return ChainHead(seq=len(events), hash=event_hash(events[-1]))


def broken(events: list[bytes], **kwargs: Any) -> ChainBroken:
    """Run verify_chain, which must fail, and return the error."""
    with pytest.raises(ChainBroken) as info:
        verify_chain(events, **kwargs)
    return info.value


# -- valid chains --------------------------------------------------------------


@given(data=payloads)
@FAST
def test_valid_chain_verifies_to_its_head(data: list[dict[str, Any]]) -> None:
    """A chain of any length and payload verifies and returns (n, hash of the last bytes)."""
    events = build_chain(data)
    head = head_of(events)
    assert verify_chain(events) == head
    assert verify_chain(iter(events), task=TASK, expected_head=head) == head
    if events:
        assert head == ChainHead(seq=len(data), hash=event_hash(events[-1]))


def test_empty_chain_is_genesis() -> None:
    """No events verify to GENESIS: seq 0 and 64 zeros."""
    assert verify_chain([]) == GENESIS == ChainHead(seq=0, hash="0" * 64)
    assert verify_chain([], task=TASK, expected_head=GENESIS) == GENESIS


def test_empty_data_events_verify() -> None:
    """Events whose data is the empty object chain and verify like any other."""
    events = build_chain([{}] * 5)
    assert all(raw.endswith(b'"data":{}}') for raw in events)
    assert verify_chain(events, task=TASK, expected_head=head_of(events)) == head_of(events)


def test_large_events_verify_and_tampering_is_caught() -> None:
    """Events of ~200 KB verify, and one flipped byte inside one is still caught."""
    events = build_chain(
        [
            {"blob": "x" * 200_000},
            {"emoji": "\U0001f600" * 50_000, "nested": [{"k": "é" * 10_000}]},
            {},
        ]
    )
    assert len(events[0]) > 200_000
    assert len(events[1]) > 200_000
    assert verify_chain(events, expected_head=head_of(events)) == head_of(events)

    tampered = bytearray(events[0])
    tampered[100_000] ^= 0x01  # 'x' -> 'y': still a well-formed event
    err = broken([bytes(tampered), *events[1:]])
    assert (err.index, err.seq, err.reason) == (1, 2, "prev_mismatch")


# -- tampering -----------------------------------------------------------------


@given(data=nonempty_payloads, choice=st.data())
@FAST
def test_any_flipped_byte_breaks_the_chain(
    data: list[dict[str, Any]], choice: st.DataObject
) -> None:
    """Flipping any bits of any byte of event i is caught at input position i or i+1."""
    events = build_chain(data)
    i = choice.draw(st.integers(0, len(events) - 1), label="event")
    pos = choice.draw(st.integers(0, len(events[i]) - 1), label="byte")
    mask = choice.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(events[i])
    tampered[pos] ^= mask
    forged = [*events[:i], bytes(tampered), *events[i + 1 :]]

    err = broken(forged, expected_head=head_of(events))
    assert err.index in {i, i + 1}
    err = broken(forged, task=TASK, expected_head=head_of(events))
    assert err.index in {i, i + 1}
    if i < len(events) - 1:
        assert broken(forged).index in {i, i + 1}
    else:
        # Without the trusted head, only a change that breaks the last event itself is seen.
        error: ChainBroken | None = None
        try:
            verify_chain(forged)
        except ChainBroken as exc:
            error = exc
        assert error is None or error.index == i


def test_invalid_utf8_is_reported_as_chain_broken() -> None:
    """An event made invalid UTF-8 by one flipped byte is reported as malformed at its position."""
    events = build_chain([{"s": "abc"}, {}])
    tampered = events[0].replace(b'"abc"', b'"a\xe3c"')
    err = broken([tampered, events[1]])
    assert (err.index, err.reason) == (0, "malformed")


def test_deeply_nested_event_is_reported_as_chain_broken() -> None:
    """Event bytes nested too deeply to decode are reported as malformed, not a RecursionError."""
    depth = 100_000
    raw = (
        b'{"task":"t","seq":1,"prev":"' + GENESIS_HASH.encode() + b'","ts":1,"kind":"k",'
        b'"data":{"a":' + b"[" * depth + b"]" * depth + b"}}"
    )
    err = broken([raw])
    assert (err.index, err.reason) == (0, "malformed")


def _nested(depth: int) -> dict[str, Any]:
    """A data object with ``depth`` levels of objects inside it."""
    data: dict[str, Any] = {}
    node = data
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return data


def _deepest_encodable() -> int:
    """The deepest nesting encode_data accepts from here (it depends on the stack depth)."""
    low, high = 0, 10_000  # encodable, not encodable
    while high - low > 1:
        mid = (low + high) // 2
        try:
            encode_data(_nested(mid))
        except InvalidEvent:
            high = mid
        else:
            low = mid
    return low


def test_every_writable_event_verifies() -> None:
    """Data encode_data accepts, however deep, yields an event that verify_chain accepts."""
    events = build_chain([_nested(_deepest_encodable())])
    assert verify_chain(events) == head_of(events)


@pytest.mark.parametrize("line_break", [b"\n", b"\r", b"\r\n"])
@pytest.mark.parametrize("where", ["trailing", "between_tokens", "in_string"])
def test_line_break_in_event_is_malformed(line_break: bytes, where: str) -> None:
    """An event whose bytes contain a raw line break is malformed at its own position."""
    events = build_chain([{}, {"s": "ab"}, {}])
    original = events[1]
    if where == "trailing":
        forged_event = original + line_break  # still valid JSON: a JSON-lines artefact
    elif where == "between_tokens":
        forged_event = original.replace(b'{"task"', b"{" + line_break + b'"task"')
    else:
        forged_event = original.replace(b'"ab"', b'"a' + line_break + b'"')
    assert forged_event != original
    err = broken([events[0], forged_event, events[2]])
    assert (err.index, err.seq, err.reason) == (1, 2, "malformed")


@given(data=nonempty_payloads, choice=st.data())
@QUICK
def test_dropped_event_is_a_gap_or_truncation(
    data: list[dict[str, Any]], choice: st.DataObject
) -> None:
    """Dropping event i fails there as a gap; dropping the last fails only against the true head."""
    events = build_chain(data)
    n = len(events)
    i = choice.draw(st.integers(0, n - 1), label="dropped")
    forged = [*events[:i], *events[i + 1 :]]
    if i < n - 1:
        for kwargs in ({}, {"task": TASK, "expected_head": head_of(events)}):
            err = broken(forged, **kwargs)
            assert (err.index, err.seq, err.reason) == (i, i + 1, "gap")
    else:
        assert verify_chain(forged) == head_of(events[:-1])
        err = broken(forged, expected_head=head_of(events))
        assert (err.index, err.seq, err.reason) == (i, n, "truncated")


@given(data=nonempty_payloads, choice=st.data())
@QUICK
def test_duplicated_event_is_caught_right_after(
    data: list[dict[str, Any]], choice: st.DataObject
) -> None:
    """A copy of event i inserted right after it fails at i+1 as duplicate_or_reordered."""
    events = build_chain(data)
    i = choice.draw(st.integers(0, len(events) - 1), label="duplicated")
    forged = [*events[: i + 1], events[i], *events[i + 1 :]]
    err = broken(forged)
    assert (err.index, err.seq, err.reason) == (i + 1, i + 2, "duplicate_or_reordered")


@given(data=two_or_more_payloads, choice=st.data())
@QUICK
def test_swapped_events_fail_at_the_first(
    data: list[dict[str, Any]], choice: st.DataObject
) -> None:
    """Swapping two distinct events i < j fails at position i."""
    events = build_chain(data)
    n = len(events)
    i = choice.draw(st.integers(0, n - 2), label="i")
    j = choice.draw(st.integers(i + 1, n - 1), label="j")
    forged = list(events)
    forged[i], forged[j] = forged[j], forged[i]
    err = broken(forged)
    assert (err.index, err.seq, err.reason) == (i, i + 1, "gap")
    assert broken(forged, task=TASK, expected_head=head_of(events)).index == i


@given(data=nonempty_payloads, choice=st.data())
@QUICK
def test_event_of_another_task_is_wrong_task(
    data: list[dict[str, Any]], choice: st.DataObject
) -> None:
    """An event from another task's chain spliced in at i fails there as wrong_task."""
    events = build_chain(data)
    foreign = build_chain(data, task=OTHER_TASK)  # same seq, prev and data: only task differs
    n = len(events)
    i = choice.draw(st.integers(0, n - 1), label="spliced")
    forged = [*events[:i], foreign[i], *events[i + 1 :]]
    err = broken(forged, task=TASK)
    assert (err.index, err.seq, err.reason) == (i, i + 1, "wrong_task")
    if i > 0:
        err = broken(forged)  # the task is taken from the first event
        assert (err.index, err.reason) == (i, "wrong_task")
    elif n > 1:
        err = broken(forged)  # the foreign first event sets the task
        assert (err.index, err.reason) == (1, "wrong_task")


# -- incremental verification --------------------------------------------------


@given(data=payloads, choice=st.data())
@FAST
def test_verifier_continues_from_a_trusted_mid_chain_head(
    data: list[dict[str, Any]], choice: st.DataObject
) -> None:
    """Fed the suffix after the trusted head of event k, the verifier reaches the full head."""
    events = build_chain(data)
    n = len(events)
    k = choice.draw(st.integers(0, n), label="trusted prefix length")
    start = head_of(events[:k])

    verifier = ChainVerifier(task=TASK, start=start)
    assert verifier.head == start
    for offset, raw in enumerate(events[k:], start=1):
        event = verifier.feed(raw)
        assert event.seq == k + offset
        assert verifier.head == head_of(events[: k + offset])
    assert verifier.count == n - k
    assert verifier.head == head_of(events)
    verifier.check_head(head_of(events))
    assert verify_chain(events[k:], start=start, expected_head=head_of(events)) == head_of(events)

    if 0 < k < n:
        err = broken(events[k:])  # the suffix alone does not start at seq 1
        assert (err.index, err.reason) == (0, "gap")


@given(data=nonempty_payloads)
@QUICK
def test_rejected_event_leaves_the_verifier_unchanged(data: list[dict[str, Any]]) -> None:
    """A fed event that breaks the chain raises and leaves head and count as they were."""
    events = build_chain(data)
    verifier = ChainVerifier()
    for raw in events:
        verifier.feed(raw)
    head, count = verifier.head, verifier.count
    with pytest.raises(ChainBroken) as info:
        verifier.feed(events[-1])
    assert (info.value.index, info.value.reason) == (count, "duplicate_or_reordered")
    assert (verifier.head, verifier.count) == (head, count)


@given(data=nonempty_payloads, choice=st.data())
@QUICK
def test_check_head_detects_mismatch_and_overrun(
    data: list[dict[str, Any]], choice: st.DataObject
) -> None:
    """check_head reports a different hash, a trusted head behind the chain, and one ahead of it."""
    events = build_chain(data)
    n = len(events)
    verifier = ChainVerifier(task=TASK)
    for raw in events:
        verifier.feed(raw)
    verifier.check_head(head_of(events))

    with pytest.raises(ChainBroken) as info:
        verifier.check_head(ChainHead(seq=n, hash="f" * 64))
    assert (info.value.index, info.value.seq, info.value.reason) == (n - 1, n, "head_mismatch")

    m = choice.draw(st.integers(0, n - 1), label="trusted length")
    with pytest.raises(ChainBroken) as info:
        verifier.check_head(head_of(events[:m]))
    assert (info.value.index, info.value.seq, info.value.reason) == (n - 1, n, "longer_than_head")

    with pytest.raises(ChainBroken) as info:
        verifier.check_head(ChainHead(seq=n + 1, hash="f" * 64))
    assert (info.value.index, info.value.seq, info.value.reason) == (n, n + 1, "truncated")
