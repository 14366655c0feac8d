"""The event-bytes contract (product brief, contract 1): axon/events.py.

Every event is one compact UTF-8 JSON object with no newline, fields in the
order task, seq, prev, ts, kind, data, hashed as exactly those bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon.errors import EventTooLarge, InvalidEvent
from axon.events import (
    DEFAULT_MAX_EVENT_BYTES,
    GENESIS_HASH,
    KIND_PATTERN,
    build_event,
    check_kind,
    decode_event,
    encode_data,
    event_hash,
    kind_of,
    max_data_bytes,
)

FIELD_ORDER = ["task", "seq", "prev", "ts", "kind", "data"]
TS = 1_700_000_000_000
HASH_1 = "ab" * 32

utf8_text = st.text(alphabet=st.characters(codec="utf-8"))
"""Any text that can be encoded (every code point except the surrogates)."""

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | utf8_text
)
json_data = st.dictionaries(
    utf8_text,
    st.recursive(
        json_leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(utf8_text, inner, max_size=4),
        max_leaves=10,
    ),
    max_size=5,
)

KINDS = st.from_regex(KIND_PATTERN, fullmatch=True).filter(lambda k: not k.startswith("axon."))
"""Valid event kinds (``axon.`` is reserved for SSE control frames)."""


def make(
    data: dict[str, Any],
    *,
    task: str = "t-1",
    seq: int = 1,
    prev: str = GENESIS_HASH,
    ts: int = TS,
    kind: str = "log",
) -> bytes:
    """Build the bytes of one event the way a writer does."""
    return build_event(
        task=task, seq=seq, prev=prev, ts=ts, kind=check_kind(kind), data=encode_data(data)
    )


def payload_of_size(size: int) -> dict[str, Any]:
    """A ``data`` object whose encoding is exactly ``size`` bytes (at least 8)."""
    data = {"p": "x" * (size - len(b'{"p":""}'))}
    assert len(encode_data(data, max_bytes=size)) == size
    return data


# -- shape of the bytes --------------------------------------------------------


def test_golden_bytes() -> None:
    """A simple event encodes to exactly these compact bytes, fields in contract order."""
    raw = make({"msg": "hi", "n": [1, 2.5, None, True]}, seq=2, prev=HASH_1, kind="tool.call")
    assert raw == (
        b'{"task":"t-1","seq":2,"prev":"' + HASH_1.encode() + b'","ts":1700000000000,'
        b'"kind":"tool.call","data":{"msg":"hi","n":[1,2.5,null,true]}}'
    )


@pytest.mark.parametrize(
    "text",
    [
        "line\nbreak",
        "carriage\rreturn",
        "crlf\r\n",
        "line\u2028separator",
        "paragraph\u2029separator",
        "\x85next line",
        "\x0bvertical tab\x0cform feed",
        "nul\x00byte",
        'quote " and backslash \\',
        "emoji \U0001f600 beyond the BMP \U00010348",
        "",
    ],
)
def test_event_is_one_compact_utf8_json_line(text: str) -> None:
    """Strings with line breaks or non-BMP characters still yield one compact UTF-8 JSON line."""
    raw = make({text: text, "nested": [{"s": text}]})
    assert b"\n" not in raw
    assert b"\r" not in raw
    decoded = json.loads(raw.decode("utf-8"))
    assert decoded["data"] == {text: text, "nested": [{"s": text}]}
    assert msgspec.json.format(raw, indent=-1) == raw  # no insignificant whitespace


@given(data=json_data)
@settings(max_examples=100, deadline=None)
def test_any_data_yields_one_line_in_field_order(data: dict[str, Any]) -> None:
    """Whatever the data, the event is one line whose fields come in contract order."""
    raw = make(data)
    assert b"\n" not in raw
    assert b"\r" not in raw
    assert msgspec.json.format(raw, indent=-1) == raw
    decoded = json.loads(raw.decode("utf-8"))
    assert list(decoded) == FIELD_ORDER
    assert decoded["data"] == data


def test_fields_in_contract_order() -> None:
    """The fields appear in the order task, seq, prev, ts, kind, data, and no others."""
    raw = make({"z": 1, "a": 2}, seq=7, prev=HASH_1)
    assert list(json.loads(raw)) == FIELD_ORDER
    positions = [raw.index(f'"{name}":'.encode()) for name in FIELD_ORDER]
    assert positions == sorted(positions)
    assert raw.startswith(b'{"task":')


def test_first_event_prev_is_genesis() -> None:
    """The first event of a task carries 64 zeros as its prev."""
    assert GENESIS_HASH == "0" * 64
    event = decode_event(make({}, seq=1, prev=GENESIS_HASH))
    assert event.seq == 1
    assert event.prev == "0" * 64


def test_event_hash_is_sha256_of_exact_bytes() -> None:
    """An event's hash is the lowercase hex SHA-256 of its bytes, and any change alters it."""
    raw = make({"msg": "héllo \U0001f600"})
    digest = event_hash(raw)
    assert digest == hashlib.sha256(raw).hexdigest()
    assert len(digest) == 64
    assert digest == digest.lower()
    int(digest, 16)
    assert event_hash(raw[:-1] + b" ") != digest


