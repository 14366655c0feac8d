"""The receipt signing key: creating it, loading it, and reading the keys we trust.

Receipts are signed notes (``axon.notes``), so the key is stored as a Go
``note`` signer key string, ``PRIVATE+KEY+<name>+<id>+<key>``, on one line of
``<data dir>/receipt.key``. The file is treated like an ssh private key: it
is created with mode 0600 and never silently overwritten, and a key file that
group or others can read is refused rather than used. In containers the same
string can come from the environment instead, and then wins over the file.

Verifiers are configured as a list, because during a key rotation several
keys are trusted at once; each entry is a verifier key string or the path of a
file holding one per line.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from axon.errors import ConfigError, InvalidNoteKey, ReceiptKeyExists, ReceiptKeyInsecure
from axon.notes import NoteSigner, NoteVerifier

DEFAULT_DATA_DIR = Path(".axon")
"""Where Axon keeps local state when no data dir is configured."""

DEFAULT_KEY_FILE = "receipt.key"
"""The receipt signing key's file name inside the data dir."""

_SIGNER_PREFIX = "PRIVATE+KEY+"


def default_key_path(data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    """The receipt signing key file inside ``data_dir``."""
    return data_dir / DEFAULT_KEY_FILE


def init_key(path: Path, name: str, *, force: bool = False) -> NoteSigner:
    """Generate a new signing key named ``name`` and store it at ``path``, mode 0600.

    The file is created exclusively and fsynced, then its directory is fsynced,
    so after a crash it is either absent or complete. With ``force`` an
    existing key is replaced atomically (written aside, then renamed over it).

    Raises:
        ReceiptKeyExists: ``path`` exists and ``force`` is false.
        InvalidNoteKey: ``name`` is not a valid key name.
        ConfigError: the file or its directory cannot be written.
    """
    signer = NoteSigner.generate(name)
    data = (signer.signer_key() + "\n").encode("utf-8")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if force:
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            _create_exclusive(temporary, data)
            try:
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        else:
            _create_exclusive(path, data)
        _fsync_directory(path.parent)
    except FileExistsError:
        raise ReceiptKeyExists(
            f"a receipt signing key already exists at {path}; refusing to overwrite it "
            "(replace it explicitly with force; receipts signed with the old key then "
            "verify only against its verifier key)",
            path=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot write the receipt signing key {path}: {exc.strerror or exc}", path=str(path)
        ) from None
    return signer


def load_signer(*, env_value: str | None, path: Path) -> NoteSigner | None:
    """The receipt signer: from ``env_value`` if set, else from ``path`` if it exists, else None.

    ``env_value`` is the content of an environment variable (the signer key
    string); an empty or blank value counts as unset.

    Raises:
        InvalidNoteKey: the key string is malformed.
        ReceiptKeyInsecure: the key file is accessible by group or others.
        ConfigError: the key file exists but cannot be read, or is not a file.
    """
    if env_value is not None and env_value.strip():
        try:
            return NoteSigner.from_signer_key(env_value.strip())
        except InvalidNoteKey as exc:
            raise InvalidNoteKey(
                f"receipt signing key from the environment: {exc.message}", **exc.details
            ) from None
    content = _read_private(path)
    if content is None:
        return None
    try:
        return NoteSigner.from_signer_key(content.strip())
    except InvalidNoteKey as exc:
        raise InvalidNoteKey(
            f"receipt signing key {path}: {exc.message}", **{**exc.details, "path": str(path)}
        ) from None


def parse_verifier_keys(values: Iterable[str]) -> list[NoteVerifier]:
    """The trusted verifier keys in ``values``, in order, without duplicates.

    Each value is a verifier key string, or the path of a file with one key
    per line (blank lines and lines starting with ``#`` are skipped). Blank
    values are skipped.

    Raises:
        InvalidNoteKey: a value or a line is neither a valid verifier key nor
            (for values) a readable file, or two different keys share a name and key id.
        ConfigError: a key file cannot be read.
    """
    keys: dict[tuple[str, int], NoteVerifier] = {}
    for value in values:
        text = value.strip()
        if not text:
            continue
        for key in _verifier_keys(text):
            _add_key(keys, key)
    return list(keys.values())


def _verifier_keys(value: str) -> list[NoteVerifier]:
    try:
        return [NoteVerifier.from_verifier_key(value)]
    except InvalidNoteKey as exc:
        if value.startswith(_SIGNER_PREFIX):
            raise  # its message says so, without echoing the secret
        if not Path(value).is_file():
            raise InvalidNoteKey(
                f"trusted key {value[:80]!r} is neither a verifier key ({exc.message}) "
                "nor a key file"
            ) from None
    return _read_key_file(Path(value))


def _create_exclusive(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_private(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the receipt signing key {path}: {exc.strerror or exc}", path=str(path)
        ) from None
    with os.fdopen(fd, "rb") as file:
        # fstat the open file, not the path: the checked file is the one we read.
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"receipt signing key {path} is not a regular file", path=str(path))
        mode = stat.S_IMODE(info.st_mode)
        if os.name == "posix" and mode & 0o077:
            raise ReceiptKeyInsecure(
                f"receipt signing key {path} has mode {mode:04o}: it must not be accessible "
                f"by group or others; run: chmod 600 {path}",
                path=str(path),
                mode=f"{mode:04o}",
            )
        try:
            raw = file.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the receipt signing key {path}: {exc.strerror or exc}",
                path=str(path),
            ) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidNoteKey(
            f"receipt signing key {path} is not UTF-8 text", path=str(path)
        ) from None


def _read_key_file(path: Path) -> list[NoteVerifier]:
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read trusted key file {path}: {reason}", path=str(path)
        ) from None
    keys: list[NoteVerifier] = []
    for number, raw_line in enumerate(content.split("\n"), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(NoteVerifier.from_verifier_key(line))
        except InvalidNoteKey as exc:
            raise InvalidNoteKey(
                f"{path}:{number}: {exc.message}", path=str(path), line=number
            ) from None
    return keys


def _add_key(keys: dict[tuple[str, int], NoteVerifier], key: NoteVerifier) -> None:
    known = keys.setdefault((key.name, key.key_id), key)
    if known != key:
        raise InvalidNoteKey(
            f"two different trusted keys are named {key.name!r} with key id {key.key_id:08x}"
        )
