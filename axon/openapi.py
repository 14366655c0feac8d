"""The OpenAPI 3.1 document of the HTTP API, built from the msgspec wire types.

Schemas come from ``msgspec.json.schema_components`` over the very types the
endpoints decode and encode, so the document cannot drift from the code; the
paths are written out here, next to nothing else.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from axon._version import __version__
from axon.receipts import ConsistencyProof
from axon.wire import CancelTask, CreateTask, ErrorBody, Health, Task, TaskList

_REF = "#/components/schemas/{name}"


def _error_responses(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "malformed input (JSON, cursor, query parameter)",
        401: "no API key, or an unknown or revoked one",
        403: "the key's role does not allow this",
        404: "no such task (or another tenant's)",
        406: "unsupported Accept",
        409: "conflict (idempotency key reused with another body, cursor beyond the head, "
        "a cancel racing constant writes, a receipt of a task still running)",
        410: "events after the cursor are no longer retained",
        413: "request body too large",
        415: "body is not application/json",
        422: "the body failed validation; details.path is the msgspec path",
        503: "Redis or the archive is unreachable, or receipts are not configured",
    }
    return {
        str(status): {
            "description": reasons[status],
            "content": {"application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}},
        }
        for status in statuses
    }


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name=schema)}}},
    }


_TEXT_RESPONSE = {
    "description": "the signed text (C2SP formats)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}

_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
}


@functools.cache
def openapi_document() -> bytes:
    """The document as JSON bytes (built once)."""
    (_, components) = msgspec.json.schema_components(
        [CreateTask, CancelTask, Task, TaskList, ErrorBody, Health, ConsistencyProof],
        ref_template=_REF,
    )
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "The process is up",
                "security": [],
                "responses": {"200": _json_response("up", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Redis is reachable and the Lua scripts are loaded",
                "security": [],
                "responses": {
                    "200": _json_response("ready", "Health"),
                    "503": _json_response("not ready", "Health"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "description": "For a private network: no API key; when AXON_METRICS_TOKEN "
                "is set, 'Authorization: Bearer <metrics token>'. Absent (404) with "
                "AXON_METRICS=0. See docs/observability.md.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "every metric of this process",
                        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                    },
                    **_error_responses(401),
                },
            }
        },
        "/v1/tasks": {
            "post": {
                "summary": "Create a task",
                "security": secured,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                        "description": "Retries with the same key and body return the same "
                        "task (200); the same key with another body is a 409. Keys are kept "
                        "for AXON_IDEMPOTENCY_TTL_S.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(name="CreateTask")}}
                    },
                },
                "responses": {
                    "201": _json_response("created and queued", "Task"),
                    "200": _json_response("an Idempotency-Key replay: the first task", "Task"),
                    **_error_responses(400, 401, 403, 409, 413, 415, 422, 503),
                },
            },
            "get": {
                "summary": "List the tenant's tasks, newest first",
                "security": secured,
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"$ref": _REF.format(name="TaskState")},
                    },
                    {"name": "adapter", "in": "query", "schema": {"type": "string"}},
                    {"name": "lane", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page. A page may be "
                        "shorter than limit; stop when next_cursor is null.",
                    },
                ],
                "responses": {
                    "200": _json_response("a page", "TaskList"),
                    **_error_responses(400, 401, 503),
                },
            },
        },
        "/v1/tasks/{task_id}": {
            "get": {
                "summary": "One task",
                "security": secured,
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _json_response("the task", "Task"),
                    **_error_responses(400, 401, 404, 503),
                },
            }
        },
        "/v1/tasks/{task_id}/cancel": {
            "post": {
                "summary": "Request cancellation (idempotent)",
                "security": secured,
                "parameters": [_TASK_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(name="CancelTask")}}
                    },
                },
                "responses": {
                    "202": _json_response("cancellation requested (or already final)", "Task"),
                    **_error_responses(400, 401, 403, 404, 409, 503),
                },
            }
        },
        "/v1/tasks/{task_id}/events": {
            "get": {
                "summary": "The task's events: SSE (backfill, then live) or an NDJSON export",
                "description": "Accept: text/event-stream streams one frame per event "
                "(id: seq, event: kind, data: the event bytes) from the cursor, then live, "
                "and ends after the terminal event. Accept: application/x-ndjson returns "
                "the exact event bytes, one per line, up to limit (X-Axon-Last-Seq tells "
                "where to continue). The cursor is Last-Event-ID (wins) or since_seq.",
                "security": secured,
                "parameters": [
                    _TASK_ID,
                    {
                        "name": "since_seq",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
                    },
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "description": "NDJSON only (default 1000)",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the events",
                        "content": {
                            "text/event-stream": {"schema": {"type": "string"}},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    **_error_responses(400, 401, 404, 406, 409, 410, 503),
                },
            }
        },
        "/v1/tasks/{task_id}/checkpoint": {
            "get": {
                "summary": "The latest signed checkpoint of the task's log",
                "description": "A C2SP tlog-checkpoint body (origin <deployment>/<task id>, "
                "tree size, base64 RFC 6962 root) signed as a C2SP signed-note (Ed25519). "
                "See docs/receipts.md.",
                "security": secured,
                "parameters": [_TASK_ID],
                "responses": {"200": _TEXT_RESPONSE, **_error_responses(400, 401, 404, 503)},
            }
        },
        "/v1/tasks/{task_id}/events/{seq}/proof": {
            "get": {
                "summary": "A C2SP tlog-proof@v1 proving one event is in the signed log",
                "description": "Its extra line carries the event's exact bytes (base64); "
                "then the leaf index (seq - 1), the audit path and the signed checkpoint. "
                "Verify offline with `axon verify`.",
                "security": secured,
                "parameters": [
                    _TASK_ID,
                    {
                        "name": "seq",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
                    },
                ],
                "responses": {"200": _TEXT_RESPONSE, **_error_responses(400, 401, 404, 503)},
            }
        },
        "/v1/tasks/{task_id}/receipt": {
            "get": {
                "summary": "The proof of a finished task's terminal event (its outcome)",
                "security": secured,
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _TEXT_RESPONSE,
                    **_error_responses(400, 401, 404, 409, 503),
                },
            }
        },
        "/v1/tasks/{task_id}/consistency": {
            "get": {
                "summary": "RFC 6962 consistency proof between two sizes of the task's log",
                "security": secured,
                "parameters": [
                    _TASK_ID,
                    {
                        "name": "from",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1},
                        "description": "the older size (default 1)",
                    },
                    {
                        "name": "to",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1},
                        "description": "the newer size (default: the head)",
                    },
                ],
                "responses": {
                    "200": _json_response("the proof", "ConsistencyProof"),
                    **_error_responses(400, 401, 404, 503),
                },
            }
        },
        "/v1/receipt-key": {
            "get": {
                "summary": "Note verifier keys receipts verify with, one per line",
                "security": secured,
                "responses": {"200": _TEXT_RESPONSE, **_error_responses(401, 503)},
            }
        },
        "/mcp": {
            method: {
                "summary": f"MCP Streamable HTTP ({what})",
                "description": "The Model Context Protocol endpoint: JSON-RPC messages, "
                "answered as JSON or an SSE stream, per the MCP specification "
                "(2025-11-25 sessions with Last-Event-ID resumption, or 2026-07-28). "
                "Tools: start_task, get_task_status, stream_task, resume_task, cancel_task, "
                "list_tasks, get_task_receipt. See docs/mcp.md.",
                "security": secured,
                "responses": {
                    "200": {"description": "a JSON-RPC response, or an SSE stream of them"},
                    **_error_responses(401, 503),
                },
            }
            for method, what in (
                ("post", "send a message"),
                ("get", "open or resume a session's stream"),
                ("delete", "end a session"),
            )
        },
    }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Axon API",
            "version": __version__,
            "description": "Durable background tasks for AI agents. See docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "security": secured,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an Axon API key"}
            },
        },
    }
    return msgspec.json.encode(document)
