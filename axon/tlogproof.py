"""Inclusion proofs in the ``c2sp.org/tlog-proof@v1`` text format (https://c2sp.org/tlog-proof).

A proof bundles what an offline verifier needs to check that one entry is in a
log: the entry's index, its RFC 6962 audit path and the signed checkpoint the
path leads to, plus optional opaque ``extra`` data (unauthenticated)::

    c2sp.org/tlog-proof@v1
    extra <base64>            (optional)
    index <decimal>
    <base64 hash>             (zero or more: the audit path, leaf's sibling first)

    <signed checkpoint note, verbatim>

Parsing is strict and canonical, so ``parse`` and ``encode`` are exact
inverses: an accepted proof re-encodes to the same bytes. It checks the format
only, the embedded checkpoint included (a well-formed signed note whose text is
a valid checkpoint body). Whether the index is in the tree, the path leads to
the root and the checkpoint is signed by a trusted key is for the verifier.
"""

from __future__ import annotations

import base64
import re

import msgspec

from axon.checkpoint import MAX_SIZE, Checkpoint
from axon.errors import InvalidTlogProof, NoteError
from axon.notes import b64decode, split_note

HEADER = "c2sp.org/tlog-proof@v1"
"""The first line of every proof."""

MAX_PATH = 63
"""Longest audit path: a tree of at most 2^63 - 1 leaves is at most 63 levels deep."""

_DECIMAL = re.compile("0|[1-9][0-9]*")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")


class TlogProof(msgspec.Struct, frozen=True, kw_only=True):
    """An entry's index, audit path and the signed checkpoint they prove inclusion in."""

    extra: bytes | None = None
    index: int
    path: list[bytes]
    checkpoint: str

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_SIZE:
            raise InvalidTlogProof(f"index {self.index} is out of range 0..2^63-2")
        for position, node in enumerate(self.path):
            if len(node) != 32:
                raise InvalidTlogProof(
                    f"audit path hash {position} is {len(node)} bytes, not 32 (SHA-256)"
                )
        if len(self.path) > MAX_PATH:
            raise InvalidTlogProof(f"audit path has more than {MAX_PATH} hashes")
        try:
            text, _signatures = split_note(self.checkpoint)
            Checkpoint.parse(text)
        except NoteError as exc:
            raise InvalidTlogProof(f"checkpoint: {exc.message}") from None

    def encode(self) -> str:
        """The proof as text, in the exact layout ``parse`` reads."""
        lines = [HEADER]
        if self.extra is not None:
            lines.append(f"extra {_b64(self.extra)}")
        lines.append(f"index {self.index}")
        lines.extend(_b64(node) for node in self.path)
        return "\n".join(lines) + "\n\n" + self.checkpoint

    @classmethod
    def parse(cls, text: str | bytes) -> TlogProof:
        """Parse a proof; the checkpoint after the blank line is kept verbatim.

        Raises:
            InvalidTlogProof: the proof is malformed; the message says how.
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidTlogProof(
                    f"proof is not valid UTF-8 (byte offset {exc.start})"
                ) from None
        control = _CONTROL.search(text)
        if control is not None:
            raise InvalidTlogProof(
                f"proof contains control character U+{ord(control.group()):04X} "
                f"at offset {control.start()}"
            )
        reader = _Lines(text)
        first = reader.next("the c2sp.org/tlog-proof@v1 header")
        if first != HEADER:
            raise InvalidTlogProof(f"first line is {first[:40]!r}, not {HEADER!r}")
        line = reader.next("the index line")
        extra = None
        if line.startswith("extra "):
            extra = b64decode(line[len("extra ") :])
            if extra is None:
                raise InvalidTlogProof(f"line {reader.number}: extra data is not valid base64")
            line = reader.next("the index line")
        index = line[len("index ") :]
        if not line.startswith("index ") or len(index) > 19 or _DECIMAL.fullmatch(index) is None:
            raise InvalidTlogProof(
                f"line {reader.number} is not 'index <decimal without leading zeros>'"
            )
        path: list[bytes] = []
        while line := reader.next("the blank line before the checkpoint"):
            node = b64decode(line)
            if node is None or len(node) != 32:
                raise InvalidTlogProof(
                    f"line {reader.number}: audit path hash is not the base64 of 32 bytes"
                )
            if len(path) == MAX_PATH:
                raise InvalidTlogProof(f"audit path has more than {MAX_PATH} hashes")
            path.append(node)
        checkpoint = reader.rest()
        if not checkpoint:
            raise InvalidTlogProof("proof has no checkpoint after the blank line")
        return cls(extra=extra, index=int(index), path=path, checkpoint=checkpoint)


class _Lines:
    """Reads newline-terminated lines off the front of a text, counting them."""

    __slots__ = ("_position", "_text", "number")

    def __init__(self, text: str) -> None:
        self._text = text
        self._position = 0
        self.number = 0

    def next(self, expected: str) -> str:
        end = self._text.find("\n", self._position)
        if end < 0:
            raise InvalidTlogProof(f"proof ends before {expected}")
        line = self._text[self._position : end]
        self._position = end + 1
        self.number += 1
        return line

    def rest(self) -> str:
        return self._text[self._position :]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