# -- decoding ------------------------------------------------------------------


@given(
    task=utf8_text,
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    prev=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    ts=st.integers(min_value=0, max_value=2**63 - 1),
    kind=KINDS,
    data=json_data,
)
@settings(max_examples=100, deadline=None)
def test_decode_round_trips_fields(
    task: str, seq: int, prev: str, ts: int, kind: str, data: dict[str, Any]
) -> None:
    """Decoding built bytes gives back every field as it was given."""
    raw = make(data, task=task, seq=seq, prev=prev, ts=ts, kind=kind)
    event = decode_event(raw)
    assert (event.task, event.seq, event.prev, event.ts, event.kind) == (task, seq, prev, ts, kind)
    assert event.data == data


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"task":"t"}',
        b'{"task":"t","seq":1,"prev":"p","ts":1,"kind":"k","data":[]}',
        b'{"task":"t","seq":"1","prev":"p","ts":1,"kind":"k","data":{}}',
        b'{"task":"t","seq":1.5,"prev":"p","ts":1,"kind":"k","data":{}}',
        b'{"task":"t","seq":1,"prev":"p","ts":1,"kind":"k","data":{},"extra":1}',
        b'{"task":"t","seq":1,"prev":"p","ts":1,"kind":"k","data":{}',
    ],
)
def test_decode_rejects_malformed_events(raw: bytes) -> None:
    """Bytes that are not a well-formed event object raise InvalidEvent."""
    with pytest.raises(InvalidEvent):
        decode_event(raw)


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\x80", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"],
    ids=["ff", "lone-continuation", "truncated", "overlong", "surrogate", "above-max"],
)
@pytest.mark.parametrize("field", ["task", "data-key", "data-value"])
def test_decode_rejects_invalid_utf8(bad: bytes, field: str) -> None:
    """Bytes that are not valid UTF-8 inside any string raise InvalidEvent."""
    raw = make({"k": "v"}, task="t")
    target = {"task": b'"t"', "data-key": b'"k"', "data-value": b'"v"'}[field]
    forged = raw.replace(target, b'"' + bad + b'"')
    assert forged != raw
    with pytest.raises(InvalidEvent):
        decode_event(forged)


def test_decode_rejects_too_deep_nesting() -> None:
    """Event bytes nested too deeply to decode raise InvalidEvent, not RecursionError."""
    depth = 100_000
    raw = (
        b'{"task":"t","seq":1,"prev":"' + GENESIS_HASH.encode() + b'","ts":1,"kind":"k",'
        b'"data":{"a":' + b"[" * depth + b"]" * depth + b"}}"
    )
    with pytest.raises(InvalidEvent):
        decode_event(raw)


# -- kinds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["a", "log", "tool.call", "step-2", "llm_token", "a9", "z" + "-" * 63, "a" * 64]
)
def test_check_kind_accepts_short_lowercase_words(kind: str) -> None:
    """A kind of 1-64 characters of a-z, 0-9, '_', '.', '-' starting with a letter is accepted."""
    assert check_kind(kind) == kind


@pytest.mark.parametrize(
    "kind",
    [
        "",
        "Log",
        "LOG",
        "a" * 65,
        "log\n",
        "\nlog",
        "log\r",
        "tool call",
        " log",
        "log ",
        "log\t",
        "1log",
        "_log",
        ".log",
        "-log",
        "lög",
        "log:x",
        "log/x",
        "axon.lagged",
        "axon.anything",
    ],
)
def test_check_kind_rejects_other_strings(kind: str) -> None:
    """Uppercase, empty, too long, whitespace, non-ASCII or odd-start kinds, and kinds in the
    reserved ``axon.`` namespace of SSE control frames, raise InvalidEvent."""
    with pytest.raises(InvalidEvent):
        check_kind(kind)


