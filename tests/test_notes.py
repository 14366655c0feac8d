"""Signed notes, checkpoints, tlog proofs and the receipt key: axon/notes.py and friends.

The formats are C2SP specs that other implementations read, so besides round
trips and strictness these tests check our bytes against outside references:
a known-answer vector from Go's ``sumdb/note`` documentation, and independent
verification of our signatures and key ids with the ``openssl`` CLI and Node's
``crypto`` module (each skipped only when the tool is missing).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon.checkpoint import Checkpoint, origin_for, task_of
from axon.errors import (
    InvalidCheckpoint,
    InvalidNoteKey,
    InvalidTlogProof,
    NoteError,
    NoteSignatureInvalid,
    NoteUnverified,
    ReceiptKeyExists,
    ReceiptKeyInsecure,
)
from axon.notes import (
    NoteSigner,
    NoteVerifier,
    Signature,
    key_name_problem,
    open_note,
    sign_note,
    split_note,
)
from axon.receiptkey import (
    DEFAULT_KEY_FILE,
    default_key_path,
    init_key,
    load_signer,
    parse_verifier_keys,
)
from axon.tlogproof import HEADER, TlogProof

# The example of golang.org/x/mod/sumdb/note's documentation (Sign and Open).
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNATURE_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

# SubjectPublicKeyInfo DER for an Ed25519 key, minus the 32 key bytes (RFC 8410).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")

# The checkpoint of the c2sp.org/tlog-checkpoint example.
SPEC_CHECKPOINT_BODY = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)

ROOT = hashlib.sha256(b"root").digest()
UNICODE_NAME = "axon.example/t\u00e2che-\u65e5\u672c"
"""A key name with non-ASCII characters: key ids hash its UTF-8 bytes."""

SIGNER = NoteSigner.generate("axon.example/receipts")
COSIGNER = NoteSigner.generate("witness.example")

key_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=16,
).filter(lambda name: key_name_problem(name) is None)
"""Any valid key name, including non-ASCII ones."""

note_lines = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=40
)
note_texts = st.lists(note_lines, min_size=1, max_size=5).map(lambda lines: "\n".join(lines) + "\n")
"""Any note text we can sign: non-empty lines without control characters."""


def key_id_of(name: str, public_key: bytes) -> int:
    """The key id, computed here from the spec rather than by axon.notes."""
    digest = hashlib.sha256(name.encode() + b"\x0a\x01" + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def public_key_of(verifier_key: str) -> bytes:
    """The 32 raw key bytes of a verifier key string, decoded here by hand."""
    blob = base64.b64decode(verifier_key.split("+", 2)[2])
    assert blob[0] == 1
    return blob[1:]


def signature_blob(note: str, name: str) -> bytes:
    """The decoded ``key id || signature`` of ``name``'s line in a signed note."""
    for line in note.rsplit("\n\n", 1)[1].splitlines():
        prefix = f"\u2014 {name} "
        if line.startswith(prefix):
            return base64.b64decode(line[len(prefix) :], validate=True)
    raise AssertionError(f"no signature line by {name}")


def mutated(valid: str) -> st.SearchStrategy[str]:
    """``valid`` with a random span replaced by random text: near-misses for parsers."""
    return st.tuples(st.integers(0, len(valid)), st.integers(0, 4), st.text(max_size=4)).map(
        lambda t: valid[: t[0]] + t[2] + valid[t[0] + t[1] :]
    )


def external_cases() -> list[tuple[str, str, str]]:
    """(verifier key, key name, signed note) triples for the outside verifiers."""
    go = (GO_VERIFIER_KEY, "PeterNeumann", GO_TEXT + "\n" + GO_SIGNATURE_LINE)
    signer = NoteSigner.generate(UNICODE_NAME)
    text = "axon.example/t_01\n42\n" + base64.b64encode(ROOT).decode() + "\nd\u00e9j\u00e0 vu\n"
    ours = (signer.verifier_key(), UNICODE_NAME, sign_note(text, [COSIGNER, signer]))
    return [go, ours]


# --- signed notes --------------------------------------------------------------------------


