"""Every failure Axon reports, as one exception class each.

Domain code raises these; only the interfaces (HTTP, MCP, CLI) translate them
into status codes or exit codes. Each class carries ``code``, a stable
machine-readable string that clients may switch on, and ``details``, a small
JSON-able dict with the facts a caller needs to act (current head, epochs, …).
"""

from __future__ import annotations

from typing import Any, ClassVar


class AxonError(Exception):
    """Base class of every error Axon raises on purpose."""

    code: ClassVar[str] = "axon_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details


class ConfigError(AxonError):
    """Raised when settings are missing, malformed or contradict each other."""

    code = "invalid_config"


class InvalidArgument(AxonError):
    """Raised when an argument is malformed (a cursor, an entry id, a count)."""

    code = "invalid_argument"


class InvalidEvent(AxonError):
    """Raised when an event to append is malformed: bad kind, non-object data, bad encoding."""

    code = "invalid_event"


class EventTooLarge(InvalidEvent):
    """Raised when one encoded event exceeds the configured maximum size."""

    code = "event_too_large"


class InvalidTaskId(AxonError):
    """Raised when a task id is not a well-formed Axon task id."""

    code = "invalid_task_id"


class InvalidTaskSpec(AxonError):
    """Raised when a task to create has a malformed tenant, adapter, lane or arguments."""

    code = "invalid_task"


class TaskNotFound(AxonError):
    """Raised when a task does not exist (or belongs to another tenant)."""

    code = "task_not_found"


class TaskExists(AxonError):
    """Raised when creating a task whose id is already taken."""

    code = "task_exists"


class AppendRejected(AxonError):
    """Base class of the reasons the append script refuses a whole batch."""

    code = "append_rejected"


class StaleHead(AppendRejected):
    """Raised when the writer's expected head (seq, hash) is not the log's current head."""

    code = "stale_head"


class Fenced(AppendRejected):
    """Raised when the writer's lease epoch is not the task's current epoch (it lost its lease)."""

    code = "fenced"


class TaskTerminal(AppendRejected):
    """Raised when appending to, or transitioning, a task that already reached a final state."""

    code = "task_terminal"


class LeaseLive(AppendRejected):
    """Raised when a takeover requires an expired lease but the holder renewed it."""

    code = "lease_live"


class IllegalTransition(AppendRejected):
    """Raised when a state change is not allowed by the task state machine."""

    code = "illegal_transition"


class ChainBroken(AxonError):
    """Raised when a sequence of event bytes is not a valid hash chain.

    ``index`` is the 0-based position in the input, ``seq`` the sequence number
    expected at that position and ``reason`` a short machine-readable cause.
    """

    code = "chain_broken"

    def __init__(self, message: str, *, index: int, seq: int, reason: str) -> None:
        super().__init__(message, index=index, seq=seq, reason=reason)
        self.index = index
        self.seq = seq
        self.reason = reason


class EventsUnavailable(AxonError):
    """Raised when events after a cursor are no longer in Redis (trimmed by compaction)."""

    code = "events_unavailable"


class ArchiveUnavailable(AxonError):
    """Raised when archived history cannot be written or read: missing, unreadable, corrupted."""

    code = "archive_unavailable"


class EventNotFound(AxonError):
    """Raised when asking for an event past the task's head (a proof of seq 9 of 5 events)."""

    code = "event_not_found"


class TaskNotFinished(AxonError):
    """Raised when a task's receipt is asked for before the task reached a terminal state."""

    code = "task_not_finished"


class ReceiptsUnavailable(AxonError):
    """Raised when receipts are asked of a server that has no signing key configured."""

    code = "receipts_unavailable"


class SigningConflict(AxonError):
    """Raised instead of signing a second, different root for a tree size already signed."""

    code = "signing_conflict"


class CompactionBusy(AxonError):
    """Raised when another compactor replica holds a task (or committed its compaction first)."""

    code = "compaction_busy"


class VerificationFailed(AxonError):
    """Raised by ``axon verify`` when a receipt, an export or a consistency proof fails a check."""

    code = "verification_failed"


class DurabilityUnsupported(AxonError):
    """Raised when strict durability is requested but the server cannot confirm an fsync."""

    code = "durability_unsupported"


class DurabilityTimeout(AxonError):
    """Raised when an append was applied but its AOF fsync was not confirmed in time."""

    code = "durability_timeout"


class StoreUnavailable(AxonError):
    """Raised when Redis cannot be reached or answers with an unexpected error."""

    code = "store_unavailable"


class InvalidCursor(AxonError):
    """Raised when a cursor (``Last-Event-ID``, ``since_seq``, a page cursor) is malformed."""

    code = "invalid_cursor"


class CursorAhead(AxonError):
    """Raised when a resume cursor is beyond the task's head: those events do not exist."""

    code = "cursor_ahead"


class Unauthenticated(AxonError):
    """Raised when a request has no API key, or a malformed, unknown or revoked one."""

    code = "unauthenticated"


class PermissionDenied(AxonError):
    """Raised when a valid key's role does not allow the operation (a reader starting a task)."""

    code = "permission_denied"


class KeyNotFound(AxonError):
    """Raised when an API key id names no key."""

    code = "key_not_found"


class IdempotencyConflict(AxonError):
    """Raised when an ``Idempotency-Key`` is reused with a different request body."""

    code = "idempotency_conflict"


class RequestTooLarge(AxonError):
    """Raised when a request body is larger than ``Settings.max_body_bytes``."""

    code = "request_too_large"


class NoteError(AxonError):
    """Raised when a signed note, or a key for one, is malformed."""

    code = "invalid_note"


class InvalidNoteKey(NoteError):
    """Raised when a note signer or verifier key string is malformed or inconsistent."""

    code = "invalid_note_key"


class NoteSignatureInvalid(NoteError):
    """Raised when a note carries a signature from a trusted key that does not verify."""

    code = "invalid_note_signature"


class NoteUnverified(NoteError):
    """Raised when a well-formed note carries no signature from any trusted key."""

    code = "note_unverified"


class InvalidCheckpoint(NoteError):
    """Raised when a tlog checkpoint body, or a checkpoint origin, is malformed."""

    code = "invalid_checkpoint"


class InvalidTlogProof(NoteError):
    """Raised when a ``c2sp.org/tlog-proof@v1`` proof is malformed."""

    code = "invalid_tlog_proof"


class ReceiptKeyExists(AxonError):
    """Raised when initialising a receipt signing key where one already exists (without force)."""

    code = "receipt_key_exists"


class ReceiptKeyInsecure(AxonError):
    """Raised when the receipt signing key file is accessible by group or others."""

    code = "receipt_key_insecure"


class RateLimited(AxonError):
    """Too many calls of one tenant are waiting at once (an MCP long-poll limit)."""

    code = "rate_limited"


class ServerUnreachable(AxonError):
    """Raised by ``axon.Client`` when the API server cannot be reached or stops answering."""

    code = "server_unreachable"


class ApiError(AxonError):
    """Raised by ``axon.Client`` for an API error with no class of its own here.

    ``status`` is the HTTP status and ``error_code`` the error body's ``code``
    (``validation_error``, ``not_acceptable``, …, or ``invalid_response`` when
    the server's answer could not be understood).
    """

    code = "api_error"

    def __init__(self, message: str, *, status: int, error_code: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self.error_code = error_code