@pytest.mark.parametrize("kind", [None, 1, b"log", ["log"]])
def test_check_kind_rejects_non_strings(kind: Any) -> None:
    """A kind that is not a string raises InvalidEvent."""
    with pytest.raises(InvalidEvent):
        check_kind(kind)


# -- data ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [[], [("a", 1)], "{}", "", None, 0, 1, 1.5, True, b"{}"])
def test_encode_data_rejects_non_objects(data: Any) -> None:
    """Data that is not a dict raises InvalidEvent, not EventTooLarge or a raw error."""
    with pytest.raises(InvalidEvent) as info:
        encode_data(data)
    assert type(info.value) is InvalidEvent


@pytest.mark.parametrize(
    "data",
    [
        {"a": object()},
        {"a": "\ud800"},
        {"\udfff": 1},
        {"a": [1, {"b": "x\ud83dy"}]},
        {"a": {"b": object()}},
        {(1, 2): "tuple key"},
    ],
    ids=[
        "object",
        "lone-high-surrogate",
        "surrogate-key",
        "nested-surrogate",
        "nested-object",
        "tuple-key",
    ],
)
def test_encode_data_rejects_unencodable_values(data: dict[Any, Any]) -> None:
    """Values JSON cannot represent raise InvalidEvent rather than a raw TypeError or ValueError."""
    with pytest.raises(InvalidEvent) as info:
        encode_data(data)
    assert type(info.value) is InvalidEvent


def test_encode_data_rejects_too_deep_data() -> None:
    """Data nested deeper than the encoder supports raises InvalidEvent, not RecursionError."""
    data: dict[str, Any] = {}
    node = data
    for _ in range(5_000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidEvent):
        encode_data(data)


def test_encode_data_rejects_cycles() -> None:
    """Data that contains itself raises InvalidEvent, not RecursionError."""
    data: dict[str, Any] = {"list": []}
    data["list"].append(data)
    with pytest.raises(InvalidEvent):
        encode_data(data)


def test_encode_data_is_compact_utf8() -> None:
    """Encoded data is compact JSON with non-ASCII text kept as raw UTF-8."""
    assert encode_data({}) == b"{}"
    assert encode_data({"a": [1, "é\U0001f600"]}) == '{"a":[1,"é\U0001f600"]}'.encode()


def test_encode_data_size_limit() -> None:
    """Data of exactly max_bytes is accepted and one byte more raises EventTooLarge."""
    assert len(encode_data(payload_of_size(100), max_bytes=100)) == 100
    with pytest.raises(EventTooLarge) as info:
        encode_data(payload_of_size(101), max_bytes=100)
    assert info.value.details == {"size": 101, "limit": 100}
    assert isinstance(info.value, InvalidEvent)


def test_encode_data_default_limit_is_one_mib() -> None:
    """Without max_bytes, data up to 1 MiB is accepted and larger data is refused."""
    assert DEFAULT_MAX_EVENT_BYTES == 1 << 20
    encode_data(payload_of_size(DEFAULT_MAX_EVENT_BYTES))
    with pytest.raises(EventTooLarge):
        encode_data(payload_of_size(DEFAULT_MAX_EVENT_BYTES + 1))


# -- whole-event size ----------------------------------------------------------


def test_build_event_size_limit() -> None:
    """An event of exactly max_bytes is built and one byte more raises EventTooLarge."""
    data = encode_data(payload_of_size(50))
    size = len(build_event(task="t", seq=1, prev=GENESIS_HASH, ts=TS, kind="log", data=data))
    raw = build_event(
        task="t", seq=1, prev=GENESIS_HASH, ts=TS, kind="log", data=data, max_bytes=size
    )
    assert len(raw) == size
    with pytest.raises(EventTooLarge) as info:
        build_event(
            task="t", seq=1, prev=GENESIS_HASH, ts=TS, kind="log", data=data, max_bytes=size - 1
        )
    assert info.value.details == {"size": size, "limit": size - 1}


WIDE_NUMBERS = [
    10**18,  # 19 digits
    10**19 - 1,  # 19 digits
    2**63 - 1,  # 19 digits, int64 max
    10**19,  # 20 digits
    2**64 - 1,  # 20 digits, uint64 max
    10**20 - 1,  # 20 digits, widest
    -(2**63),  # 19 digits and a sign
]


