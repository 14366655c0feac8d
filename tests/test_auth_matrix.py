"""Contract 4 over a real server: every route against every kind of credential.

Each route gets one server and is called with eight credentials in turn: none, a
malformed ``Authorization`` header, an unknown key, a revoked key, another tenant's
writer key, and acme's reader, writer and admin keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio
import httpx
import msgspec
import pytest

from axon.apikeys import KeyStore, Role
from axon.keys import new_task_id
from tests.conftest import Api
from tests.test_api import error_of

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["valkey"], indirect=True)]

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
UNKNOWN_KEY = "axon_000000000000_" + "A" * 43

CREDENTIALS = ["none", "malformed", "unknown", "revoked", "other", "reader", "writer", "admin"]
"""Who calls; ``other`` is a writer key of another tenant (globex)."""
REJECTED = {"none", "malformed", "unknown", "revoked"}


class Route(NamedTuple):
    """One endpoint of the API, as the matrix calls it."""

    name: str
    method: str
    path: str
    accept: str = "*/*"
    needs: Role = Role.READER
    ok: int = 200

    def url(self, task_id: str) -> str:
        return self.path.format(task_id=task_id)

    @property
    def on_task(self) -> bool:
        return "{task_id}" in self.path


ROUTES = [
    Route("create", "POST", "/v1/tasks", needs=Role.WRITER, ok=201),
    Route("list", "GET", "/v1/tasks"),
    Route("get", "GET", "/v1/tasks/{task_id}"),
    Route("cancel", "POST", "/v1/tasks/{task_id}/cancel", needs=Role.WRITER, ok=202),
    Route("export", "GET", "/v1/tasks/{task_id}/events", accept=NDJSON),
    Route("stream", "GET", "/v1/tasks/{task_id}/events", accept=SSE),
]


class Reply(msgspec.Struct, kw_only=True):
    """What a call got back (for a live SSE stream, the body up to its first event)."""

    status: int
    headers: httpx.Headers
    body: bytes
    response: httpx.Response

    def json(self) -> Any:
        return json.loads(self.body)


class Matrix(msgspec.Struct, kw_only=True):
    """A server, one queued task of acme's, and an ``Authorization`` header per credential."""

    api: Api
    task_id: str
    authorization: dict[str, str | None]
    secrets: list[str]
    """Every key string handed out, none of which may ever appear in a response."""


async def build(make_api: Callable[..., Api]) -> Matrix:
    """Start a server, create acme's task and one key per credential."""
    api = make_api()
    revoked = await api.key("acme", Role.WRITER)
    await KeyStore(api.store).revoke(revoked[len("axon_") : len("axon_") + 12])
    keys = {
        "unknown": UNKNOWN_KEY,
        "revoked": revoked,
        "other": await api.key("globex", Role.WRITER),
        "reader": await api.key("acme", Role.READER),
        "writer": await api.key("acme", Role.WRITER),
        "admin": api.admin,
    }
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=10) as http:
        created = await http.post("/v1/tasks", json={"adapter": "mock"})
    assert created.status_code == 201, created.text
    authorization: dict[str, str | None] = {"none": None, "malformed": "Basic xyz"}
    authorization.update({name: f"Bearer {key}" for name, key in keys.items()})
    return Matrix(
        api=api,
        task_id=created.json()["id"],
        authorization=authorization,
        secrets=[key for name, key in keys.items() if name != "unknown"],
    )


async def call(
    http: httpx.AsyncClient,
    route: Route,
    task_id: str,
    authorization: str | None,
    *,
    query: str = "",
) -> Reply:
    """Call ``route`` once; a live SSE stream is read up to its first event, then closed."""
    headers = {"accept": route.accept}
    if authorization is not None:
        headers["authorization"] = authorization
    payload = {"adapter": "mock"} if route.name == "create" else None
    request = http.build_request(
        route.method, route.url(task_id) + query, headers=headers, json=payload
    )
    response = await http.send(request, stream=True)
    try:
        if response.status_code == 200 and route.accept == SSE:
            data = b""
            with anyio.fail_after(10):
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if b"event: queued" in data:
                        break
        else:
            data = await response.aread()
    finally:
        await response.aclose()
    return Reply(
        status=response.status_code, headers=response.headers, body=data, response=response
    )


def blank(text: str, task_id: str) -> Any:
    """A reply's JSON with ``task_id`` replaced by a placeholder."""
    return json.loads(text.replace(task_id, "<task-id>"))


