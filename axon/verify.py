"""Offline verification of receipts: no Redis, no server, only files and public keys.

What ``axon verify`` proves about a ``tlog-proof@v1`` receipt, step by step,
each step stating what it established or exactly what failed:

1. the checkpoint is signed by a trusted key (signature and key id);
2. its origin names a task of that key's deployment;
3. the event carried in the proof's extra data is that task's event number
   ``index + 1`` (its own fields);
4. the event is leaf ``index`` of the signed tree (RFC 9162 inclusion check);
5. given the task's export (NDJSON, one event's exact bytes per line): the
   whole chain verifies, the root of its first ``size`` events is the signed
   root, and the receipt's event is byte-identical to the export's;
6. given an older signed checkpoint: the newer tree extends it (an RFC 9162
   consistency proof from ``--consistency``, or recomputed from the export).

Pure apart from the inputs it is handed; the CLI (``axon.cli_verify``) reads files.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn, ParamSpec, TypeVar

import msgspec

from axon import merkle
from axon.chain import ChainVerifier
from axon.checkpoint import Checkpoint, task_of
from axon.errors import AxonError, VerificationFailed
from axon.events import TERMINAL_KINDS, decode_event
from axon.notes import NoteVerifier, OpenedNote, open_note
from axon.receipts import ConsistencyProof
from axon.tlogproof import TlogProof

P = ParamSpec("P")
T = TypeVar("T")

_consistency_decoder = msgspec.json.Decoder(ConsistencyProof)


def verify_receipt(
    receipt: bytes | str,
    keys: Sequence[NoteVerifier],
    *,
    events: Iterable[bytes] | None = None,
    previous: bytes | str | None = None,
    consistency: bytes | None = None,
) -> list[str]:
    """Verify a receipt; return one line per fact proved.

    Raises:
        VerificationFailed: a check failed; the message names which and why.
    """
    proved: list[str] = []
    proof = _step("the receipt is not a c2sp.org/tlog-proof@v1 file", TlogProof.parse, receipt)
    opened = _open(proof.checkpoint, keys, "the receipt's checkpoint")
    signer = opened.verified[0]
    proved.append(f"signature: valid Ed25519 signature by {signer.name}+{signer.key_id:08x}")
    checkpoint = _step("the receipt's checkpoint body", Checkpoint.parse, opened.text)
    task_id = _step(
        "the checkpoint origin does not name a task of the signing deployment",
        task_of,
        checkpoint.origin,
        signer.name,
    )
    root_b64 = base64.b64encode(checkpoint.root).decode()
    proved.append(
        f"checkpoint: task {task_id} had {checkpoint.size} events, Merkle root {root_b64}"
    )

    if proof.extra is None:
        _fail("the receipt carries no event bytes (no 'extra' line)")
    raw = proof.extra
    event = _step("the receipt's event is not a well-formed event", decode_event, raw)
    if event.task != task_id:
        _fail(f"the receipt's event belongs to task {event.task}, the checkpoint to {task_id}")
    if event.seq != proof.index + 1:
        _fail(f"the receipt's event has seq {event.seq} but sits at index {proof.index}")
    if proof.index >= checkpoint.size:
        _fail(f"index {proof.index} is outside the checkpointed tree of {checkpoint.size}")
    digest = hashlib.sha256(raw).hexdigest()
    ended = f" (the task ended: {event.kind})" if event.kind in TERMINAL_KINDS else ""
    proved.append(f"event: seq {event.seq}, kind {event.kind!r}, sha256 {digest}{ended}")
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(raw), proof.index, checkpoint.size, proof.path, checkpoint.root
        )
    except merkle.ProofError as exc:
        _fail(f"inclusion proof: {exc}")
    proved.append(
        f"inclusion: the event is leaf {proof.index} of the signed tree "
        f"({len(proof.path)}-hash audit path, RFC 9162)"
    )

    old: Checkpoint | None = None
    if previous is not None:
        old_opened = _open(previous, keys, "the previous checkpoint")
        old = _step("the previous checkpoint body", Checkpoint.parse, old_opened.text)
        if old.origin != checkpoint.origin:
            _fail(f"the previous checkpoint is of {old.origin}, not {checkpoint.origin}")
        if old.size > checkpoint.size:
            _fail(
                f"the previous checkpoint ({old.size} events) is larger than the receipt's "
                f"({checkpoint.size}); pass them the other way round"
            )

    old_root_from_export: bytes | None = None
    if events is not None:
        old_root_from_export = _check_export(
            events, task_id, checkpoint, raw, event.seq, old.size if old else None, proved
        )

    if old is not None:
        _check_consistency(old, checkpoint, consistency, old_root_from_export, proved)
    return proved


def _check_export(
    events: Iterable[bytes],
    task_id: str,
    checkpoint: Checkpoint,
    raw: bytes,
    receipt_seq: int,
    old_size: int | None,
    proved: list[str],
) -> bytes | None:
    """Verify the export's chain and its root at the checkpoint's size."""
    chain = ChainVerifier(task=task_id)
    tree = merkle.TreeBuilder()
    old_root: bytes | None = None
    root: bytes | None = None
    seq = 0
    for line in events:
        seq += 1
        try:
            chain.feed(line)
        except AxonError as exc:
            _fail(f"export line {seq}: {exc.message}")
        if seq <= checkpoint.size:
            tree.add(line)
            if seq == old_size:
                old_root = tree.root()
            if seq == checkpoint.size:
                root = tree.root()
        if seq == receipt_seq and line != raw:
            _fail(f"export line {seq} differs from the event bytes in the receipt")
    if seq < checkpoint.size:
        _fail(f"the export holds {seq} events; the checkpoint covers {checkpoint.size}")
    if root != checkpoint.root:
        _fail(
            f"the root of the export's first {checkpoint.size} events is "
            f"{base64.b64encode(root or b'').decode()}, not the signed root"
        )
    proved.append(
        f"export: {seq} events, hash chain intact from seq 1 to {seq} "
        f"(head sha256 {chain.head.hash}); its first {checkpoint.size} events have the "
        "signed root and its event "
        f"{receipt_seq} is byte-identical to the receipt's"
    )
    return old_root


def _check_consistency(
    old: Checkpoint,
    new: Checkpoint,
    consistency: bytes | None,
    old_root_from_export: bytes | None,
    proved: list[str],
) -> None:
    if old.size == new.size:
        if old.root != new.root:
            _fail(f"two different roots were signed for size {old.size}: the log forked")
        proved.append(f"consistency: the previous checkpoint is the same tree ({old.size} events)")
        return
    if consistency is not None:
        parsed = _step(
            "the consistency proof is not the JSON of GET .../consistency",
            _consistency_decoder.decode,
            consistency,
        )
        if (parsed.old_size, parsed.new_size) != (old.size, new.size):
            _fail(
                f"the consistency proof is from {parsed.old_size} to {parsed.new_size}, "
                f"the checkpoints are {old.size} and {new.size}"
            )
        hashes = [_b64_hash(h) for h in parsed.proof]
        try:
            merkle.verify_consistency(old.size, new.size, old.root, new.root, hashes)
        except merkle.ProofError as exc:
            _fail(f"consistency proof: {exc}")
        proved.append(
            f"consistency: the tree of {new.size} events extends the previous checkpoint's "
            f"{old.size} ({len(hashes)}-hash proof, RFC 9162)"
        )
        return
    if old_root_from_export is not None:
        if old_root_from_export != old.root:
            _fail(
                f"the export's first {old.size} events do not have the previous checkpoint's root"
            )
        proved.append(
            f"consistency: the previous checkpoint's {old.size} events are a prefix of the "
            "export (root recomputed)"
        )
        return
    _fail("to check --previous, give --consistency PROOF.json or --events EXPORT.ndjson")


def _b64_hash(value: str) -> bytes:
    try:
        decoded = base64.b64decode(value, validate=True)
    except ValueError:
        decoded = b""
    if len(decoded) != merkle.HASH_SIZE:
        _fail("the consistency proof holds a value that is not a base64 SHA-256 hash")
    return decoded


def _open(note: bytes | str, keys: Sequence[NoteVerifier], what: str) -> OpenedNote:
    try:
        return open_note(note, keys)
    except AxonError as exc:
        _fail(f"{what}: {exc.message}")


def _step(what: str, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a parsing step; turn its error into ``VerificationFailed`` saying ``what``."""
    try:
        return function(*args, **kwargs)
    except (AxonError, msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        reason = exc.message if isinstance(exc, AxonError) else str(exc)
        raise VerificationFailed(f"{what}: {reason}") from None


def _fail(message: str) -> NoReturn:
    raise VerificationFailed(message)
