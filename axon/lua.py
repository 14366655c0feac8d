"""Loading the Lua scripts the store runs, with the state machine compiled in.

Scripts live as ``.lua`` files next to this package so they read as Lua. The
placeholders ``__TRANSITIONS__`` and ``__TERMINAL__`` are filled from
``axon.records`` at import, so Python and Redis enforce one and the same table.
Scripts are run with EVALSHA and fall back to EVAL on NOSCRIPT, which also
caches them on whichever node (single server or cluster shard) ran them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from axon.records import TERMINAL_STATES, TRANSITIONS


def _lua_set(names: Iterable[str]) -> str:
    items = sorted(str(name) for name in names)
    return "{" + ", ".join(f"{name} = true" for name in items) + "}"


def _lua_transitions() -> str:
    rows = [f"{state.value} = {_lua_set(targets)}" for state, targets in TRANSITIONS.items()]
    return "{" + ", ".join(rows) + "}"


class Script:
    """One Lua script: its source, its SHA-1 and a way to run it on any client."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        text = resources.files("axon.scripts").joinpath(f"{name}.lua").read_text("utf-8")
        text = text.replace("__TRANSITIONS__", _lua_transitions())
        text = text.replace("__TERMINAL__", _lua_set(TERMINAL_STATES))
        self.name = name
        self.source = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    def evalsha_args(self, keys: list[str], args: list[Any]) -> list[Any]:
        """The argument list of ``EVALSHA`` (without the command name)."""
        return [self.sha, len(keys), *keys, *args]

    def eval_args(self, keys: list[str], args: list[Any]) -> list[Any]:
        """The argument list of ``EVAL`` (without the command name)."""
        return [self.source, len(keys), *keys, *args]

    async def run(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        """Run on ``client`` (``Redis`` or ``RedisCluster``); routed by ``keys[0]`` on a cluster."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


CREATE = Script("create")
APPEND = Script("append")
CANCEL = Script("cancel")
HEARTBEAT = Script("heartbeat")
ENQUEUE = Script("enqueue")
CLAIM_NEXT = Script("claim_next")
REQUEUE = Script("requeue")
SCHEDULE_RETRY = Script("schedule_retry")
PROMOTE_DUE = Script("promote_due")
UNQUEUE = Script("unqueue")
RELEASE = Script("release")
UNFINISHED = Script("unfinished")
TREE_EXTEND = Script("tree_extend")
CHECKPOINT_PUT = Script("checkpoint_put")
COMPACT_COMMIT = Script("compact_commit")

ALL = (
    CREATE, APPEND, CANCEL, HEARTBEAT, ENQUEUE, CLAIM_NEXT, REQUEUE, SCHEDULE_RETRY,
    PROMOTE_DUE, UNQUEUE, RELEASE, UNFINISHED, TREE_EXTEND, CHECKPOINT_PUT, COMPACT_COMMIT,
)  # fmt: skip
"""Every script, for loading them ahead of use (``Store.load_scripts``)."""