def test_go_known_answer_signature() -> None:
    """Go's example key signs Go's example text to exactly the signature line Go prints."""
    signer = NoteSigner.from_signer_key(GO_SIGNER_KEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_id == 0xC74F20A3
    assert signer.sign(GO_TEXT) == GO_SIGNATURE_LINE
    assert sign_note(GO_TEXT, [signer]) == GO_TEXT + "\n" + GO_SIGNATURE_LINE
    assert signer.verifier_key() == GO_VERIFIER_KEY
    assert signer.signer_key() == GO_SIGNER_KEY


def test_go_known_answer_opens() -> None:
    """Go's example signed note opens with Go's example verifier key."""
    verifier = NoteVerifier.from_verifier_key(GO_VERIFIER_KEY)
    opened = open_note(GO_TEXT + "\n" + GO_SIGNATURE_LINE, [verifier])
    assert opened.text == GO_TEXT
    assert [(s.name, s.key_id) for s in opened.verified] == [("PeterNeumann", 0xC74F20A3)]
    assert opened.unverified == []
    assert verifier.verifier_key() == GO_VERIFIER_KEY


def test_key_id_matches_independent_computation() -> None:
    """Signer, verifier key and signature line all carry SHA-256(name || 0A 01 || key)[:4]."""
    signer = NoteSigner.generate(UNICODE_NAME)
    public_key = public_key_of(signer.verifier_key())
    expected = key_id_of(UNICODE_NAME, public_key)
    assert signer.key_id == expected
    assert signer.verifier_key().split("+")[1] == f"{expected:08x}"
    note = sign_note("hello\n", [signer])
    assert signature_blob(note, UNICODE_NAME)[:4] == expected.to_bytes(4, "big")


def test_key_string_formats() -> None:
    """Verifier keys are name+8 lowercase hex+base64(0x01||key); signer keys add PRIVATE+KEY+."""
    signer = NoteSigner.generate("example.com/log")
    verifier_key = signer.verifier_key()
    assert re.fullmatch(r"example\.com/log\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}", verifier_key)
    assert len(base64.b64decode(verifier_key.split("+", 2)[2])) == 33
    signer_key = signer.signer_key()
    assert re.fullmatch(
        r"PRIVATE\+KEY\+example\.com/log\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}", signer_key
    )
    assert signer_key.split("+")[3] == verifier_key.split("+")[1]
    again = NoteSigner.from_signer_key(signer_key)
    assert again.verifier_key() == verifier_key
    assert NoteVerifier.from_verifier_key(verifier_key) == signer.verifier()
    assert signer_key not in repr(signer)


@settings(max_examples=60, deadline=None)
@given(text=note_texts, names=st.lists(key_names, min_size=1, max_size=3, unique=True))
def test_sign_open_round_trip(text: str, names: list[str]) -> None:
    """Any signable text signed by any keys opens to the same text, verified by each, in order."""
    signers = [NoteSigner.generate(name) for name in names]
    note = sign_note(text, signers)
    assert note.startswith(text + "\n\u2014 ")
    opened = open_note(note, [s.verifier() for s in reversed(signers)])
    assert opened.text == text
    assert [(s.name, s.key_id) for s in opened.verified] == [(s.name, s.key_id) for s in signers]
    assert "".join(s.line() for s in opened.verified) == note[len(text) + 1 :]
    assert open_note(note.encode(), [signers[0].verifier()]).text == text


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_tampered_byte_breaks_the_note(data: st.DataObject) -> None:
    """Changing any one byte of a signed note makes opening it fail with a note error."""
    note = sign_note("axon.example/t_1\n7\n" + base64.b64encode(ROOT).decode() + "\n", [SIGNER])
    raw = bytearray(note.encode())
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]))
    with pytest.raises(NoteError):
        open_note(bytes(raw), [SIGNER.verifier()])


def test_unknown_signatures_are_kept_aside() -> None:
    """Signatures from keys we do not trust are returned as unverified, not rejected."""
    note = sign_note("text\n", [COSIGNER, SIGNER])
    opened = open_note(note, [SIGNER.verifier()])
    assert [s.name for s in opened.verified] == [SIGNER.name]
    assert [(s.name, s.key_id) for s in opened.unverified] == [(COSIGNER.name, COSIGNER.key_id)]


def test_same_name_other_key_is_unknown_not_invalid() -> None:
    """A trusted key sharing only the name with the signer does not make the note invalid."""
    impostor = NoteSigner.generate(SIGNER.name)
    note = sign_note("text\n", [impostor, SIGNER])
    opened = open_note(note, [SIGNER.verifier()])
    assert [s.key_id for s in opened.verified] == [SIGNER.key_id]
    assert [s.key_id for s in opened.unverified] == [impostor.key_id]


def test_no_trusted_signature_is_refused() -> None:
    """A note signed only by unknown keys is refused, naming who did sign it."""
    note = sign_note("text\n", [COSIGNER, SIGNER])
    stranger = NoteSigner.generate("stranger.example")
    with pytest.raises(NoteUnverified) as caught:
        open_note(note, [stranger.verifier()])
    message = caught.value.message
    assert message.startswith("no signature from a trusted key; signed by: ")
    assert f"{COSIGNER.name}+{COSIGNER.key_id:08x}" in message
    assert f"{SIGNER.name}+{SIGNER.key_id:08x}" in message
    assert caught.value.code == "note_unverified"
    with pytest.raises(NoteUnverified):
        open_note(note, [])


def test_bad_signature_from_trusted_key_is_refused() -> None:
    """A signature by a trusted key that does not verify rejects the whole note."""
    note = sign_note("the text\n", [COSIGNER, SIGNER]).replace("the text", "the test")
    with pytest.raises(NoteSignatureInvalid) as caught:
        open_note(note, [SIGNER.verifier(), COSIGNER.verifier()])
    assert caught.value.message == (
        f"signature by {COSIGNER.name}+{COSIGNER.key_id:08x} does not verify"
    )
    assert isinstance(caught.value, NoteError)


def test_repeated_signatures_are_dropped() -> None:
    """A repeated signature line counts once, as in Go's note.Open."""
    line = SIGNER.sign("text\n")
    other = COSIGNER.sign("text\n")
    opened = open_note("text\n\n" + line + other + line + other, [SIGNER.verifier()])
    assert len(opened.verified) == 1
    assert len(opened.unverified) == 1


