"""Signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

Receipts and checkpoints are signed notes so that verifiers we did not write —
Go's ``golang.org/x/mod/sumdb/note``, transparency-log witnesses, a few lines of
Node or an ``openssl`` call — accept them unchanged. That only works if every
byte follows the spec, so this module implements it exactly and nothing more:

* a note is a text ending in a newline, a blank line, then one or more lines
  ``— <key name> base64(4-byte key id || signature)``;
* signatures are Ed25519 over the text bytes, final newline included;
* the key id is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``, big-endian;
* key strings use Go's formats: ``<name>+<hex id>+base64(0x01 || public key)``
  for verifiers and ``PRIVATE+KEY+<name>+<hex id>+base64(0x01 || seed)`` for
  signers, so a key made here works with ``note.NewSigner`` and back.

Opening a note follows Go's ``note.Open``: signatures from unknown keys are kept
aside, a signature from a trusted key that fails is fatal, and a note needs at
least one verified signature. We are stricter in two places only: base64 must
be canonical, and ``sign_note`` refuses texts with blank lines (the spec allows
them; nothing we sign needs them). Pure and I/O-free.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from axon.errors import InvalidNoteKey, NoteError, NoteSignatureInvalid, NoteUnverified

ALG_ED25519 = 0x01
"""The signature type byte of Ed25519 in key ids and key strings."""

SIGNATURE_PREFIX = "\u2014 "
"""What every signature line starts with: an em dash (U+2014) and a space."""

MAX_SIGNATURES = 100
"""Most signature lines a note may carry (Go's limit; the spec requires at least 16)."""

_SIGNER_PREFIX = "PRIVATE+KEY+"

# Unicode White_Space, which is exactly what Go's unicode.IsSpace tests. Python's
# str.isspace() differs (it also counts U+001C..U+001F), so key names use this set.
_WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
_CONTROL_BYTES = re.compile(b"[\x00-\x09\x0b-\x1f]")
_HEX_ID = re.compile("[0-9a-fA-F]{8}")


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    """One signature line of a note: who signed, with which key, and the signature bytes."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        """The signature line as it appears in a note, trailing newline included."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


class OpenedNote(msgspec.Struct, frozen=True, kw_only=True):
    """A note whose signatures were checked: its text and who signed it."""

    text: str
    verified: list[Signature]
    unverified: list[Signature]


def ed25519_key_id(name: str, public_key: bytes) -> int:
    """The key id of an Ed25519 key: ``SHA-256(name || 0x0A || 0x01 || key)[:4]``, big-endian."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key)
    return int.from_bytes(digest.digest()[:4], "big")


def key_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid key name, or ``None`` if it is."""
    if not name:
        return "is empty"
    if not _encodable(name):
        return "is not valid UTF-8"
    for char in name:
        if char in _WHITESPACE:
            return f"contains white space (U+{ord(char):04X})"
        if char == "+":
            return "contains '+'"
        if _CONTROL.match(char) is not None:
            return f"contains control character U+{ord(char):04X}"
    return None


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be signed as a note text, or ``None`` if it can.

    Besides the spec's rules (non-empty, ends in a newline, UTF-8, no control
    characters but newline) we refuse blank lines: nothing we sign needs them.
    """
    if not text:
        return "note text is empty"
    if not text.endswith("\n"):
        return "note text does not end with a newline"
    if not _encodable(text):
        return "note text is not valid UTF-8"
    control = _CONTROL.search(text)
    if control is not None:
        return (
            f"note text contains control character U+{ord(control.group()):04X} "
            f"at offset {control.start()}"
        )
    if text.startswith("\n") or "\n\n" in text:
        line = 1 if text.startswith("\n") else text[: text.index("\n\n")].count("\n") + 2
        return f"note text has a blank line (line {line})"
    return None


class NoteVerifier(msgspec.Struct, frozen=True, kw_only=True):
    """A trusted Ed25519 public key, with the name and key id its signatures carry."""

    name: str
    key_id: int
    public_key: bytes

    def __post_init__(self) -> None:
        problem = key_name_problem(self.name)
        if problem is not None:
            raise InvalidNoteKey(f"verifier key name {problem}")
        if len(self.public_key) != 32:
            raise InvalidNoteKey(
                f"Ed25519 public key is {len(self.public_key)} bytes, not 32", name=self.name
            )
        expected = ed25519_key_id(self.name, self.public_key)
        if self.key_id != expected:
            raise InvalidNoteKey(
                f"key id {self.key_id:08x} does not match key {self.name!r} "
                f"(its key id is {expected:08x})",
                name=self.name,
            )

    @classmethod
    def from_verifier_key(cls, key: str) -> NoteVerifier:
        """Parse ``<name>+<8 hex key id>+base64(0x01 || public key)``.

        Raises:
            InvalidNoteKey: the string is malformed, or its key id does not match its key.
        """
        if key.startswith(_SIGNER_PREFIX):
            raise InvalidNoteKey(
                "this is a signer (private) key, not a verifier key; "
                "give its verifier (public) key instead"
            )
        parts = key.split("+", 2)
        if len(parts) != 3:
            raise InvalidNoteKey("verifier key is not of the form <name>+<key id>+<base64 key>")
        name, hex_id, key64 = parts
        problem = key_name_problem(name)
        if problem is not None:
            raise InvalidNoteKey(f"verifier key name {problem}")
        key_id = _parse_hex_id(hex_id, "verifier")
        raw = b64decode(key64)
        if raw is None:
            raise InvalidNoteKey(f"verifier key {name!r}: key is not valid base64")
        public_key = _strip_algorithm(raw, "verifier", name)
        return cls(name=name, key_id=key_id, public_key=public_key)

    def verifier_key(self) -> str:
        """This key as a verifier key string, the form ``from_verifier_key`` reads."""
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{blob}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (64 bytes, without the key id) is this key's over ``text``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except (InvalidSignature, ValueError):
            return False
        return True


class NoteSigner:
    """An Ed25519 private key with a key name: signs note texts.

    The private key never appears in ``repr`` or in error messages.
    """

    __slots__ = ("_private_key", "key_id", "name")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        problem = key_name_problem(name)
        if problem is not None:
            raise InvalidNoteKey(f"signer key name {problem}")
        self.name = name
        self._private_key = private_key
        self.key_id = ed25519_key_id(name, private_key.public_key().public_bytes_raw())

    def __repr__(self) -> str:
        return f"NoteSigner(name={self.name!r}, key_id={self.key_id:08x})"

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A new random key named ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_signer_key(cls, key: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<8 hex key id>+base64(0x01 || 32-byte seed)``.

        Raises:
            InvalidNoteKey: the string is malformed, or its key id does not match its key.
        """
        if not key.startswith(_SIGNER_PREFIX):
            raise InvalidNoteKey("signer key does not start with 'PRIVATE+KEY+'")
        parts = key[len(_SIGNER_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise InvalidNoteKey(
                "signer key is not of the form PRIVATE+KEY+<name>+<key id>+<base64 key>"
            )
        name, hex_id, key64 = parts
        problem = key_name_problem(name)
        if problem is not None:
            raise InvalidNoteKey(f"signer key name {problem}")
        key_id = _parse_hex_id(hex_id, "signer")
        raw = b64decode(key64)
        if raw is None:
            raise InvalidNoteKey(f"signer key {name!r}: key is not valid base64")
        seed = _strip_algorithm(raw, "signer", name)
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.key_id != key_id:
            raise InvalidNoteKey(
                f"signer key {name!r}: key id {key_id:08x} does not match the key "
                f"(its key id is {signer.key_id:08x})",
                name=name,
            )
        return signer

    def signer_key(self) -> str:
        """This key as a signer key string (secret), the form ``note.NewSigner`` reads."""
        seed = self._private_key.private_bytes_raw()
        blob = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
        return f"{_SIGNER_PREFIX}{self.name}+{self.key_id:08x}+{blob}"

    def verifier(self) -> NoteVerifier:
        """The public half of this key."""
        return NoteVerifier(
            name=self.name,
            key_id=self.key_id,
            public_key=self._private_key.public_key().public_bytes_raw(),
        )

    def verifier_key(self) -> str:
        """The verifier key string of this key, to give to whoever verifies our notes."""
        return self.verifier().verifier_key()

    def sign(self, text: str) -> str:
        """The signature line for ``text``, trailing newline included.

        Raises:
            NoteError: ``text`` is not a valid note text.
        """
        _check_text(text)
        return self._signature(text.encode("utf-8")).line()

    def _signature(self, text: bytes) -> Signature:
        return Signature(name=self.name, key_id=self.key_id, signature=self._private_key.sign(text))


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """The signed note: ``text``, a blank line and one signature line per signer, in order.

    Raises:
        NoteError: ``text`` is not a valid note text, there is no signer, or two
            signers share a name and key id.
    """
    _check_text(text)
    if not signers:
        raise NoteError("a note needs at least one signer")
    seen: set[tuple[str, int]] = set()
    for signer in signers:
        if (signer.name, signer.key_id) in seen:
            raise NoteError(f"duplicate signer {signer.name}+{signer.key_id:08x}")
        seen.add((signer.name, signer.key_id))
    raw = text.encode("utf-8")
    return text + "\n" + "".join(signer._signature(raw).line() for signer in signers)


def split_note(note: str | bytes) -> tuple[str, list[Signature]]:
    """Split a signed note into its text and signature lines, without verifying anything.

    The text is separated from the signatures by the last blank line, as the
    spec says; it may itself contain blank lines.

    Raises:
        NoteError: the note is malformed; the message says how.
    """
    msg = _note_bytes(note)
    control = _CONTROL_BYTES.search(msg)
    if control is not None:
        raise NoteError(
            f"note contains control character 0x{msg[control.start()]:02x} "
            f"at byte offset {control.start()}"
        )
    split = msg.rfind(b"\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines after the blank line")
    if not block.endswith(b"\n"):
        raise NoteError("note does not end with a newline")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines; at most {MAX_SIGNATURES} allowed")
    signatures = [_parse_signature_line(line.decode("utf-8"), n) for n, line in enumerate(lines, 1)]
    return text.decode("utf-8"), signatures


def open_note(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> OpenedNote:
    """Check a signed note against trusted keys and return its text and signatures.

    As in Go's ``note.Open``: a signature is checked when its key name and key
    id match a trusted key, and ignored (kept in ``unverified``) otherwise;
    repeated signatures by one key are dropped.

    Raises:
        NoteError: the note is malformed.
        NoteSignatureInvalid: a signature by a trusted key does not verify.
        NoteUnverified: no signature is by a trusted key.
    """
    trusted = _index_verifiers(verifiers)
    text, signatures = split_note(note)
    raw = text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    for signature in signatures:
        verifier = trusted.get((signature.name, signature.key_id))
        if verifier is None:
            if signature not in unverified:
                unverified.append(signature)
            continue
        if any(s.name == signature.name and s.key_id == signature.key_id for s in verified):
            continue
        if not verifier.verify(raw, signature.signature):
            raise NoteSignatureInvalid(
                f"signature by {_key_label(signature)} does not verify",
                name=signature.name,
                key_id=f"{signature.key_id:08x}",
            )
        verified.append(signature)
    if not verified:
        signed_by = [_key_label(s) for s in unverified]
        raise NoteUnverified(
            f"no signature from a trusted key; signed by: {', '.join(signed_by)}",
            signed_by=signed_by,
            trusted=[f"{v.name}+{v.key_id:08x}" for v in trusted.values()],
        )
    return OpenedNote(text=text, verified=verified, unverified=unverified)


def b64decode(value: str) -> bytes | None:
    """Standard base64 (RFC 4648 §4, padded) in its canonical form only, else ``None``.

    Canonical means re-encoding gives back ``value`` exactly, so every parser
    built on this one round-trips byte for byte.
    """
    try:
        raw = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == value else None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str) -> None:
    problem = text_problem(text)
    if problem is not None:
        raise NoteError(problem)


def _note_bytes(note: str | bytes) -> bytes:
    if isinstance(note, str):
        if not _encodable(note):
            raise NoteError("note is not valid UTF-8 (it contains a lone surrogate)")
        return note.encode("utf-8")
    try:
        bytes(note).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"note is not valid UTF-8 (byte offset {exc.start})") from None
    return bytes(note)


def _parse_signature_line(line: str, number: int) -> Signature:
    where = f"signature line {number}"
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError(f"{where} does not start with an em dash (U+2014) and a space")
    name, space, blob = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise NoteError(f"{where} has no space between the key name and the signature")
    problem = key_name_problem(name)
    if problem is not None:
        raise NoteError(f"{where}: key name {problem}")
    raw = b64decode(blob)
    if raw is None:
        raise NoteError(f"{where}: signature is not valid base64")
    if len(raw) < 5:
        raise NoteError(
            f"{where}: signature is {len(raw)} bytes, too short for a 4-byte key id and a signature"
        )
    return Signature(name=name, key_id=int.from_bytes(raw[:4], "big"), signature=raw[4:])


def _parse_hex_id(hex_id: str, kind: str) -> int:
    if _HEX_ID.fullmatch(hex_id) is None:
        raise InvalidNoteKey(f"{kind} key id {hex_id[:16]!r} is not 8 hex digits")
    return int(hex_id, 16)


def _strip_algorithm(raw: bytes, kind: str, name: str) -> bytes:
    if not raw:
        raise InvalidNoteKey(f"{kind} key {name!r}: key is empty")
    if raw[0] != ALG_ED25519:
        raise InvalidNoteKey(
            f"{kind} key {name!r}: signature type 0x{raw[0]:02x} is not supported "
            f"(only Ed25519, 0x01)"
        )
    if len(raw) != 33:
        raise InvalidNoteKey(f"{kind} key {name!r}: Ed25519 key is {len(raw) - 1} bytes, not 32")
    return raw[1:]


def _index_verifiers(verifiers: Sequence[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    trusted: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        known = trusted.setdefault((verifier.name, verifier.key_id), verifier)
        if known != verifier:
            raise InvalidNoteKey(
                f"two different trusted keys are named {verifier.name!r} "
                f"with key id {verifier.key_id:08x}"
            )
    return trusted


def _key_label(signature: Signature) -> str:
    return f"{signature.name}+{signature.key_id:08x}"
