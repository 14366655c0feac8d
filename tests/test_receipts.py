"""Receipts on real servers: stored trees, signed checkpoints, proofs, and independent checks.

The independent checks verify what the API serves with code that is not ours:
the ``openssl`` CLI for the Ed25519 signature and the key id (computed from
the note text), and an RFC 9162 inclusion verifier written here from the RFC
text with nothing but ``hashlib``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import httpx
import msgspec
import pytest

from axon import merkle
from axon.errors import (
    EventNotFound,
    ReceiptsUnavailable,
    SigningConflict,
    TaskNotFinished,
    VerificationFailed,
)
from axon.notes import NoteSigner, NoteVerifier, open_note
from axon.queue import Queue
from axon.receipts import Receipts
from axon.records import TaskSpec, TaskState
from axon.store import Store
from axon.tree import TaskTrees
from axon.verify import verify_receipt
from axon.writer import EventWriter
from tests.conftest import Api

pytestmark = pytest.mark.anyio

SIGNER = NoteSigner.generate("axon.test/receipts")
KEYS = [NoteVerifier.from_verifier_key(SIGNER.verifier_key())]


async def task_with_events(store: Store, n: int, *, finish: bool = False) -> EventWriter:
    """A task with ``n`` events in all (queued, claimed, steps, and a terminal one if asked)."""
    record = await Queue(store).submit(TaskSpec(tenant="acme", adapter="mock"))
    writer = EventWriter(store, record.id, epoch=0)
    await writer.transition(TaskState.RUNNING, "claimed", new_epoch=1)
    steps = n - 2 - (1 if finish else 0)
    if steps > 0:
        await writer.emit_many([("step", {"i": i}) for i in range(steps)])
    if finish:
        await writer.finish(TaskState.SUCCEEDED, {"ok": True})
    return writer


class Outcome(NamedTuple):
    """A finished ``axon verify`` process."""

    returncode: int
    stdout: str
    stderr: str


async def all_raw(store: Store, task_id: str) -> list[bytes]:
    return [e.raw async for e in store.iter_events(task_id)]


# -- the stored tree ------------------------------------------------------------


async def test_stored_tree_matches_a_recomputation_at_every_size(store: Store) -> None:
    """Extending the stored tree in uneven steps gives, at every size, the root and audit
    paths a from-scratch computation over the event bytes gives."""
    writer = await task_with_events(store, 37)
    raws = await all_raw(store, writer.task_id)
    trees = TaskTrees(store)
    for target in (1, 2, 5, 16, 17, 37):
        assert await trees.extend_to(writer.task_id, target) == target
        builder = merkle.TreeBuilder()
        for raw in raws[:target]:
            builder.add(raw)
        assert await trees.root(writer.task_id, target) == builder.root()
        for index in {0, target // 2, target - 1}:
            path = await trees.inclusion(writer.task_id, index, target)
            merkle.verify_inclusion(
                merkle.leaf_hash(raws[index]), index, target, path, builder.root()
            )


async def test_concurrent_extensions_store_each_hash_once(store: Store) -> None:
    """Several processes extending one tree at once leave exactly the tree one would."""
    writer = await task_with_events(store, 300)
    trees = [TaskTrees(store) for _ in range(4)]
    async with anyio.create_task_group() as group:
        for tree in trees:
            group.start_soon(tree.extend_to, writer.task_id, 300)
    raws = await all_raw(store, writer.task_id)
    count = merkle.stored_hash_count(300)
    stored = await trees[0].read_hashes(writer.task_id, list(range(count)))
    expected, _ = merkle.append_leaves(0, [], [merkle.leaf_hash(r) for r in raws])
    assert stored == expected
    assert await trees[0].size(writer.task_id) == 300


# -- checkpoints and proofs -------------------------------------------------------


async def test_proof_of_every_event_verifies_offline(store: Store) -> None:
    """Every event's tlog-proof verifies with ``axon.verify`` alone, against the export."""
    writer = await task_with_events(store, 12, finish=True)
    receipts = Receipts(store, SIGNER)
    raws = await all_raw(store, writer.task_id)
    for seq in range(1, 13):
        proof = await receipts.proof(writer.task_id, seq)
        proved = verify_receipt(proof, KEYS, events=iter(raws))
        assert any(f"seq {seq}," in line for line in proved)
    receipt = await receipts.receipt(writer.task_id)
    assert "the task ended: succeeded" in "\n".join(verify_receipt(receipt, KEYS))