def test_text_with_blank_lines_opens() -> None:
    """The spec lets a note text contain blank lines: the last blank line ends the text."""
    text = "first\n\nthird\n"
    signature = Signature(
        name=SIGNER.name,
        key_id=SIGNER.key_id,
        signature=_raw_sign(SIGNER, text.encode()),
    )
    opened = open_note(text + "\n" + signature.line(), [SIGNER.verifier()])
    assert opened.text == text


def _raw_sign(signer: NoteSigner, message: bytes) -> bytes:
    """An Ed25519 signature by ``signer`` over any bytes, bypassing our text checks."""
    return signer._private_key.sign(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "note text is empty"),
        ("no newline", "does not end with a newline"),
        ("a\n\nb\n", "blank line (line 2)"),
        ("\n", "blank line (line 1)"),
        ("tab\there\n", "control character U+0009"),
        ("cr\r\n", "control character U+000D"),
        ("lone \udc80\n", "not valid UTF-8"),
    ],
)
def test_unsignable_texts_are_refused(text: str, message: str) -> None:
    """Signing a text that is not a valid note text says what is wrong with it."""
    with pytest.raises(NoteError, match=re.escape(message)):
        sign_note(text, [SIGNER])
    with pytest.raises(NoteError, match=re.escape(message)):
        SIGNER.sign(text)


def test_signers_must_be_present_and_distinct() -> None:
    """A note needs at least one signer and no signer twice."""
    with pytest.raises(NoteError, match="at least one signer"):
        sign_note("text\n", [])
    with pytest.raises(NoteError, match="duplicate signer"):
        sign_note("text\n", [SIGNER, NoteSigner.from_signer_key(SIGNER.signer_key())])


GOOD_LINE = SIGNER.sign("text\n")


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("text\n" + GOOD_LINE, "no blank line"),
        ("text\n\n", "no signature lines"),
        ("text\n\n" + GOOD_LINE.rstrip("\n"), "does not end with a newline"),
        ("text\n\n- " + GOOD_LINE[2:], "signature line 1 does not start with an em dash"),
        ("text\n\n" + GOOD_LINE + "\u2014 nospace\n", "signature line 2 has no space"),
        ("text\n\n\u2014 a+b AAAAAAAA\n", "signature line 1: key name contains '+'"),
        ("text\n\n\u2014 a\u00a0b AAAAAAAA\n", "key name contains white space (U+00A0)"),
        ("text\n\n\u2014  AAAAAAAA\n", "key name is empty"),
        ("text\n\n\u2014 a AAAA\n", "signature is 3 bytes, too short"),
        ("text\n\n\u2014 a AAAAAAB=\n", "signature line 1: signature is not valid base64"),
        ("text\n\n\u2014 a AAAAAAA\n", "signature is not valid base64"),
        ("text\n\n\u2014 a AAAAAAAA AAAA\n", "signature is not valid base64"),
        ("te\x00xt\n\n" + GOOD_LINE, "control character 0x00 at byte offset 2"),
        ("text\r\n\n" + GOOD_LINE, "control character 0x0d"),
        ("text\n\n" + GOOD_LINE * 101, "101 signature lines"),
    ],
)
def test_malformed_notes_say_what_is_wrong(note: str, message: str) -> None:
    """Every malformation of a note is reported as a NoteError naming it."""
    with pytest.raises(NoteError, match=re.escape(message)) as caught:
        open_note(note, [SIGNER.verifier()])
    assert caught.value.code == "invalid_note"


def test_invalid_utf8_note_is_refused() -> None:
    """A note that is not UTF-8 is refused with the offending byte offset."""
    with pytest.raises(NoteError, match=r"not valid UTF-8 \(byte offset 2\)"):
        open_note(b"te\xffxt\n\n" + GOOD_LINE.encode(), [SIGNER.verifier()])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "not of the form"),
        ("name", "not of the form"),
        ("name+c74f20a3", "not of the form"),
        ("+c74f20a3+AAAA", "verifier key name is empty"),
        ("a b+c74f20a3+AAAA", "contains white space (U+0020)"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not 8 hex"),
        ("PeterNeumann+c74f20a3x+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not 8 hex"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "not valid base64"),
        ("PeterNeumann+c74f20a3+", "key is empty"),
        ("PeterNeumann+c74f20a3+ApqcnQ==", "signature type 0x02 is not supported"),
        ("PeterNeumann+c74f20a3+AZqcnQ==", "Ed25519 key is 3 bytes, not 32"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        (GO_SIGNER_KEY, "this is a signer (private) key"),
    ],
)
def test_malformed_verifier_keys_say_what_is_wrong(key: str, message: str) -> None:
    """Every malformation of a verifier key is reported as InvalidNoteKey naming it."""
    with pytest.raises(InvalidNoteKey, match=re.escape(message)) as caught:
        NoteVerifier.from_verifier_key(key)
    assert "AYEKFALVFGyN" not in caught.value.message


