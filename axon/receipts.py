"""Signed checkpoints, inclusion proofs and receipts of a task's log (contract 3).

A checkpoint is a C2SP ``tlog-checkpoint`` body — origin ``<deployment>/<task>``,
tree size, base64 root — signed as a C2SP ``signed-note`` with the deployment's
Ed25519 key. A proof of one event is a C2SP ``tlog-proof@v1`` file whose extra
data is the event's exact bytes; the task's receipt is the proof of its
terminal event. Anyone holding the verifier key checks them offline
(``axon verify``, Go's sumdb/note and tlog, openssl).

Two rules keep signed statements consistent: a size-0 tree is never signed
(every task has at least its ``queued`` event), and a size is never signed
with two different roots — the tree is a pure function of immutable event
bytes, and the checkpoint script refuses a second root for a stored size.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import msgspec

from axon import lua
from axon.checkpoint import Checkpoint, origin_for
from axon.errors import (
    EventNotFound,
    InvalidArgument,
    ReceiptsUnavailable,
    SigningConflict,
    TaskNotFinished,
    TaskNotFound,
)
from axon.keys import check_task_id
from axon.notes import NoteSigner, sign_note, split_note
from axon.records import TERMINAL_STATES
from axon.store import Store, text_of
from axon.tlogproof import TlogProof
from axon.tree import TaskTrees


class SignedCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint and its signed note text."""

    size: int
    root: bytes
    note: str


class ConsistencyProof(msgspec.Struct, frozen=True, kw_only=True):
    """RFC 6962 consistency proof between two sizes of a task's log (the JSON the
    API serves and ``axon verify --consistency`` reads; hashes in base64)."""

    task: str
    origin: str
    old_size: int
    new_size: int
    old_root: str
    new_root: str
    proof: list[str]