@pytest.mark.parametrize(
    ("task", "kind"),
    [
        ("t", "a"),
        ("tsk_01JD8X3Z6M0Q2V9W5R7YB4C1KE", "tool.call"),
        ('needs "escaping"\\ and \u00e9\U0001f600', "k" * 64),
    ],
)
@pytest.mark.parametrize("max_bytes", [300, 4096, DEFAULT_MAX_EVENT_BYTES])
def test_max_data_bytes_is_tight(task: str, kind: str, max_bytes: int) -> None:
    """Data of exactly max_data_bytes fits with 19-20 digit seq and ts; one byte more does not."""
    limit = max_data_bytes(task=task, kind=kind, max_bytes=max_bytes)
    fits = encode_data(payload_of_size(limit), max_bytes=limit)
    for seq in WIDE_NUMBERS:
        for ts in WIDE_NUMBERS:
            raw = build_event(
                task=task, seq=seq, prev=HASH_1, ts=ts, kind=kind, data=fits, max_bytes=max_bytes
            )
            assert len(raw) <= max_bytes
    widest = 10**20 - 1
    assert (
        len(build_event(task=task, seq=widest, prev=HASH_1, ts=widest, kind=kind, data=fits))
        == max_bytes
    )
    too_big = encode_data(payload_of_size(limit + 1))
    with pytest.raises(EventTooLarge):
        build_event(
            task=task,
            seq=widest,
            prev=HASH_1,
            ts=widest,
            kind=kind,
            data=too_big,
            max_bytes=max_bytes,
        )


@given(
    task=st.text(alphabet=st.characters(codec="utf-8"), max_size=100),
    kind=KINDS,
    seq=st.integers(min_value=1, max_value=10**20 - 1),
    ts=st.integers(min_value=0, max_value=10**20 - 1),
)
@settings(max_examples=100, deadline=None)
def test_max_data_bytes_holds_for_any_task_kind_seq_ts(
    task: str, kind: str, seq: int, ts: int
) -> None:
    """For any task and kind, data of max_data_bytes fits at any seq and ts of up to 20 digits."""
    max_bytes = 2048
    limit = max_data_bytes(task=task, kind=kind, max_bytes=max_bytes)
    fits = encode_data(payload_of_size(limit))
    raw = build_event(
        task=task, seq=seq, prev=GENESIS_HASH, ts=ts, kind=kind, data=fits, max_bytes=max_bytes
    )
    assert len(raw) <= max_bytes


def test_nesting_limit_is_fixed() -> None:
    """Data nested exactly MAX_DATA_DEPTH levels encodes; one level more is InvalidEvent."""
    from axon.events import MAX_DATA_DEPTH

    def nested(levels: int) -> dict[str, Any]:
        data: dict[str, Any] = {}
        node = data
        for _ in range(levels - 1):
            node["a"] = {}
            node = node["a"]
        return data

    assert encode_data(nested(MAX_DATA_DEPTH))
    with pytest.raises(InvalidEvent, match="deeper"):
        encode_data(nested(MAX_DATA_DEPTH + 1))
    with pytest.raises(InvalidEvent, match="deeper"):
        encode_data({"a": [[[[]]]] * 1, "b": nested(MAX_DATA_DEPTH)})


def test_non_string_keys_become_strings() -> None:
    """Non-string keys are stringified as JSON requires (as json.dumps does)."""
    assert encode_data({"ok": {1: "x", 2.5: True}}) == b'{"ok":{"1":"x","2.5":true}}'


@given(
    kind=KINDS,
    data=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4),
)
@settings(max_examples=100, deadline=None)
def test_kind_of_reads_the_envelope_kind(kind: str, data: dict[str, str]) -> None:
    """kind_of finds the envelope's kind even when data holds a decoy "kind" key."""
    decoy = {**data, "kind": "decoy", "x": ',"kind":"decoy"'}
    raw = build_event(
        task="t_1", seq=3, prev=GENESIS_HASH, ts=1, kind=kind, data=encode_data(decoy)
    )
    assert kind_of(raw) == kind == decode_event(raw).kind


def test_kind_of_rejects_foreign_layout() -> None:
    """Bytes not laid out by the writer are refused, not misread."""
    with pytest.raises(InvalidEvent):
        kind_of(b'{"kind":"x"}')