def test_uppercase_key_id_is_accepted() -> None:
    """Key ids are read as hex in either case, as Go's strconv.ParseUint does."""
    verifier = NoteVerifier.from_verifier_key(GO_VERIFIER_KEY.replace("c74f20a3", "C74F20A3"))
    assert verifier.verifier_key() == GO_VERIFIER_KEY


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "does not start with 'PRIVATE+KEY+'"),
        (GO_VERIFIER_KEY, "does not start with 'PRIVATE+KEY+'"),
        ("PRIVATE+KEY+PeterNeumann", "not of the form"),
        ("PRIVATE+KEY+Peter Neumann+c74f20a3+AYEKFALVFGyN", "contains white space"),
        ("PRIVATE+KEY+PeterNeumann+c74f20+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz", "8 hex"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDF", "base64"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3+AoEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz", "0x02"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFA==", "Ed25519 key is 3 bytes"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz", "match"),
    ],
)
def test_malformed_signer_keys_say_what_is_wrong_without_the_secret(key: str, message: str) -> None:
    """Every malformation of a signer key is reported without echoing the key material."""
    with pytest.raises(InvalidNoteKey, match=re.escape(message)) as caught:
        NoteSigner.from_signer_key(key)
    assert "AYEKFALV" not in caught.value.message
    assert "AYEKFALV" not in repr(caught.value.details)


def test_invalid_key_names_are_refused() -> None:
    """Key names must be non-empty UTF-8 without Unicode white space or '+'."""
    for name in ["", "a b", "a+b", "a\u2003b", "a\u3000b", "a\nb", "a\x85b", "\udc80"]:
        with pytest.raises(InvalidNoteKey):
            NoteSigner.generate(name)
    assert key_name_problem("a\x1cb") is not None
    assert key_name_problem("example.com/\u65e5\u672c") is None


# --- parsers never fail with anything but our errors -----------------------------------------

_GOOD_NOTE = sign_note(SPEC_CHECKPOINT_BODY, [SIGNER])
_GOOD_PROOF = TlogProof(
    extra=b"extra data", index=3, path=[ROOT, ROOT], checkpoint=_GOOD_NOTE
).encode()

note_inputs = st.text() | mutated(_GOOD_NOTE)
proof_inputs = st.text() | mutated(_GOOD_PROOF)
key_inputs = st.text(max_size=120) | mutated(GO_VERIFIER_KEY) | mutated(GO_SIGNER_KEY)


def _only_our_errors(parse: Callable[[Any], object], value: object) -> None:
    with contextlib.suppress(NoteError):
        parse(value)


@settings(max_examples=300, deadline=None)
@given(value=note_inputs)
def test_note_parsers_raise_only_note_errors(value: str) -> None:
    """Arbitrary and near-valid notes either open or raise NoteError, never anything else."""
    verifiers = [SIGNER.verifier()]
    _only_our_errors(lambda v: open_note(v, verifiers), value)
    _only_our_errors(split_note, value)
    if _encodable(value):
        _only_our_errors(lambda v: open_note(v, verifiers), value.encode())


@settings(max_examples=300, deadline=None)
@given(value=key_inputs)
def test_key_parsers_raise_only_note_errors(value: str) -> None:
    """Arbitrary and near-valid key strings either parse or raise InvalidNoteKey."""
    for parse in (NoteVerifier.from_verifier_key, NoteSigner.from_signer_key):
        with contextlib.suppress(InvalidNoteKey):
            parse(value)


@settings(max_examples=300, deadline=None)
@given(value=st.text() | mutated(SPEC_CHECKPOINT_BODY) | mutated("example.com/axon/t_01"))
def test_checkpoint_parsers_raise_only_checkpoint_errors(value: str) -> None:
    """Arbitrary and near-valid checkpoint bodies and origins parse or raise InvalidCheckpoint."""
    for parse in (Checkpoint.parse, task_of):
        with contextlib.suppress(InvalidCheckpoint):
            parse(value)


@settings(max_examples=300, deadline=None)
@given(value=proof_inputs)
def test_proof_parser_raises_only_proof_errors_and_is_canonical(value: str) -> None:
    """Arbitrary proofs parse or raise InvalidTlogProof; whatever parses re-encodes to itself."""
    try:
        proof = TlogProof.parse(value)
    except InvalidTlogProof:
        return
    assert proof.encode() == value
    if _encodable(value):
        assert TlogProof.parse(value.encode()) == proof


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# --- verification by outside tools -----------------------------------------------------------


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=10, check=False, **kwargs)


