"""Event bytes: the one place an event is turned into the bytes that are stored forever.

Contract 1 of the product brief: an event is one compact UTF-8 JSON object with
no newline, with the fields ``task``, ``seq``, ``prev``, ``ts``, ``kind`` and
``data``, in that order. It is encoded exactly once, here, and from then on it is
stored, served, hashed and signed as those bytes — never re-serialized. The
hash of an event is the SHA-256 of its bytes, and ``prev`` carries the hash of
the event before it (64 zeros for the first).

This module does no I/O. ``data`` is encoded separately (``encode_data``) so a
writer can validate and size it once, then build the final bytes cheaply as
many times as optimistic-concurrency retries require.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from axon.errors import EventTooLarge, InvalidEvent

GENESIS_HASH = "0" * 64
"""The ``prev`` of the first event of every task."""

DEFAULT_MAX_EVENT_BYTES = 1 << 20
"""Default upper bound of one encoded event (1 MiB)."""

KIND_PATTERN = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
"""Kinds are short lowercase words: safe as an SSE ``event:`` field and as a metric label."""

CONTROL_PREFIX = "axon."
"""Kinds of SSE control frames start with this; no event may, so clients cannot mistake one."""

TERMINAL_KINDS = frozenset({"succeeded", "failed", "canceled", "timed_out"})
"""Kinds that end a task; each one is written only together with its terminal state."""

MAX_DATA_DEPTH = 64
"""Deepest nesting of objects/arrays in ``data``: a fixed bound far below any decoder's
recursion limit, so every event the writer accepts can be decoded and verified anywhere."""

RESERVED_KINDS = TERMINAL_KINDS | frozenset({"queued", "claimed", "reclaimed", "requeued"})
"""Kinds only the engine writes, as part of a state transition, never through a plain emit."""


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One decoded event. Field order here is the byte order on the wire."""

    task: str
    seq: int
    prev: str
    ts: int
    kind: str
    data: dict[str, Any]


class _EventOut(msgspec.Struct, frozen=True, kw_only=True):
    """The encoder's view of an event: ``data`` arrives already encoded."""

    task: str
    seq: int
    prev: str
    ts: int
    kind: str
    data: msgspec.Raw


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a valid event kind, else raise ``InvalidEvent``."""
    if not isinstance(kind, str) or KIND_PATTERN.fullmatch(kind) is None:
        raise InvalidEvent(
            f"invalid event kind {kind!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter",
            kind=str(kind)[:80],
        )
    if kind.startswith(CONTROL_PREFIX):
        raise InvalidEvent(
            f"invalid event kind {kind!r}: kinds starting with {CONTROL_PREFIX!r} are reserved "
            "for SSE control frames (axon.lagged, axon.reconnect, axon.unavailable)",
            kind=kind,
        )
    return kind


def encode_data(data: Any, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    """Encode an event's ``data`` object once, checking it is a JSON object within limits.

    Values follow msgspec's JSON rules, as ``json.dumps`` would: non-string keys
    become strings, NaN and infinities become ``null``, bytes become base64.

    Raises:
        InvalidEvent: ``data`` is not a mapping, nests deeper than ``MAX_DATA_DEPTH``
            (cycles included), or cannot be encoded.
        EventTooLarge: the encoded data alone exceeds ``max_bytes``.
    """
    if not isinstance(data, dict):
        raise InvalidEvent(
            f"event data must be a JSON object, got {type(data).__name__}",
            type=type(data).__name__,
        )
    try:
        encoded = _encoder.encode(data)
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidEvent(f"event data is not JSON-encodable: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    # Depth can only exceed the bound if there are more brackets than the bound:
    # a C-speed count spares the Python walk for nearly every event.
    if encoded.count(b"{") + encoded.count(b"[") > MAX_DATA_DEPTH:
        _check_depth(data)
    if len(encoded) > max_bytes:
        raise EventTooLarge(
            f"event data is {len(encoded)} bytes, above the limit of {max_bytes}",
            size=len(encoded),
            limit=max_bytes,
        )
    return encoded


def _too_deep() -> InvalidEvent:
    return InvalidEvent(
        f"event data nests deeper than {MAX_DATA_DEPTH} levels (or contains a cycle)",
        limit=MAX_DATA_DEPTH,
    )


def _check_depth(data: dict[Any, Any]) -> None:
    """Raise unless ``data`` nests at most ``MAX_DATA_DEPTH`` objects/arrays deep."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DATA_DEPTH:
            raise _too_deep()
        items = value.values() if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in items if isinstance(item, dict | list | tuple))


