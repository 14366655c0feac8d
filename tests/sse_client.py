"""A small raw SSE client for tests that need many connections or control over reading.

httpx (with httpx-sse) is what most tests use; a thousand httpx streams in
the same process as the server would measure httpx, not us. This client is a
plain asyncio socket and a frame parser that keeps every field.
"""

from __future__ import annotations

import asyncio

import msgspec


class Frame(msgspec.Struct, kw_only=True):
    """One SSE frame (``comment`` frames have only ``comment``)."""

    id: str | None = None
    event: str | None = None
    data: bytes | None = None
    retry: int | None = None
    comment: bytes | None = None


def parse_frames(buffer: bytearray) -> list[Frame]:
    """Take every complete frame (ending in a blank line) out of ``buffer``."""
    frames: list[Frame] = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return frames
        block = bytes(buffer[:end])
        del buffer[: end + 2]
        frame = Frame()
        for line in block.split(b"\n"):
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"":
                frame.comment = value
            elif name == b"id":
                frame.id = value.decode()
            elif name == b"event":
                frame.event = value.decode()
            elif name == b"data":
                frame.data = value if frame.data is None else frame.data + b"\n" + value
            elif name == b"retry":
                frame.retry = int(value)
        frames.append(frame)


class RawStream:
    """One SSE connection over a bare socket; ``frames()`` reads until the server closes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buffer = bytearray()
        self._chunked = False

    @classmethod
    async def open(
        cls, port: int, path: str, *, key: str, headers: dict[str, str] | None = None
    ) -> RawStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            f"Authorization: Bearer {key}",
            "Accept: text/event-stream",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        stream = cls(reader, writer)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        stream.status = int(status_line.split()[1])
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                stream.headers[name.strip().lower()] = value.strip()
        stream._chunked = stream.headers.get("transfer-encoding") == "chunked"
        return stream

    async def _read_body(self) -> bool:
        """Append more body bytes to the buffer; False at the end of the body."""
        if not self._chunked:
            data = await self.reader.read(65536)
            self._buffer += data
            return bool(data)
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            return False
        self._buffer += await self.reader.readexactly(size)
        await self.reader.readexactly(2)
        return True

    async def next_frames(self) -> list[Frame] | None:
        """The next complete frames; None once the server ended the response."""
        while True:
            frames = parse_frames(self._buffer)
            if frames:
                return frames
            try:
                more = await self._read_body()
            except asyncio.IncompleteReadError:
                more = False
            if not more:
                return None

    async def frames(self) -> list[Frame]:
        """Every frame until the server ends the response; then the connection is closed."""
        collected: list[Frame] = []
        try:
            while (batch := await self.next_frames()) is not None:
                collected += batch
        finally:
            self.writer.close()
        return collected

    def close(self) -> None:
        """Drop the connection without a goodbye (as a vanished client would)."""
        self.writer.transport.abort()
        self.writer.close()