class Receipts:
    """Checkpoints and proofs for tasks, signed with ``signer`` (None: receipts are off)."""

    def __init__(
        self, store: Store, signer: NoteSigner | None, *, trusted: Sequence[str] = ()
    ) -> None:
        self.store = store
        self.signer = signer
        self.trusted = tuple(trusted)
        self.trees = TaskTrees(store)

    def verifier_keys(self) -> list[str]:
        """Note verifier keys receipts verify with: the signing key's, then earlier ones."""
        keys = [self.signer.verifier_key()] if self.signer is not None else []
        keys += [key for key in self.trusted if key not in keys]
        if not keys:
            self._signer()
        return keys

    def _signer(self) -> NoteSigner:
        if self.signer is None:
            raise ReceiptsUnavailable(
                "this server has no receipt signing key: run `axon keys receipt-init` "
                "(or set AXON_RECEIPT_KEY) and restart it"
            )
        return self.signer

    def origin(self, task_id: str) -> str:
        """The checkpoint origin line of a task: ``<deployment origin>/<task id>``."""
        return origin_for(self._signer().name, task_id)

    async def checkpoint(self, task_id: str, *, size: int | None = None) -> SignedCheckpoint:
        """A signed checkpoint of the task's log at ``size`` (default: its head).

        The latest one is stored and reused while the log has not grown, so a
        finished task always answers with the same checkpoint.
        """
        signer = self._signer()
        head, stored = await self._state(task_id)
        return await self._checkpoint(task_id, signer, head if size is None else size, head, stored)

    async def _checkpoint(
        self,
        task_id: str,
        signer: NoteSigner,
        size: int,
        head: int,
        stored: SignedCheckpoint | None,
    ) -> SignedCheckpoint:
        if not 1 <= size <= head:
            raise EventNotFound(
                f"task {task_id} has {head} events; cannot sign a tree of {size}",
                task_id=task_id,
                head_seq=head,
            )
        if stored is not None and stored.size == size and _signed_by(stored.note, signer):
            return stored
        await self.trees.extend_to(task_id, size)
        root = await self.trees.root(task_id, size)
        body = Checkpoint(origin=origin_for(signer.name, task_id), size=size, root=root).body()
        note = sign_note(body, [signer])
        root_b64 = base64.b64encode(root).decode()
        reply = await self.store.run_script(
            lua.CHECKPOINT_PUT, [self.store.keys.merkle(task_id)], [size, root_b64, note]
        )
        status = text_of(reply[0])
        if status == "conflict":
            raise SigningConflict(
                f"refusing to sign task {task_id} at size {size} with root {root_b64}: "
                f"that size was signed with root {text_of(reply[1])}",
                task_id=task_id,
                size=size,
            )
        return SignedCheckpoint(size=size, root=root, note=note)

    async def _state(self, task_id: str) -> tuple[int, SignedCheckpoint | None]:
        """The task's head seq and its stored latest checkpoint, in one round trip.

        Raises:
            TaskNotFound: no such task.
        """
        check_task_id(task_id)
        keys = self.store.keys
        async with self.store.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.task(task_id), "head_seq")
            pipe.hmget(keys.merkle(task_id), ["cp_size", "cp_root", "cp_note"])
            head, (size, root, note) = await self.store.call(pipe.execute())
        if head is None:
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        if size is None or root is None or note is None:
            return int(head), None
        stored = SignedCheckpoint(size=int(size), root=base64.b64decode(root), note=text_of(note))
        return int(head), stored

    async def proof(self, task_id: str, seq: int) -> str:
        """A ``tlog-proof@v1`` file proving event ``seq`` is in the task's signed log."""
        if seq < 1:
            raise InvalidArgument("seq must be at least 1", seq=seq)
        signer = self._signer()
        head, stored = await self._state(task_id)
        if seq > head:
            raise EventNotFound(
                f"task {task_id} has {head} events, no seq {seq}",
                task_id=task_id,
                seq=seq,
                head_seq=head,
            )
        checkpoint = await self._checkpoint(task_id, signer, head, head, stored)
        path = await self.trees.inclusion(task_id, seq - 1, checkpoint.size)
        raw = (await self.store.read_raw(task_id, after_seq=seq - 1, limit=1))[0]
        return TlogProof(extra=raw, index=seq - 1, path=path, checkpoint=checkpoint.note).encode()

    async def receipt(self, task_id: str) -> str:
        """The proof of the task's terminal event: "task X ended with outcome Y".

        Raises:
            TaskNotFinished: the task has not reached a terminal state yet.
        """
        record = await self.store.get_task(task_id)
        if record.state not in TERMINAL_STATES:
            raise TaskNotFinished(
                f"task {task_id} is {record.state.value}: its receipt exists once it has "
                "finished (follow its events, then ask again)",
                task_id=task_id,
                state=record.state.value,
            )
        return await self.proof(task_id, record.head_seq)

    async def consistency(self, task_id: str, old: int, new: int) -> ConsistencyProof:
        """The proof that the task's log of ``new`` events extends the one of ``old``."""
        self._signer()
        head = (await self.store.head(task_id)).seq
        if not 1 <= old <= new:
            raise InvalidArgument(
                "need 1 <= from <= to", task_id=task_id, old_size=old, new_size=new
            )
        if new > head:
            raise EventNotFound(
                f"task {task_id} has {head} events; no tree of {new}",
                task_id=task_id,
                head_seq=head,
            )
        await self.trees.extend_to(task_id, new)
        proof = await self.trees.consistency(task_id, old, new)
        old_root = await self.trees.root(task_id, old)
        new_root = await self.trees.root(task_id, new)
        return ConsistencyProof(
            task=task_id,
            origin=self.origin(task_id),
            old_size=old,
            new_size=new,
            old_root=base64.b64encode(old_root).decode(),
            new_root=base64.b64encode(new_root).decode(),
            proof=[base64.b64encode(h).decode() for h in proof],
        )


def _signed_by(note: str, signer: NoteSigner) -> bool:
    """Whether ``note`` carries a signature of ``signer``'s name and key id."""
    _, signatures = split_note(note)
    return any(s.name == signer.name and s.key_id == signer.key_id for s in signatures)