async def test_checkpoint_is_stable_and_grows_consistently(store: Store) -> None:
    """A log that did not grow gets the same checkpoint; a grown one a consistent one."""
    writer = await task_with_events(store, 5)
    receipts = Receipts(store, SIGNER)
    first = await receipts.checkpoint(writer.task_id)
    assert (await receipts.checkpoint(writer.task_id)).note == first.note
    assert first.size == 5
    await writer.emit_many([("step", {"i": i}) for i in range(20)])
    second = await receipts.checkpoint(writer.task_id)
    assert second.size == 25
    consistency = await receipts.consistency(writer.task_id, 5, 25)
    merkle.verify_consistency(
        5, 25, first.root, second.root, [base64.b64decode(h) for h in consistency.proof]
    )
    proof = await receipts.proof(writer.task_id, 25)
    proved = verify_receipt(
        proof,
        KEYS,
        previous=first.note,
        consistency=json.dumps(
            {
                "task": consistency.task,
                "origin": consistency.origin,
                "old_size": 5,
                "new_size": 25,
                "old_root": consistency.old_root,
                "new_root": consistency.new_root,
                "proof": consistency.proof,
            }
        ).encode(),
    )
    assert any(line.startswith("consistency:") for line in proved)


async def test_never_two_roots_for_one_size(store: Store) -> None:
    """If a different root were ever stored for a size, signing that size again is refused."""
    writer = await task_with_events(store, 4)
    receipts = Receipts(store, SIGNER)
    await receipts.checkpoint(writer.task_id)
    forged = base64.b64encode(b"\x00" * 32).decode()
    await store.redis.hset(store.keys.merkle(writer.task_id), "cp_root", forged)
    other = Receipts(store, NoteSigner.generate("axon.test/receipts"))  # forces a re-sign
    with pytest.raises(SigningConflict):
        await other.checkpoint(writer.task_id)


async def test_refusals_are_explicit(store: Store) -> None:
    """No key: 'receipts unavailable'; a running task has no receipt; no proof past the head."""
    writer = await task_with_events(store, 3)
    with pytest.raises(ReceiptsUnavailable):
        await Receipts(store, None).checkpoint(writer.task_id)
    receipts = Receipts(store, SIGNER)
    with pytest.raises(TaskNotFinished):
        await receipts.receipt(writer.task_id)
    with pytest.raises(EventNotFound):
        await receipts.proof(writer.task_id, 4)
    with pytest.raises(EventNotFound):
        await receipts.checkpoint(writer.task_id, size=0)


# -- over HTTP, checked by implementations that are not ours -----------------------


