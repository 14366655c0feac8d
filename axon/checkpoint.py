"""Checkpoint bodies (https://c2sp.org/tlog-checkpoint): the signed head of a Merkle log.

A checkpoint is the text of a signed note (``axon.notes``): the log's origin,
its size and its RFC 6962 root hash, one per line. Axon keeps one log per task,
so the origin names both the deployment and the task, ``<deployment>/<task id>``;
a receipt for one task can then never be passed off as one for another.

We write exactly the three mandatory lines. When parsing we accept the
optional extension lines the spec allows but drop them: they are not
auditable, and nothing here gives them a meaning. Pure and I/O-free.
"""

from __future__ import annotations

import base64
import re

import msgspec

from axon.errors import InvalidCheckpoint
from axon.keys import TASK_ID_PATTERN
from axon.notes import b64decode, key_name_problem

MAX_SIZE = 2**63 - 1
"""Largest tree size we read or write (Go's ``tlog`` parses sizes as int64)."""

_DECIMAL = re.compile("0|[1-9][0-9]*")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A log's origin, size (number of leaves) and 32-byte root hash."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        problem = _origin_problem(self.origin)
        if problem is not None:
            raise InvalidCheckpoint(f"checkpoint origin {problem}")
        if not 0 <= self.size <= MAX_SIZE:
            raise InvalidCheckpoint(f"checkpoint size {self.size} is out of range 0..2^63-1")
        if len(self.root) != 32:
            raise InvalidCheckpoint(f"checkpoint root hash is {len(self.root)} bytes, not 32")

    def body(self) -> str:
        """The note text: ``<origin>\\n<size>\\n<base64 root>\\n``, no extension lines."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body (a note's text); extension lines are checked, then dropped.

        Raises:
            InvalidCheckpoint: the body is malformed; the message says how.
        """
        if not text.endswith("\n"):
            raise InvalidCheckpoint("checkpoint body does not end with a newline")
        control = _CONTROL.search(text)
        if control is not None:
            raise InvalidCheckpoint(
                f"checkpoint body contains control character U+{ord(control.group()):04X}"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidCheckpoint("checkpoint body is not valid UTF-8") from None
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise InvalidCheckpoint(
                f"checkpoint body has {len(lines)} line(s); it needs origin, size and root hash"
            )
        for number, line in enumerate(lines, 1):
            if not line:
                raise InvalidCheckpoint(f"line {number} of the checkpoint body is empty")
        origin, size, root64 = lines[:3]
        if len(size) > 19 or _DECIMAL.fullmatch(size) is None:
            raise InvalidCheckpoint(
                f"checkpoint size {size[:24]!r} is not a decimal number below 2^63 "
                "without leading zeros"
            )
        root = b64decode(root64)
        if root is None or len(root) != 32:
            raise InvalidCheckpoint("checkpoint root hash is not the base64 of 32 bytes")
        return cls(origin=origin, size=int(size), root=root)


def origin_for(deployment: str, task_id: str) -> str:
    """The origin line of a task's checkpoints: ``<deployment>/<task id>``.

    ``deployment`` is this installation's origin prefix (``axon.example.com``,
    ``example.com/axon``); like a key name it has no spaces and no ``+``.

    Raises:
        InvalidCheckpoint: ``deployment`` or ``task_id`` cannot form an origin.
    """
    problem = key_name_problem(deployment)
    if problem is not None:
        raise InvalidCheckpoint(f"deployment origin {deployment[:80]!r} {problem}")
    if deployment.endswith("/"):
        raise InvalidCheckpoint(f"deployment origin {deployment[:80]!r} ends with '/'")
    if TASK_ID_PATTERN.fullmatch(task_id) is None:
        raise InvalidCheckpoint(f"{task_id[:80]!r} is not a task id")
    return f"{deployment}/{task_id}"


def task_of(origin: str, deployment: str | None = None) -> str:
    """The task id in an origin made by ``origin_for``: what follows the last ``/``.

    Raises:
        InvalidCheckpoint: the origin does not end in ``/<task id>``, or
            ``deployment`` is given and the origin belongs to another one.
    """
    prefix, slash, task_id = origin.rpartition("/")
    if not slash or not prefix:
        raise InvalidCheckpoint(f"origin {origin[:80]!r} is not of the form <deployment>/<task id>")
    if TASK_ID_PATTERN.fullmatch(task_id) is None:
        raise InvalidCheckpoint(f"origin {origin[:80]!r} does not end in a task id")
    if deployment is not None and prefix != deployment:
        raise InvalidCheckpoint(
            f"origin {origin[:80]!r} belongs to deployment {prefix[:80]!r}, not {deployment!r}"
        )
    return task_id


def _origin_problem(origin: str) -> str | None:
    if not origin:
        return "is empty"
    if "\n" in origin:
        return "contains a newline"
    control = _CONTROL.search(origin)
    if control is not None:
        return f"contains control character U+{ord(control.group()):04X}"
    try:
        origin.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None