@pytest.mark.parametrize(
    ("verifier_key", "name", "note"), external_cases(), ids=["go-vector", "generated"]
)
def test_openssl_verifies_our_signatures(
    tmp_path: Path, verifier_key: str, name: str, note: str
) -> None:
    """openssl verifies the Ed25519 signature over the note text and agrees on the key id."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed")
    public_key = public_key_of(verifier_key)
    pem = (
        b"-----BEGIN PUBLIC KEY-----\n"
        + base64.encodebytes(ED25519_SPKI_PREFIX + public_key)
        + b"-----END PUBLIC KEY-----\n"
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    text = note.encode().rsplit(b"\n\n", 1)[0] + b"\n"
    blob = signature_blob(note, name)
    (tmp_path / "msg").write_bytes(text)
    (tmp_path / "sig").write_bytes(blob[4:])
    (tmp_path / "tampered").write_bytes(text.replace(b"\n", b" \n", 1))
    verify = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin"]
    verify += ["-sigfile", "sig", "-in"]

    good = _run([*verify, "msg"], cwd=tmp_path)
    assert good.returncode == 0, good.stderr.decode()
    assert b"Signature Verified Successfully" in good.stdout
    bad = _run([*verify, "tampered"], cwd=tmp_path)
    assert bad.returncode != 0

    (tmp_path / "id-input").write_bytes(name.encode() + b"\x0a\x01" + public_key)
    digest = _run([openssl, "dgst", "-sha256", "-binary", "id-input"], cwd=tmp_path)
    assert digest.returncode == 0, digest.stderr.decode()
    assert blob[:4] == digest.stdout[:4]
    assert verifier_key.split("+")[1] == digest.stdout[:4].hex()


NODE_VERIFIER = r"""
const crypto = require('crypto');
const fs = require('fs');
const [noteFile, vkey] = process.argv.slice(2);
const note = fs.readFileSync(noteFile);
const i = vkey.indexOf('+'), j = vkey.indexOf('+', i + 1);
const name = vkey.slice(0, i), idHex = vkey.slice(i + 1, j);
const keyBlob = Buffer.from(vkey.slice(j + 1), 'base64');
if (keyBlob.length !== 33 || keyBlob[0] !== 1) { console.log('bad key'); process.exit(0); }
const raw = keyBlob.subarray(1);
const keyId = crypto.createHash('sha256')
  .update(Buffer.concat([Buffer.from(name, 'utf8'), Buffer.from([0x0a, 0x01]), raw]))
  .digest().subarray(0, 4);