def rfc9162_verify_inclusion(
    leaf: bytes, index: int, size: int, path: list[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2, transcribed step by step."""
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def parse_receipt_by_hand(text: str) -> tuple[bytes, int, list[bytes], str]:
    """Split a tlog-proof file per the C2SP text, without our parser."""
    head, _, note = text.partition("\n\n")
    lines = head.split("\n")
    assert lines[0] == "c2sp.org/tlog-proof@v1"
    assert lines[1].startswith("extra ")
    assert lines[2].startswith("index ")
    extra = base64.b64decode(lines[1][len("extra ") :])
    return extra, int(lines[2][len("index ") :]), [base64.b64decode(x) for x in lines[3:]], note


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_receipt_from_the_api_verifies_with_openssl_and_the_rfc(
    make_api: Callable[..., Api], tmp_path: Path
) -> None:
    """The receipt served over HTTP verifies with openssl (signature, key id) and an RFC
    9162 verifier written from the RFC; the verifier key is the one the API publishes."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed")
    api = make_api()
    writer = await task_with_events(api.store, 9, finish=True)
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        receipt = (await http.get(f"/v1/tasks/{writer.task_id}/receipt")).text
        vkey = (await http.get("/v1/receipt-key")).text.strip()
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    public = base64.b64decode(key_b64)[1:]
    extra, index, path, note = parse_receipt_by_hand(receipt)
    body, _, signatures = note.partition("\n\n")
    body += "\n"
    signature_line = signatures.strip().split("\n")[0]
    assert signature_line.startswith(f"\u2014 {name} ")
    blob = base64.b64decode(signature_line.split(" ")[2])

    # key id: SHA-256(name || 0x0A || 0x01 || key)[:4], computed by openssl
    (tmp_path / "idinput").write_bytes(name.encode() + b"\n\x01" + public)
    digest = (
        await anyio.run_process(
            ["openssl", "dgst", "-sha256", "-binary", str(tmp_path / "idinput")]
        )
    ).stdout
    assert digest[:4].hex() == key_id_hex == blob[:4].hex()

    # signature: Ed25519 over the checkpoint body, checked by openssl
    spki = bytes.fromhex("302a300506032b6570032100") + public
    pem = b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(spki) + b"-----END PUBLIC KEY-----\n"
    (tmp_path / "pub.pem").write_bytes(pem)
    (tmp_path / "body").write_bytes(body.encode())
    (tmp_path / "sig").write_bytes(blob[4:])
    check = await anyio.run_process(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
         "-rawin", "-in", str(tmp_path / "body"), "-sigfile", str(tmp_path / "sig")],
        check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr

    # inclusion: the RFC's algorithm over the event bytes in the receipt
    origin, size, root_b64 = body.rstrip("\n").split("\n")
    assert origin == f"{name}/{writer.task_id}"
    leaf = hashlib.sha256(b"\x00" + extra).digest()
    assert rfc9162_verify_inclusion(leaf, index, int(size), path, base64.b64decode(root_b64))
    assert json.loads(extra)["kind"] == "succeeded"
    assert not rfc9162_verify_inclusion(
        leaf, index, int(size), path, hashlib.sha256(b"other").digest()
    )


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_receipt_routes(make_api: Callable[..., Api]) -> None:
    """Checkpoint, proof, receipt and consistency over HTTP, with their refusals."""
    api = make_api()
    running = await task_with_events(api.store, 6)
    other_tenant = await Queue(api.store).submit(TaskSpec(tenant="other", adapter="mock"))
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        base = f"/v1/tasks/{running.task_id}"
        checkpoint = await http.get(f"{base}/checkpoint")
        assert checkpoint.status_code == 200
        assert checkpoint.headers["content-type"].startswith("text/plain")
        opened = open_note(checkpoint.text, [api.signer.verifier()])  # type: ignore[union-attr]
        assert opened.text.split("\n")[1] == "6"
        proof = await http.get(f"{base}/events/3/proof")
        assert proof.status_code == 200
        assert proof.text.startswith("c2sp.org/tlog-proof@v1\n")
        receipt = await http.get(f"{base}/receipt")
        assert receipt.status_code == 409
        assert receipt.json()["error"]["code"] == "task_not_finished"
        consistency = await http.get(f"{base}/consistency", params={"from": 2, "to": 6})
        assert consistency.status_code == 200
        assert consistency.json()["new_size"] == 6
        for path, status, code in [
            (f"{base}/events/7/proof", 404, "event_not_found"),
            (f"{base}/events/0/proof", 400, "invalid_argument"),
            (f"{base}/events/x/proof", 400, "invalid_argument"),
            (f"{base}/consistency?from=5&to=2", 400, "invalid_argument"),
            (f"{base}/consistency?from=1&to=9", 404, "event_not_found"),
            (f"{base}/checkpoint?x=1", 400, "invalid_argument"),
            (f"/v1/tasks/{other_tenant.id}/checkpoint", 404, "task_not_found"),
            (f"/v1/tasks/{other_tenant.id}/events/1/proof", 404, "task_not_found"),
        ]:
            reply = await http.get(path)
            assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), path
    off = make_api(receipts=False)
    async with httpx.AsyncClient(base_url=off.url, headers=off.headers(), timeout=10) as http:
        for path in (f"/v1/tasks/{running.task_id}/checkpoint", "/v1/receipt-key"):
            reply = await http.get(path)
            assert reply.status_code == 503, path
            assert reply.json()["error"]["code"] == "receipts_unavailable"
            assert "receipt-init" in reply.json()["error"]["message"]


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_axon_verify_command(make_api: Callable[..., Api], tmp_path: Path) -> None:
    """``axon verify`` on files from the API: exit 0 with what it proved; a tampered
    receipt, a wrong key or a doctored export exit 1 naming the failure; bad usage 2."""
    api = make_api()
    writer = await task_with_events(api.store, 20, finish=True)
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        base = f"/v1/tasks/{writer.task_id}"
        (tmp_path / "r.tlog-proof").write_text((await http.get(f"{base}/receipt")).text)
        (tmp_path / "vkey").write_text((await http.get("/v1/receipt-key")).text)
        export = await http.get(f"{base}/events", headers={"accept": "application/x-ndjson"})
        (tmp_path / "events.ndjson").write_bytes(export.content)

    async def verify(*args: str) -> Outcome:
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-m", "axon", "verify", *args], check=False
            )
        return Outcome(done.returncode, done.stdout.decode(), done.stderr.decode())

    good = await verify(
        str(tmp_path / "r.tlog-proof"), "--key", str(tmp_path / "vkey"),
        "--events", str(tmp_path / "events.ndjson"),
    )  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    assert "VERIFIED" in good.stdout
    assert "hash chain intact from seq 1 to 20" in good.stdout

    text = (tmp_path / "r.tlog-proof").read_text()
    event_line = text.split("\n")[1]
    doctored = json.loads(base64.b64decode(event_line[len("extra ") :]))
    doctored["data"] = {"ok": False}
    (tmp_path / "bad.tlog-proof").write_text(
        text.replace(
            event_line,
            "extra "
            + base64.b64encode(json.dumps(doctored, separators=(",", ":")).encode()).decode(),
        )
    )
    bad = await verify(str(tmp_path / "bad.tlog-proof"), "--key", str(tmp_path / "vkey"))
    assert bad.returncode == 1
    assert "FAILED: inclusion proof" in bad.stdout, bad.stdout

    stranger = NoteSigner.generate("axon.test/ci").verifier_key()
    wrong = await verify(str(tmp_path / "r.tlog-proof"), "--key", stranger)
    assert wrong.returncode == 1
    assert "no signature from a trusted key" in wrong.stdout

    lines = (tmp_path / "events.ndjson").read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b'"i":2', b'"i":3')
    (tmp_path / "doctored.ndjson").write_bytes(b"\n".join(lines))
    chain = await verify(
        str(tmp_path / "r.tlog-proof"), "--key", str(tmp_path / "vkey"),
        "--events", str(tmp_path / "doctored.ndjson"),
    )  # fmt: skip
    assert chain.returncode == 1
    assert "export line 6" in chain.stdout, chain.stdout

    usage = await verify(str(tmp_path / "missing"), "--key", str(tmp_path / "vkey"))
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr


