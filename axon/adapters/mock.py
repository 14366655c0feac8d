"""The ``mock`` adapter: deterministic work for tests, demos and benchmarks.

Args (all optional):
    count: events to emit (default 3); each is a ``tick`` with ``{"i": n}``.
    interval_ms: pause before each tick (default 0).
    payload_bytes: size of a ``"payload"`` string added to each tick (default 0).
    forever: keep ticking until the run is stopped (cancel, timeout, shutdown).
    outcome: ``succeeded`` (default) or ``failed``.
    retryable: with ``outcome: failed``, whether the failure may be retried.
    fail_attempts: fail (retryably) on the first N attempts, then succeed.
    ignore_cancel_ms: on being stopped, keep "working" this long (shielded) first,
        to exercise grace periods.
"""

from __future__ import annotations

from typing import Any

import anyio

from axon.adapters.base import AdapterError, Outcome, TaskContext


def _int(args: dict[str, Any], name: str, default: int, *, low: int = 0, high: int = 2**62) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise AdapterError(f"mock: {name} must be an integer in {low}..{high}", field=name)
    return value


class MockAdapter:
    """Emits ``tick`` events on a schedule and ends as told."""

    name = "mock"

    async def run(self, ctx: TaskContext) -> Outcome:
        args = ctx.args
        count = _int(args, "count", 3)
        interval = _int(args, "interval_ms", 0) / 1000
        payload = "x" * _int(args, "payload_bytes", 0, high=1 << 20)
        fail_attempts = _int(args, "fail_attempts", 0)
        linger = _int(args, "ignore_cancel_ms", 0) / 1000
        outcome = args.get("outcome", "succeeded")
        if outcome not in ("succeeded", "failed"):
            raise AdapterError("mock: outcome must be 'succeeded' or 'failed'", field="outcome")
        forever = bool(args.get("forever", False))
        i = 0
        try:
            while forever or i < count:
                if interval:
                    await anyio.sleep(interval)
                data: dict[str, Any] = {"i": i}
                if payload:
                    data["payload"] = payload
                await ctx.emit("tick", data)
                i += 1
        except anyio.get_cancelled_exc_class():
            if linger:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(min(linger, ctx.stop_grace_s))
            raise
        if ctx.attempt <= fail_attempts:
            return Outcome(
                ok=False,
                data={"error": f"planned failure on attempt {ctx.attempt}"},
                retryable=True,
            )
        if outcome == "failed":
            return Outcome(
                ok=False, data={"error": "mock failure"}, retryable=bool(args.get("retryable"))
            )
        return Outcome(ok=True, data={"ticks": i})