if (keyId.toString('hex') !== idHex) { console.log('key id mismatch'); process.exit(0); }
const key = crypto.createPublicKey({
  key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
const split = note.lastIndexOf('\n\n');
const text = note.subarray(0, split + 1);
const lines = note.subarray(split + 2).toString('utf8').split('\n');
let result = 'no signature by ' + name;
for (const line of lines.slice(0, -1)) {
  if (!line.startsWith('\u2014 ')) { result = 'malformed'; break; }
  const rest = line.slice(2), space = rest.indexOf(' ');
  const blob = Buffer.from(rest.slice(space + 1), 'base64');
  if (rest.slice(0, space) === name && blob.subarray(0, 4).equals(keyId)) {
    result = crypto.verify(null, text, key, blob.subarray(4)) ? 'ok' : 'bad signature';
  }
}
console.log(result);
"""


@pytest.mark.parametrize(
    ("verifier_key", "name", "note"), external_cases(), ids=["go-vector", "generated"]
)
def test_node_verifies_our_notes(tmp_path: Path, verifier_key: str, name: str, note: str) -> None:
    """Node's crypto parses our signed note, recomputes the key id and verifies the signature."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    (tmp_path / "verify.js").write_text(NODE_VERIFIER)
    (tmp_path / "good.note").write_bytes(note.encode())
    (tmp_path / "bad.note").write_bytes(note.replace("\n", " \n", 1).encode())

    good = _run([node, "verify.js", "good.note", verifier_key], cwd=tmp_path)
    assert good.stdout.decode().strip() == "ok", good.stderr.decode()
    bad = _run([node, "verify.js", "bad.note", verifier_key], cwd=tmp_path)
    assert bad.stdout.decode().strip() == "bad signature", bad.stderr.decode()


# --- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_body_exact_bytes() -> None:
    """A checkpoint's body is origin, size and base64 root, one line each, as in the spec."""
    root = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    checkpoint = Checkpoint(origin="example.com/behind-the-sofa", size=20852163, root=root)
    assert checkpoint.body().encode() == SPEC_CHECKPOINT_BODY.encode()
    assert Checkpoint.parse(SPEC_CHECKPOINT_BODY) == checkpoint
    empty = Checkpoint(origin="o", size=0, root=bytes(32))
    assert empty.body() == "o\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"


def test_checkpoint_extension_lines_are_dropped() -> None:
    """Extension lines are accepted when parsing but are not part of the result."""
    parsed = Checkpoint.parse(SPEC_CHECKPOINT_BODY + "ext one\next two\n")
    assert parsed == Checkpoint.parse(SPEC_CHECKPOINT_BODY)
    assert parsed.body() == SPEC_CHECKPOINT_BODY


@settings(max_examples=100)
@given(
    origin=note_lines,
    size=st.integers(0, 2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_checkpoint_round_trip(origin: str, size: int, root: bytes) -> None:
    """Any checkpoint parses back from its body."""
    checkpoint = Checkpoint(origin=origin, size=size, root=root)
    assert Checkpoint.parse(checkpoint.body()) == checkpoint


ROOT64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("o\n1\n" + ROOT64, "does not end with a newline"),
        ("o\n1\n", "has 2 line(s)"),
        ("\n1\n" + ROOT64 + "\n", "line 1 of the checkpoint body is empty"),
        ("o\n1\n" + ROOT64 + "\n\next\n", "line 4 of the checkpoint body is empty"),
        ("o\n01\n" + ROOT64 + "\n", "size '01' is not a decimal"),
        ("o\n-1\n" + ROOT64 + "\n", "size '-1'"),
        ("o\n+1\n" + ROOT64 + "\n", "size '+1'"),
        ("o\n 1\n" + ROOT64 + "\n", "size ' 1'"),
        ("o\n1_0\n" + ROOT64 + "\n", "size '1_0'"),
        ("o\n\u0661\n" + ROOT64 + "\n", "is not a decimal"),
        ("o\n" + "9" * 4400 + "\n" + ROOT64 + "\n", "is not a decimal"),
        ("o\n9223372036854775808\n" + ROOT64 + "\n", "out of range"),
        ("o\n1\n" + ROOT64[:-2] + "=\n", "root hash is not the base64 of 32 bytes"),
        ("o\n1\nAAAA\n", "root hash is not the base64 of 32 bytes"),
        ("o\n1\n" + ROOT64[:-2] + "B=\n", "root hash is not the base64"),
        ("o\t\n1\n" + ROOT64 + "\n", "control character U+0009"),
        ("\udc80\n1\n" + ROOT64 + "\n", "not valid UTF-8"),
    ],
)
def test_checkpoint_parse_is_strict(body: str, message: str) -> None:
    """Malformed checkpoint bodies raise InvalidCheckpoint saying what is wrong."""
    with pytest.raises(InvalidCheckpoint, match=re.escape(message)) as caught:
        Checkpoint.parse(body)
    assert isinstance(caught.value, NoteError)


def test_checkpoint_fields_are_validated() -> None:
    """A checkpoint that could not be written as a body cannot be built."""
    cases: list[dict[str, Any]] = [
        {"origin": "", "size": 1, "root": ROOT},
        {"origin": "a\nb", "size": 1, "root": ROOT},
        {"origin": "o", "size": -1, "root": ROOT},
        {"origin": "o", "size": 2**63, "root": ROOT},
        {"origin": "o", "size": 1, "root": ROOT[:31]},
    ]
    for kwargs in cases:
        with pytest.raises(InvalidCheckpoint):
            Checkpoint(**kwargs)


def test_origin_names_deployment_and_task() -> None:
    """The origin is <deployment>/<task id>, and task_of takes it apart again."""
    origin = origin_for("axon.example.com/prod", "t_01J0ABC")
    assert origin == "axon.example.com/prod/t_01J0ABC"
    assert task_of(origin) == "t_01J0ABC"
    assert task_of(origin, "axon.example.com/prod") == "t_01J0ABC"
    with pytest.raises(InvalidCheckpoint, match=r"belongs to deployment 'axon\.example\.com/prod'"):
        task_of(origin, "axon.example.com/staging")
    for bad in ["t_01", "/t_01", "example.com/", "example.com/t 01"]:
        with pytest.raises(InvalidCheckpoint):
            task_of(bad)
    for deployment, task_id in [("", "t_1"), ("a b", "t_1"), ("a+b", "t_1"), ("a/", "t_1")]:
        with pytest.raises(InvalidCheckpoint):
            origin_for(deployment, task_id)
    with pytest.raises(InvalidCheckpoint, match="is not a task id"):
        origin_for("example.com", "t/1")


# --- tlog proofs -----------------------------------------------------------------------------


def _signed_checkpoint(origin: str, size: int, signers: list[NoteSigner]) -> str:
    return sign_note(Checkpoint(origin=origin, size=size, root=ROOT).body(), signers)


def test_tlog_proof_spec_example_layout() -> None:
    """The spec's example proof parses, with the elided signatures replaced by real ones."""
    log = NoteSigner.generate("example.com/fancylog")
    witnesses = [NoteSigner.generate(f"witness{n}.example") for n in (1, 2, 3)]
    body = "example.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n"
    checkpoint = sign_note(body, [log, *witnesses])
    hashes = [
        "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=",
        "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=",
        "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=",
        "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=",
        "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=",
    ]
    text = (
        "c2sp.org/tlog-proof@v1\n"
        "extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\n"
        "index 73894\n" + "".join(h + "\n" for h in hashes) + "\n" + checkpoint
    )
    proof = TlogProof.parse(text)
    assert proof.extra == base64.b64decode("YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ")
    assert proof.index == 73894
    assert proof.path == [base64.b64decode(h) for h in hashes]
    assert proof.checkpoint == checkpoint
    assert proof.encode() == text
    opened = open_note(proof.checkpoint, [log.verifier()])
    assert Checkpoint.parse(opened.text).size == 109482
    assert len(opened.unverified) == 3


def test_tlog_proof_without_extra_or_path() -> None:
    """A proof may omit the extra line and have an empty audit path (a one-leaf tree)."""
    checkpoint = _signed_checkpoint("example.com/log", 1, [SIGNER])
    proof = TlogProof(index=0, path=[], checkpoint=checkpoint)
    assert proof.encode() == "c2sp.org/tlog-proof@v1\nindex 0\n\n" + checkpoint
    assert TlogProof.parse(proof.encode()) == proof


@settings(max_examples=100, deadline=None)
@given(
    extra=st.none() | st.binary(max_size=64),
    index=st.integers(0, 2**63 - 2),
    path=st.lists(st.binary(min_size=32, max_size=32), max_size=63),
    origin=note_lines,
    extensions=st.lists(note_lines, max_size=2),
)
def test_tlog_proof_round_trip(
    extra: bytes | None, index: int, path: list[bytes], origin: str, extensions: list[str]
) -> None:
    """Any proof parses back from its encoding, the checkpoint note kept byte for byte."""
    body = Checkpoint(origin=origin, size=index + 1, root=ROOT).body()
    checkpoint = sign_note(body + "".join(line + "\n" for line in extensions), [SIGNER])
    proof = TlogProof(extra=extra, index=index, path=path, checkpoint=checkpoint)
    encoded = proof.encode()
    assert encoded.startswith(HEADER + "\n")
    assert encoded.endswith("\n\n" + checkpoint)
    assert TlogProof.parse(encoded) == proof
    assert TlogProof.parse(encoded.encode()) == proof


CHECKPOINT_NOTE = _signed_checkpoint("example.com/log", 8, [SIGNER])
H64 = ROOT64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "proof ends before the c2sp.org/tlog-proof@v1 header"),
        ("c2sp.org/tlog-proof@v2\nindex 1\n\n" + CHECKPOINT_NOTE, "not 'c2sp.org/tlog-proof@v1'"),
        (HEADER + "\n", "proof ends before the index line"),
        (HEADER + "\nextra !!\nindex 1\n\n" + CHECKPOINT_NOTE, "line 2: extra data is not valid"),
        (HEADER + "\nindex 01\n\n" + CHECKPOINT_NOTE, "line 2 is not 'index <decimal"),
        (HEADER + "\nindex -1\n\n" + CHECKPOINT_NOTE, "line 2 is not 'index"),
        (HEADER + "\nindex  1\n\n" + CHECKPOINT_NOTE, "line 2 is not 'index"),
        (HEADER + "\nindex\n\n" + CHECKPOINT_NOTE, "line 2 is not 'index"),
        (HEADER + "\n\nindex 1\n\n" + CHECKPOINT_NOTE, "line 2 is not 'index"),
        (HEADER + "\nindex 9223372036854775807\n\n" + CHECKPOINT_NOTE, "out of range"),
        (HEADER + "\nindex 1\n" + H64 + "\n", "ends before the blank line"),
        (HEADER + "\nindex 1\nAAAA\n\n" + CHECKPOINT_NOTE, "line 3: audit path hash is not"),
        (HEADER + "\nindex 1\n" + (H64 + "\n") * 64 + "\n" + CHECKPOINT_NOTE, "more than 63"),
        (HEADER + "\nindex 1\n\n", "no checkpoint after the blank line"),
        (HEADER + "\nindex 1\n\nexample.com/log\n8\n", "checkpoint: note has no blank line"),
        (HEADER + "\nindex 1\n\n" + "o\n1\n\n" + GOOD_LINE, "checkpoint: checkpoint body has 2"),
        (HEADER + "\r\nindex 1\n\n" + CHECKPOINT_NOTE, "control character U+000D at offset 22"),
    ],
)
def test_tlog_proof_parse_is_strict(text: str, message: str) -> None:
    """Malformed proofs raise InvalidTlogProof saying what is wrong."""
    with pytest.raises(InvalidTlogProof, match=re.escape(message)) as caught:
        TlogProof.parse(text)
    assert caught.value.code == "invalid_tlog_proof"
    assert isinstance(caught.value, NoteError)