async def test_verify_names_what_failed(store: Store) -> None:
    """``verify_receipt`` refuses, naming the check: a previous checkpoint of another
    task, a larger one, a forged consistency proof, a missing one, and an export that
    stops short of the checkpoint."""
    first = await task_with_events(store, 4)
    other = await task_with_events(store, 4)
    receipts = Receipts(store, SIGNER)
    old = await receipts.checkpoint(first.task_id)
    foreign = await receipts.checkpoint(other.task_id)
    early = await receipts.proof(first.task_id, 2)
    await first.emit_many([("step", {"i": i}) for i in range(10)])
    proof = await receipts.proof(first.task_id, 14)
    consistency = await receipts.consistency(first.task_id, 4, 14)
    newer_small = await receipts.proof(first.task_id, 2)

    def failure(**kwargs: Any) -> str:
        with pytest.raises(VerificationFailed) as caught:
            verify_receipt(kwargs.pop("receipt", proof), KEYS, **kwargs)
        return caught.value.message

    assert "is of " in failure(previous=foreign.note, consistency=b"{}")
    assert "give --consistency" in failure(previous=old.note)
    forged = msgspec.json.encode(
        msgspec.structs.replace(consistency, proof=[base64.b64encode(b"\x00" * 32).decode()])
    )
    assert failure(previous=old.note, consistency=forged).startswith("consistency proof:")
    later = (await receipts.checkpoint(first.task_id)).note
    assert "larger than" in failure(receipt=early, previous=later)
    raws = await all_raw(store, first.task_id)
    assert "the export holds 13 events" in failure(events=iter(raws[:13]))
    good = msgspec.json.encode(consistency)
    assert any(
        line.startswith("consistency:")
        for line in verify_receipt(newer_small, KEYS, previous=old.note, consistency=good)
    )


