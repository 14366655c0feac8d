"""Archive storage: immutable, content-addressed blobs the compactor writes before trimming.

The compactor moves old event bytes (segments) and old Merkle-tree hashes
(tree chunks) out of Redis into an archive. Nothing may be trimmed from Redis
until its copy is durable, so ``put`` returns only once the blob is on stable
storage. Blobs are named by the SHA-256 of their content: writing the same
bytes twice (a compactor killed after its archive write and run again) is a
no-op that yields the same reference, and a reader detects a corrupted blob by
hashing it.

``Archive`` is the interface; ``LocalArchive`` (a directory, fsynced) is the
default. Any other store (an object store, a shared volume) plugs in by
implementing the three methods.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import anyio

from axon.errors import ArchiveUnavailable

REF_PREFIX = "sha256-"
_REF = re.compile(r"sha256-[0-9a-f]{64}")


class Archive(Protocol):
    """Where compacted history lives: immutable blobs addressed by their SHA-256."""

    async def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its reference (``sha256-<hex>``)."""
        ...

    async def get(self, ref: str) -> bytes:
        """The blob ``ref`` names, checked against its digest.

        Raises:
            ArchiveUnavailable: missing, unreadable or corrupted.
        """
        ...

    def describe(self) -> str:
        """Where the archive is, for logs and reports."""
        ...


def ref_of(data: bytes) -> str:
    """The reference of a blob: ``sha256-`` and its lowercase hex digest."""
    return REF_PREFIX + hashlib.sha256(data).hexdigest()


def check_ref(ref: str) -> str:
    """Return ``ref`` if well-formed, else raise ``ArchiveUnavailable`` (a corrupted snapshot)."""
    if _REF.fullmatch(ref) is None:
        raise ArchiveUnavailable(f"malformed archive reference {ref[:80]!r}", ref=ref[:80])
    return ref


def encode_segment(events: Sequence[bytes]) -> bytes:
    """A segment's bytes: each event's exact bytes on its own line (events hold no newline)."""
    return b"\n".join(events) + b"\n"


def decode_segment(data: bytes) -> list[bytes]:
    """The events of a segment, in order."""
    if not data.endswith(b"\n"):
        raise ArchiveUnavailable("archive segment is truncated (no final newline)")
    return data[:-1].split(b"\n")


class LocalArchive:
    """Blobs as files under ``directory/<first two hex>/<sha256 hex>``, fsynced.

    A write goes to a temporary file, is fsynced, renamed into place, and the
    directory is fsynced, so a crash leaves either no blob or a whole one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> str:
        """The archive directory."""
        return str(self.directory)

    def _path(self, ref: str) -> Path:
        digest = check_ref(ref)[len(REF_PREFIX) :]
        return self.directory / digest[:2] / digest

    async def put(self, data: bytes) -> str:
        """Write ``data`` (if not already there) and fsync it; return its reference."""
        ref = ref_of(data)
        await anyio.to_thread.run_sync(self._put, ref, data)
        return ref

    def _put(self, ref: str, data: bytes) -> None:
        path = self._path(ref)
        try:
            if path.is_file() and path.stat().st_size == len(data):
                _fsync_dir(path.parent)  # an earlier writer may have died before this
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            _fsync_dir(self.directory)
        except OSError as exc:
            raise ArchiveUnavailable(
                f"cannot write to the archive at {self.directory}: {exc.strerror or exc}",
                archive=str(self.directory),
            ) from exc

    async def get(self, ref: str) -> bytes:
        """Read blob ``ref`` and check its digest."""
        path = self._path(ref)
        try:
            data = await anyio.Path(path).read_bytes()
        except FileNotFoundError:
            raise ArchiveUnavailable(
                f"archive blob {ref} is missing from {self.directory}", ref=ref
            ) from None
        except OSError as exc:
            raise ArchiveUnavailable(
                f"cannot read archive blob {ref}: {exc.strerror or exc}", ref=ref
            ) from exc
        if ref_of(data) != ref:
            raise ArchiveUnavailable(f"archive blob {ref} is corrupted (digest mismatch)", ref=ref)
        return data


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CachedArchive:
    """An ``Archive`` that keeps recently read blobs in memory (up to ``max_bytes``).

    Serving a compacted task's backfill reads each segment once per page
    otherwise, and proofs read the same tree chunks again and again. Blobs are
    immutable, so a cached copy never goes stale.
    """

    def __init__(self, inner: Archive, *, max_bytes: int = 64 << 20) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def describe(self) -> str:
        """The wrapped archive's description."""
        return self.inner.describe()

    async def put(self, data: bytes) -> str:
        """Store through to the wrapped archive."""
        return await self.inner.put(data)

    async def get(self, ref: str) -> bytes:
        """A cached blob, or the wrapped archive's (then cached)."""
        data = self._blobs.get(ref)
        if data is not None:
            self._blobs.move_to_end(ref)
            return data
        data = await self.inner.get(ref)
        if len(data) <= self.max_bytes // 4:
            self._blobs[ref] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, dropped = self._blobs.popitem(last=False)
                self._size -= len(dropped)
        return data


def open_archive(directory: Path) -> CachedArchive:
    """The default archive: a local directory, with a read cache."""
    return CachedArchive(LocalArchive(directory))
