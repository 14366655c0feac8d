"""The SSE load client of ``bench/sse.py``: thousands of event streams per process.

``bench/sse.py`` starts a few of these as worker processes (``python
bench/sse_client.py``), each owning a share of the subscribers. A worker reads
one JSON command per line on stdin and answers each with one JSON line on
stdout:

``{"op": "connect", ...}``
    open one SSE connection per ``[task, since_seq]`` (at most ``concurrency``
    attaching at once) and answer once every one has seen its first frame (the
    ``retry:`` line) or failed: attach times and errors.
``{"op": "record", "start": {task: head seq}}``
    a load phase starts: from now on, keep the latency of every frame after the
    phase's start that carries a ``t_ns``.
``{"op": "drain", "expected": {task: last seq}, "timeout_s": T}``
    wait until every subscriber has seen the last seq of its task (or T passed),
    then answer with what the phase delivered, missed, duplicated, and the latencies.
``{"op": "close"}``
    close every connection, answer, and exit.

Each connection is a bare ``asyncio.Protocol`` (no stream reader, no coroutine
per connection) that parses the chunked HTTP body with one regular expression
per batch of complete frames: ``id: <seq>`` and, in the event's ``data``, the
``t_ns`` the producer stamped right before appending. Latency is
``time.time_ns()`` on arrival minus that stamp: the same clock, one machine.

``probe`` and ``backfill`` are single-connection helpers ``bench/sse.py`` calls
in its own process (attach time, backfill rate).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from collections import Counter
from typing import Any

FRAME = re.compile(rb'^id: (\d+)\n[^\n]*\ndata: (?:[^\n]*?"data":\{"t_ns":(\d+))?', re.MULTILINE)
"""An event frame: its seq, and the ``t_ns`` at the start of its data object if any."""
CONTROL = re.compile(rb"^event: (axon\.[a-z_.]+)$", re.MULTILINE)
"""A control frame (``axon.lagged``, ``axon.reconnect``, ``axon.unavailable``)."""
READ_SIZE = 1 << 18


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def request_bytes(host: str, port: int, path: str, auth: str | None) -> bytes:
    """A hand-written HTTP/1.1 GET asking for an event stream."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    if auth:
        lines.append(f"Authorization: Bearer {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Load:
    """What all subscribers of one worker share: the latency recorder and counters."""

    def __init__(self) -> None:
        self.recording = False
        self.latencies_us: list[int] = []
        self.frames = 0


class Subscription(asyncio.Protocol):
    """One SSE connection: counts event frames by seq and records latencies."""

    def __init__(self, load: Load, task: str, since: int, request: bytes) -> None:
        self.load = load
        self.task = task
        self.since = since
        self.last = since
        self.request = request
        self.in_body = False
        self.buffer = b""
        self.received = 0  # frames with a seq above ``since``
        self.duplicates = 0
        self.skipped = 0  # seqs jumped over (a gap in what arrived)
        self.phase_start = since  # the task's head when the current load phase began
        self.phase_skipped = 0
        self.phase_duplicates = 0
        self.controls: list[str] = []
        self.error: str | None = None
        self.closed = False
        self.sent_ns = 0
        self.first_byte_ns = 0
        self.attached_ns = 0
        self.attached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sent_ns = time.perf_counter_ns()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.first_byte_ns:
            self.first_byte_ns = time.perf_counter_ns()
        if not self.in_body:
            data = self.buffer + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            status = data[: data.find(b"\r\n")]
            if not status.startswith(b"HTTP/1.1 200"):
                self._fail(f"{status.decode(errors='replace')}: {data[end + 4 : end + 200]!r}")
                return
            self.in_body = True
            data = data[end + 4 :]
            self.buffer = b""
        buffer = self.buffer + data if self.buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return
        complete, self.buffer = buffer[: end + 2], buffer[end + 2 :]
        if not self.attached_ns:
            self.attached_ns = time.perf_counter_ns()
            if not self.attached.done():
                self.attached.set_result(None)
        load = self.load
        for match in FRAME.finditer(complete):
            seq = int(match[1])
            load.frames += 1
            if seq <= self.last:
                self.duplicates += 1
                continue
            self.skipped += seq - self.last - 1
            self.last = seq
            self.received += 1
            stamp = match[2]
            if stamp is not None and load.recording and seq > self.phase_start:
                load.latencies_us.append((now - int(stamp)) // 1000)
        if b"event: axon." in complete:
            self.controls.extend(m[1].decode() for m in CONTROL.finditer(complete))

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error[:300]
        if not self.attached.done():
            self.attached.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.attached.done():
            self.error = self.error or f"closed before the first frame: {exc!r}"
            self.attached.set_result(None)


class Worker:
    """The command loop of one load-client process."""

    def __init__(self) -> None:
        self.load = Load()
        self.subs: list[Subscription] = []
        self.closing = False
        self.cpu_mark = 0.0

    async def connect(self, command: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        host, port = str(command["host"]), int(command["port"])
        auth = command.get("auth")
        template = str(command["path"])
        gate = asyncio.Semaphore(int(command.get("concurrency", 100)))
        timeout = float(command.get("timeout_s", 60.0))
        errors: Counter[str] = Counter()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        new: list[Subscription] = []

        async def attach(task: str, since: int) -> None:
            path = template.format(task=task, since=since)
            sub = Subscription(self.load, task, since, request_bytes(host, port, path, auth))
            self.subs.append(sub)
            new.append(sub)
            async with gate:
                try:
                    await loop.create_connection(lambda: sub, host, port)
                    await asyncio.wait_for(asyncio.shield(sub.attached), timeout)
                except (OSError, TimeoutError) as exc:
                    sub.error = sub.error or f"{type(exc).__name__}: {exc}"
                    if sub.transport is not None:
                        sub.transport.abort()
            if sub.error is not None:
                errors[sub.error.split(":")[0]] += 1

        await asyncio.gather(*(attach(task, since) for task, since in command["subs"]))
        ok = [s for s in new if s.error is None and s.attached_ns]
        return {
            "op": "connected",
            "attached": len(ok),
            "failed": len(new) - len(ok),
            "errors": dict(errors),
            "sample_errors": sorted({s.error for s in new if s.error})[:5],
            "wall_s": round(time.perf_counter() - t0, 3),
            "cpu_s": round(time.process_time() - cpu0, 3),
            "first_byte_ms": [round((s.first_byte_ns - s.sent_ns) / 1e6, 3) for s in ok],
            "first_frame_ms": [round((s.attached_ns - s.sent_ns) / 1e6, 3) for s in ok],
        }

    def record(self, command: dict[str, Any]) -> dict[str, Any]:
        start: dict[str, int] = command.get("start", {})
        for sub in self.subs:
            sub.phase_start = start.get(sub.task, sub.last)
            sub.phase_skipped = sub.skipped
            sub.phase_duplicates = sub.duplicates
        self.load.latencies_us = []
        self.load.recording = True
        self.cpu_mark = time.process_time()
        return {"op": "recording"}

    async def drain(self, command: dict[str, Any]) -> dict[str, Any]:
        expected: dict[str, int] = command["expected"]
        deadline = time.monotonic() + float(command.get("timeout_s", 10.0))
        live = [s for s in self.subs if s.error is None and s.attached_ns]
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            if all(s.last >= expected.get(s.task, 0) or s.closed for s in live):
                break
            await asyncio.sleep(0.02)
        waited = time.monotonic() - t0
        self.load.recording = False
        cpu = time.process_time() - self.cpu_mark
        want = got = behind = 0
        for sub in live:
            begin = sub.phase_start
            end = expected.get(sub.task, begin)
            reached = min(max(sub.last, begin), end)
            delivered = max(0, reached - begin - (sub.skipped - sub.phase_skipped))
            want += max(0, end - begin)
            got += delivered
            if sub.last < end:
                behind += 1
        controls: Counter[str] = Counter(c for s in live for c in s.controls)
        return {
            "op": "drained",
            "subscribers": len(live),
            "expected": want,
            "delivered": got,
            "missing": want - got,
            "subscribers_behind": behind,
            "duplicates": sum(s.duplicates - s.phase_duplicates for s in live),
            "skipped": sum(s.skipped - s.phase_skipped for s in live),
            "closed_early": sum(1 for s in live if s.closed),
            "controls": dict(controls),
            "frames": self.load.frames,
            "drain_wait_s": round(waited, 3),
            "cpu_s": round(cpu, 3),
            "latencies_us": self.load.latencies_us,
        }

    def close(self) -> dict[str, Any]:
        for sub in self.subs:
            if sub.transport is not None:
                sub.transport.close()
        return {"op": "closed"}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 26)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            command: dict[str, Any] = json.loads(line)
            op = command["op"]
            reply: dict[str, Any]
            if op == "connect":
                reply = await self.connect(command)
            elif op == "record":
                reply = self.record(command)
            elif op == "drain":
                reply = await self.drain(command)
            elif op == "close":
                reply = self.close()
            else:
                reply = {"op": "error", "error": f"unknown op {op!r}"}
            sys.stdout.write(json.dumps(reply, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            if op == "close":
                await asyncio.sleep(0.2)  # let the transports send their FINs
                return


# -- single-connection helpers for bench/sse.py ---------------------------------------


async def _open(host: str, port: int, path: str, auth: str | None) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    writer.write(request_bytes(host, port, path, auth))
    return reader, writer


async def probe(
    host: str, port: int, path: str, auth: str | None, *, timeout_s: float = 10.0
) -> tuple[float, float]:
    """Connect, ask for an event stream, and time it: connect -> first byte, and connect
    -> the first event frame (milliseconds). The connection is closed afterwards."""
    t0 = time.perf_counter_ns()
    reader, writer = await _open(host, port, path, auth)
    try:
        async with asyncio.timeout(timeout_s):
            seen = await reader.read(READ_SIZE)
            first_byte = time.perf_counter_ns()
            if not seen.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"probe got {seen[:200]!r}")
            while b"\nid: " not in seen:
                more = await reader.read(READ_SIZE)
                if not more:
                    raise RuntimeError("the stream ended before an event frame")
                seen += more
            first_event = time.perf_counter_ns()
    finally:
        writer.close()
    return (first_byte - t0) / 1e6, (first_event - t0) / 1e6


async def backfill(
    host: str, port: int, path: str, auth: str | None, *, last_seq: int, timeout_s: float = 120.0
) -> dict[str, float]:
    """Read one event stream until the frame of ``last_seq``: frames, bytes and seconds
    from sending the request (the connection is open already) to that frame."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    request = request_bytes(host, port, path, auth)
    end_marker = b"\nid: %d\n" % last_seq
    frames = size = 0
    carry = b""
    try:
        async with asyncio.timeout(timeout_s):
            t0 = time.perf_counter()
            writer.write(request)
            first_byte = 0.0
            while True:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    raise RuntimeError(f"the stream ended after {frames} frames")
                if not first_byte:
                    first_byte = time.perf_counter() - t0
                size += len(chunk)
                frames += (carry[-4:] + chunk).count(b"\nid: ")  # 4 < len(b"\nid: ")
                window = carry + chunk
                if end_marker in window:
                    break
                carry = window[-(len(end_marker) - 1) :]
            elapsed = time.perf_counter() - t0
    finally:
        writer.close()
    return {
        "frames": frames,
        "bytes": size,
        "seconds": elapsed,
        "first_byte_s": first_byte,
        "events_per_s": frames / elapsed,
    }


def main() -> int:
    """Run as a load-client worker until stdin closes or a ``close`` command."""
    raise_fd_limit()
    asyncio.run(Worker().serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
