"""``axon verify``: check a receipt offline — no Redis, no server, no network.

    axon verify RECEIPT --key VKEY [--key VKEY ...] [--events EXPORT.ndjson]
                [--previous CHECKPOINT [--consistency PROOF.json]]

``--key`` is a note verifier key (``GET /v1/receipt-key``, ``axon keys
receipt-show``) or a file of them, one per line; give several to trust a
rotated key too. Prints one line per fact proved and exits 0, or prints
``FAILED: <what>`` and exits 1. Unreadable files or bad usage exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from axon.errors import AxonError, VerificationFailed
from axon.receiptkey import parse_verifier_keys
from axon.verify import verify_receipt

COMMANDS = frozenset({"verify"})


def add_commands(commands: Any) -> None:
    """Register ``verify`` on the ``axon`` subparsers."""
    verify = commands.add_parser(
        "verify",
        help="verify a receipt offline (signature, inclusion, optionally a whole export)",
        description="Verify a C2SP tlog-proof receipt (GET /v1/tasks/ID/receipt or "
        ".../events/SEQ/proof) without any server: the checkpoint's Ed25519 signature and "
        "key id, the event's own fields and its Merkle inclusion; with --events the whole "
        "hash chain and the signed root; with --previous that the log only grew.",
    )
    verify.add_argument("receipt", type=Path, help="the .tlog-proof file ('-' for stdin)")
    verify.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="VKEY",
        help="trusted note verifier key, or a file of them (repeat to trust several)",
    )
    verify.add_argument(
        "--events",
        type=Path,
        metavar="EXPORT.ndjson",
        help="the task's NDJSON export (GET .../events with Accept: application/x-ndjson)",
    )
    verify.add_argument(
        "--previous",
        type=Path,
        metavar="CHECKPOINT",
        help="an older signed checkpoint of the same task, to prove the log only grew",
    )
    verify.add_argument(
        "--consistency",
        type=Path,
        metavar="PROOF.json",
        help="the consistency proof from --previous's size to the receipt's "
        "(GET .../consistency?from=M&to=N); not needed with --events",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``axon verify``; returns the exit code."""
    try:
        keys = parse_verifier_keys(args.key)
        receipt = _read(args.receipt)
        previous = _read(args.previous) if args.previous is not None else None
        consistency = _read(args.consistency) if args.consistency is not None else None
        if args.events is not None and not args.events.is_file():
            raise OSError(f"{args.events}: no such file")
    except OSError as exc:
        print(f"axon verify: error: {exc}", file=sys.stderr)
        return 2
    except AxonError as exc:
        print(f"axon verify: error: {exc.message}", file=sys.stderr)
        return 2
    try:
        events = _lines(args.events) if args.events is not None else None
        proved = verify_receipt(
            receipt, keys, events=events, previous=previous, consistency=consistency
        )
    except VerificationFailed as exc:
        print(f"FAILED: {exc.message}", flush=True)
        return 1
    except OSError as exc:
        print(f"axon verify: error: {exc}", file=sys.stderr)
        return 2
    for line in proved:
        print(f"ok  {line}")
    print("VERIFIED", flush=True)
    return 0


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    return path.read_bytes()


def _lines(path: Path) -> Iterator[bytes]:
    """The export's lines without their newline, streamed (exports can be large)."""
    with path.open("rb") as handle:
        for line in handle:
            yield line[:-1] if line.endswith(b"\n") else line