def test_tlog_proof_bytes_must_be_utf8() -> None:
    """A proof given as bytes must be UTF-8."""
    with pytest.raises(InvalidTlogProof, match="not valid UTF-8"):
        TlogProof.parse(b"\xff" + _GOOD_PROOF.encode())


def test_tlog_proof_fields_are_validated() -> None:
    """A proof that could not be encoded and parsed back cannot be built."""
    cases: list[dict[str, Any]] = [
        {"index": -1, "path": [], "checkpoint": CHECKPOINT_NOTE},
        {"index": 0, "path": [ROOT[:31]], "checkpoint": CHECKPOINT_NOTE},
        {"index": 0, "path": [ROOT] * 64, "checkpoint": CHECKPOINT_NOTE},
        {"index": 0, "path": [], "checkpoint": "example.com/log\n8\n" + ROOT64 + "\n"},
    ]
    for kwargs in cases:
        with pytest.raises(InvalidTlogProof):
            TlogProof(**kwargs)


# --- the receipt signing key -----------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@posix_only
def test_init_key_writes_a_private_file(tmp_path: Path) -> None:
    """init_key creates the data dir and a 0600 file holding the signer key and a newline."""
    path = default_key_path(tmp_path / "data" / ".axon")
    assert path.name == DEFAULT_KEY_FILE
    signer = init_key(path, "axon.example/receipts")
    assert path.read_text() == signer.signer_key() + "\n"
    assert _mode(path) == 0o600
    assert signer.name == "axon.example/receipts"