def build_event(
    *,
    task: str,
    seq: int,
    prev: str,
    ts: int,
    kind: str,
    data: bytes,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> bytes:
    """Produce the final, immutable bytes of one event.

    ``data`` must come from ``encode_data``; ``kind`` must have passed
    ``check_kind``. The result is what gets stored, hashed and signed.

    Raises:
        EventTooLarge: the whole event exceeds ``max_bytes``.
    """
    raw = _encoder.encode(
        _EventOut(task=task, seq=seq, prev=prev, ts=ts, kind=kind, data=msgspec.Raw(data))
    )
    if len(raw) > max_bytes:
        raise EventTooLarge(
            f"event is {len(raw)} bytes, above the limit of {max_bytes}",
            size=len(raw),
            limit=max_bytes,
        )
    return raw


def event_hash(raw: bytes) -> str:
    """The lowercase hex SHA-256 of an event's bytes: its identity in the chain."""
    return hashlib.sha256(raw).hexdigest()


_KIND_MARK = b',"kind":"'


def kind_of(raw: bytes) -> str:
    """The ``kind`` of stored event bytes, without decoding the whole event.

    Safe because the writer puts ``kind`` right after ``task``, ``seq``, ``prev``
    and ``ts``, none of which can contain the marker, and kinds need no escaping.
    Readers use it to label SSE frames at C speed; verifiers decode fully.

    Raises:
        InvalidEvent: the bytes do not have the writer's layout.
    """
    raw_kind = kind_bytes_of(raw)
    return _kind_names.get(raw_kind) or _kind_name(raw_kind)


def kind_bytes_of(raw: bytes) -> bytes:
    """The ``kind`` of stored event bytes, as bytes (SSE frames need no decoding).

    Raises:
        InvalidEvent: the bytes do not have the writer's layout.
    """
    start = raw.find(_KIND_MARK) + _KIND_SKIP
    end = raw.find(b'"', start)
    if start < _KIND_SKIP or end < 0:
        raise InvalidEvent("event bytes have no kind field where the writer puts it")
    return raw[start:end]


_KIND_SKIP = len(_KIND_MARK)
_kind_names: dict[bytes, str] = {}


def _kind_name(raw_kind: bytes) -> str:
    """Decode a kind once and remember it (kinds are few and repeat endlessly)."""
    name = raw_kind.decode("utf-8", "replace")
    if len(_kind_names) < 4096:
        _kind_names[raw_kind] = name
    return name


def decode_event(raw: bytes) -> Event:
    """Decode event bytes into an ``Event`` (for reading fields; never re-encode it).

    Raises:
        InvalidEvent: the bytes are not a well-formed event object.
    """
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"malformed event: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"event is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise InvalidEvent("event is nested too deeply") from None


def max_data_bytes(*, task: str, kind: str, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> int:
    """The largest encoded ``data`` an event of ``task`` and ``kind`` may carry.

    Computed with the widest possible ``seq`` and ``ts``, so an emit that passes
    this check can never be rejected later at build time, inside a batch.
    """
    widest = 10**19
    envelope = build_event(
        task=task, seq=widest, prev=GENESIS_HASH, ts=widest, kind=kind, data=b"", max_bytes=1 << 62
    )
    return max_bytes - len(envelope)