GOCODE = Path("/usr/share/gocode/src/golang.org/x/mod/sumdb")
GO_READY = shutil.which("go") is not None and GOCODE.is_dir()


@pytest.mark.parametrize("backend", ["valkey"], indirect=True)
async def test_go_sumdb_packages_accept_receipts_unchanged(
    make_api: Callable[..., Api], tmp_path: Path
) -> None:
    """The Go team's ``sumdb/note`` and ``sumdb/tlog`` (Debian's golang-golang-x-mod-dev,
    installed by ``make test``) accept a receipt, its checkpoint and a consistency proof
    from the API unchanged, and reject a tampered receipt."""
    if not GO_READY:
        pytest.skip("Go and golang-golang-x-mod-dev are not installed (make verifiers)")
    binary = tmp_path / "receiptcheck"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": "/usr/share/gocode",
        "GOCACHE": str(tmp_path / "gocache"),
        "GOFLAGS": "",
    }
    source = Path(__file__).parent / "go" / "receiptcheck.go"
    with anyio.fail_after(120):
        await anyio.run_process(["go", "build", "-o", str(binary), str(source)], env=env)
    api = make_api()
    writer = await task_with_events(api.store, 5)
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        base = f"/v1/tasks/{writer.task_id}"
        (tmp_path / "old").write_text((await http.get(f"{base}/checkpoint")).text)
        await writer.emit_many([("step", {"i": i}) for i in range(40)])
        await writer.finish(TaskState.SUCCEEDED)
        (tmp_path / "receipt").write_text((await http.get(f"{base}/receipt")).text)
        consistency = await http.get(f"{base}/consistency", params={"from": 5})
        (tmp_path / "consistency.json").write_bytes(consistency.content)
        (tmp_path / "vkey").write_text((await http.get("/v1/receipt-key")).text)
    files = [str(tmp_path / name) for name in ("vkey", "receipt", "old", "consistency.json")]
    done = await anyio.run_process([str(binary), *files], check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "(sumdb/note)" in out
    assert "record 45 is in" in out
    assert "tree 46 extends tree 5" in out
    receipt = (tmp_path / "receipt").read_text()
    lines = receipt.split("\n")
    lines[4] = base64.b64encode(b"\x07" * 32).decode()  # one audit path hash
    (tmp_path / "receipt").write_text("\n".join(lines))
    tampered = await anyio.run_process([str(binary), *files[:2]], check=False)
    assert tampered.returncode == 1
    assert "tlog.CheckRecord" in tampered.stdout.decode()