def comparable_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    # date and the request id differ on every request, whatever the resource
    return sorted((k, v) for k, v in headers.items() if k not in ("date", "x-request-id"))


def assert_no_key_in(replies: list[Reply], secrets: list[str]) -> None:
    """No key string (nor its secret part) appears in any reply's body or headers."""
    for reply in replies:
        for secret in secrets:
            for part in (secret, secret[-43:]):
                assert part.encode() not in reply.body, reply.body
                for name, value in reply.headers.items():
                    assert part not in value, (name, value)


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
async def test_every_credential_gets_what_contract_4_says(
    make_api: Callable[..., Api], route: Route
) -> None:
    """No, malformed, unknown or revoked key: 401 with a Bearer challenge; another tenant:
    a missing task (or an empty list); reader: reads only (403 otherwise); writer and
    admin: everything; and no response ever contains a key."""
    matrix = await build(make_api)
    api, task_id = matrix.api, matrix.task_id
    missing_id = new_task_id()
    assert len(missing_id) == len(task_id)
    replies: list[Reply] = []
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        for credential in CREDENTIALS:
            authorization = matrix.authorization[credential]
            reply = await call(http, route, task_id, authorization)
            replies.append(reply)
            case = f"{route.name} as {credential}"
            if credential in REJECTED:
                error_of(reply.response, 401, "unauthenticated", case=case)
                assert reply.headers["www-authenticate"].startswith("Bearer"), case
            elif credential == "other" and route.on_task:
                missing = await call(http, route, missing_id, authorization)
                replies.append(missing)
                error_of(reply.response, 404, "task_not_found", case=case)
                assert reply.status == missing.status, case
                assert blank(reply.body.decode(), task_id) == blank(
                    missing.body.decode(), missing_id
                ), case
                assert comparable_headers(reply.headers) == comparable_headers(missing.headers), (
                    case
                )
                assert (await api.store.get_task(task_id)).state == "queued", case
            elif credential == "other" and route.name == "list":
                assert reply.status == 200, f"{case}: {reply.body!r}"
                assert reply.json() == {"items": [], "next_cursor": None}, case
            elif credential == "other":  # create: a task of globex's, invisible to acme
                assert reply.status == 201, f"{case}: {reply.body!r}"
                theirs = reply.json()["id"]
                mine = await call(http, ROUTES[2], theirs, matrix.authorization["admin"])
                replies.append(mine)
                error_of(mine.response, 404, "task_not_found", case=case)
            elif credential == "reader" and route.needs is Role.WRITER:
                error = error_of(reply.response, 403, "permission_denied", case=case)
                assert error["details"] == {"role": "reader", "required": "writer"}, case
            else:
                assert reply.status == route.ok, f"{case}: {reply.status} {reply.body!r}"
                if route.accept == SSE:
                    assert reply.headers["content-type"].startswith(SSE), case
                elif route.accept == NDJSON:
                    assert reply.headers["content-type"].startswith(NDJSON), case
                    assert json.loads(reply.body.splitlines()[0])["task"] == task_id, case
                elif route.name == "list":
                    assert task_id in [t["id"] for t in reply.json()["items"]], case
                elif route.on_task:
                    assert reply.json()["id"] == task_id, case
    assert_no_key_in(replies, matrix.secrets)


async def test_a_key_in_the_query_string_is_never_accepted(make_api: Callable[..., Api]) -> None:
    """A valid admin key passed as a query parameter instead of a header is a 401 on every
    route, and it is not echoed back."""
    matrix = await build(make_api)
    api = matrix.api
    replies: list[Reply] = []
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        for parameter in ("api_key", "key", "access_token", "token", "authorization"):
            for route in ROUTES:
                for value in (api.admin, f"Bearer {api.admin}"):
                    query = "?" + str(httpx.QueryParams({parameter: value}))
                    reply = await call(http, route, matrix.task_id, None, query=query)
                    replies.append(reply)
                    case = f"{route.name} with ?{parameter}=<{value[:6]}…>"
                    error_of(reply.response, 401, "unauthenticated", case=case)
                    assert reply.headers["www-authenticate"].startswith("Bearer"), case
        state = (await api.store.get_task(matrix.task_id)).state
    assert state == "queued"
    assert_no_key_in(replies, matrix.secrets)