def test_init_key_refuses_to_overwrite(tmp_path: Path) -> None:
    """An existing key is never replaced without force, and stays as it was."""
    path = tmp_path / DEFAULT_KEY_FILE
    init_key(path, "a.example")
    before = path.read_bytes()
    with pytest.raises(ReceiptKeyExists, match="already exists") as caught:
        init_key(path, "a.example")
    assert caught.value.code == "receipt_key_exists"
    assert path.read_bytes() == before


@posix_only
def test_init_key_force_replaces_atomically(tmp_path: Path) -> None:
    """With force the key is replaced by a new 0600 file, leaving no temporary file behind."""
    path = tmp_path / DEFAULT_KEY_FILE
    old = init_key(path, "a.example")
    new = init_key(path, "a.example", force=True)
    assert new.key_id != old.key_id
    assert path.read_text() == new.signer_key() + "\n"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_KEY_FILE]


def test_init_key_refuses_bad_names(tmp_path: Path) -> None:
    """A key name that signed notes cannot carry is refused before anything is written."""
    with pytest.raises(InvalidNoteKey):
        init_key(tmp_path / DEFAULT_KEY_FILE, "bad name")
    assert not (tmp_path / DEFAULT_KEY_FILE).exists()


def test_load_signer_reads_the_file(tmp_path: Path) -> None:
    """Without an environment value the key file is used; without either there is no signer."""
    path = tmp_path / DEFAULT_KEY_FILE
    assert load_signer(env_value=None, path=path) is None
    signer = init_key(path, "a.example")
    loaded = load_signer(env_value=None, path=path)
    assert loaded is not None
    assert loaded.signer_key() == signer.signer_key()
    blank = load_signer(env_value="  \n", path=path)
    assert blank is not None
    assert blank.key_id == signer.key_id


def test_load_signer_environment_wins(tmp_path: Path) -> None:
    """A key in the environment is used even when a key file exists."""
    path = tmp_path / DEFAULT_KEY_FILE
    init_key(path, "file.example")
    loaded = load_signer(env_value=GO_SIGNER_KEY + "\n", path=path)
    assert loaded is not None
    assert loaded.verifier_key() == GO_VERIFIER_KEY
    assert load_signer(env_value=GO_SIGNER_KEY, path=tmp_path / "missing") is not None


@posix_only
def test_load_signer_refuses_readable_key_file(tmp_path: Path) -> None:
    """A key file that group or others can access is refused, as ssh refuses such keys."""
    path = tmp_path / DEFAULT_KEY_FILE
    init_key(path, "a.example")
    for mode in (0o640, 0o604, 0o644, 0o610):
        path.chmod(mode)
        with pytest.raises(ReceiptKeyInsecure, match=f"has mode {mode:04o}") as caught:
            load_signer(env_value=None, path=path)
        assert "chmod 600" in caught.value.message
        assert caught.value.code == "receipt_key_insecure"
    path.chmod(0o400)
    assert load_signer(env_value=None, path=path) is not None


def test_load_signer_reports_malformed_keys(tmp_path: Path) -> None:
    """Malformed key content is an InvalidNoteKey naming its source, never echoing the key."""
    path = tmp_path / DEFAULT_KEY_FILE
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(InvalidNoteKey, match=f"receipt signing key {re.escape(str(path))}: "):
        load_signer(env_value=None, path=path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidNoteKey, match="not UTF-8"):
        load_signer(env_value=None, path=path)
    broken = GO_SIGNER_KEY.replace("c74f20a3", "00000000")
    with pytest.raises(InvalidNoteKey, match=r"from the environment: .*does not match") as caught:
        load_signer(env_value=broken, path=path)
    assert "AYEKFALV" not in caught.value.message


def test_parse_verifier_keys_from_values_and_files(tmp_path: Path) -> None:
    """Trusted keys come from strings and key files, in order, duplicates dropped."""
    first, second, third = (NoteSigner.generate(f"k{n}.example") for n in (1, 2, 3))
    key_file = tmp_path / "trusted.keys"
    key_file.write_text(
        f"# rotation: old and new key\n\n{second.verifier_key()}\n"
        f"  {third.verifier_key()}  \n# {first.verifier_key()}\n"
    )
    keys = parse_verifier_keys(
        [first.verifier_key(), str(key_file), "", second.verifier_key(), GO_VERIFIER_KEY]
    )
    assert keys == [
        first.verifier(),
        second.verifier(),
        third.verifier(),
        NoteVerifier.from_verifier_key(GO_VERIFIER_KEY),
    ]
    assert parse_verifier_keys([]) == []


def test_parse_verifier_keys_errors(tmp_path: Path) -> None:
    """Bad trusted keys are reported with their file and line, and private keys are not echoed."""
    key_file = tmp_path / "trusted.keys"
    key_file.write_text(f"{GO_VERIFIER_KEY}\nnonsense\n")
    with pytest.raises(InvalidNoteKey, match=re.escape(f"{key_file}:2: verifier key is not")):
        parse_verifier_keys([str(key_file)])
    with pytest.raises(InvalidNoteKey, match=r"neither a verifier key .* nor a key file"):
        parse_verifier_keys([str(tmp_path / "missing.keys")])
    with pytest.raises(InvalidNoteKey, match="signer \\(private\\) key") as caught:
        parse_verifier_keys([GO_SIGNER_KEY])
    assert "AYEKFALV" not in caught.value.message
