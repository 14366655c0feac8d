"""The HTTP API over a real uvicorn server: every route, and every kind of bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon.api import create_app
from axon.apikeys import Role
from axon.chain import verify_chain
from axon.keys import new_task_id
from axon.store import now_ms
from axon.writer import EventWriter
from tests.conftest import Api

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["valkey"], indirect=True)]

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
MOCK = {"adapter": "mock"}


def client(api: Api, key: str | None = None) -> httpx.AsyncClient:
    """An httpx client for ``api`` sending ``key`` (default: acme's admin key)."""
    return httpx.AsyncClient(base_url=api.url, headers=api.headers(key), timeout=10)


def error_of(reply: httpx.Response, status: int, *codes: str, case: object = "") -> dict[str, Any]:
    """The contract-5 error object of ``reply``, after checking status, shape and code.

    ``case`` names the input in assertion messages (for tests that loop over inputs).
    """
    what = f"{case!r}: {reply.request.method} {reply.request.url.raw_path.decode()}"
    assert reply.status_code == status, f"{what} -> {reply.status_code} {reply.text}"
    assert reply.headers["content-type"].startswith("application/json"), what
    assert "Traceback" not in reply.text, what
    assert 'File "' not in reply.text, what
    body = reply.json()
    assert list(body) == ["error"], f"{what} -> {body}"
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, f"{what} -> {error}"
    assert isinstance(error["code"], str), what
    assert isinstance(error["message"], str), what
    assert error["message"], what
    assert isinstance(error["details"], dict), what
    if codes:
        assert error["code"] in codes, f"{what} -> {error}"
    return error


async def create(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """Create a task over HTTP (adapter ``mock`` unless given) and return its JSON."""
    reply = await http.post("/v1/tasks", json={**MOCK, **body})
    assert reply.status_code == 201, reply.text
    task: dict[str, Any] = reply.json()
    return task


async def next_millisecond() -> None:
    """Wait until the clock moved to a new millisecond (task ids order to the ms only)."""
    start = now_ms()
    with anyio.fail_after(1):
        while now_ms() == start:  # noqa: ASYNC110 - waiting for the clock, not an event
            await anyio.sleep(0.001)


async def stored_bytes(api: Api, task_id: str) -> list[bytes]:
    return [e.raw async for e in api.store.iter_events(task_id)]


async def task_with_steps(api: Api, http: httpx.AsyncClient, steps: int) -> str:
    """A task created over HTTP with ``steps`` events appended after its ``queued`` event."""
    task_id: str = (await create(http))["id"]
    writer = EventWriter(api.store, task_id, epoch=0)
    for i in range(steps):
        await writer.emit("step", {"i": i})
    return task_id


def lines_of(reply: httpx.Response) -> list[bytes]:
    """The event lines of an NDJSON export, checking that every line ends in a newline."""
    assert reply.content == b"" or reply.content.endswith(b"\n")
    return reply.content.splitlines()


# -- creating and reading tasks ----------------------------------------------------


async def test_create_returns_the_queued_task_and_its_location(
    make_api: Callable[..., Api],
) -> None:
    """POST /v1/tasks answers 201 with the queued task and a Location; GET returns the same."""
    api = make_api()
    async with client(api) as http:
        reply = await http.post("/v1/tasks", json=MOCK)
        assert reply.status_code == 201, reply.text
        assert reply.headers["content-type"] == "application/json"
        task = reply.json()
        task_id = task["id"]
        assert task["state"] == "queued"
        assert task["adapter"] == "mock"
        assert task["lane"] == "default"
        assert task["stream_url"] == f"/v1/tasks/{task_id}/events"
        assert task["last_seq"] == 1
        assert task["cancel_requested"] is False
        assert reply.headers["location"] == f"/v1/tasks/{task_id}"
        assert "idempotent-replayed" not in reply.headers
        assert not {"tenant", "epoch", "lease_owner"} & set(task)
        fetched = await http.get(f"/v1/tasks/{task_id}")
    assert fetched.status_code == 200
    assert fetched.json() == task


async def test_create_round_trips_every_optional_field(make_api: Callable[..., Api]) -> None:
    """lane, name, args, metadata, timeout_s and max_attempts come back as sent."""
    api = make_api()
    sent = {
        "adapter": "mock",
        "lane": "high",
        "name": "nightly-report",
        "args": {"n": 3, "nested": {"list": [1, "two", None, True]}},
        "metadata": {"team": "data", "ticket": "AX-1"},
        "timeout_s": 12.5,
        "max_attempts": 4,
    }
    async with client(api) as http:
        task = await create(http, **sent)
        fetched = (await http.get(f"/v1/tasks/{task['id']}")).json()
    for name, value in sent.items():
        assert task[name] == value, name
        assert fetched[name] == value, name
    assert fetched == task


async def test_no_content_type_is_taken_as_json(make_api: Callable[..., Api]) -> None:
    """A body without Content-Type is decoded as JSON."""
    api = make_api()
    async with client(api) as http:
        reply = await http.post("/v1/tasks", content=json.dumps(MOCK).encode())
        assert "content-type" not in reply.request.headers
    assert reply.status_code == 201, reply.text


# -- idempotency keys --------------------------------------------------------------


async def test_idempotent_replay_returns_the_first_task(make_api: Callable[..., Api]) -> None:
    """The same Idempotency-Key with the same body answers 200 with the first task's id."""
    api = make_api()
    headers = {"idempotency-key": "order-17"}
    async with client(api) as http:
        first = await http.post("/v1/tasks", json=MOCK, headers=headers)
        again = await http.post("/v1/tasks", json=MOCK, headers=headers)
        listed = (await http.get("/v1/tasks")).json()["items"]
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert [t["id"] for t in listed] == [first.json()["id"]]


async def test_idempotency_key_with_another_body_conflicts(make_api: Callable[..., Api]) -> None:
    """The same Idempotency-Key with a different body is a 409 idempotency_conflict."""
    api = make_api()
    headers = {"idempotency-key": "order-18"}
    async with client(api) as http:
        first = await http.post("/v1/tasks", json=MOCK, headers=headers)
        other = await http.post("/v1/tasks", json={**MOCK, "name": "x"}, headers=headers)
    assert first.status_code == 201
    error_of(other, 409, "idempotency_conflict")


async def test_idempotency_keys_are_per_tenant(make_api: Callable[..., Api]) -> None:
    """Two tenants using the same Idempotency-Key and body get two different tasks."""
    api = make_api()
    other_key = await api.key("globex", Role.WRITER)
    headers = {"idempotency-key": "shared-key"}
    async with client(api) as acme, client(api, other_key) as globex:
        mine = await acme.post("/v1/tasks", json=MOCK, headers=headers)
        theirs = await globex.post("/v1/tasks", json=MOCK, headers=headers)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


async def test_idempotency_key_is_never_echoed(make_api: Callable[..., Api]) -> None:
    """No response (created, replayed, conflict, malformed key) contains the Idempotency-Key."""
    api = make_api()
    idempotency_key = "k3y-Th4t-Must-N0t-Leak"
    headers = {"idempotency-key": idempotency_key}
    async with client(api) as http:
        replies = [
            await http.post("/v1/tasks", json=MOCK, headers=headers),
            await http.post("/v1/tasks", json=MOCK, headers=headers),
            await http.post("/v1/tasks", json={**MOCK, "name": "x"}, headers=headers),
            await http.post(
                "/v1/tasks", json=MOCK, headers={"idempotency-key": idempotency_key * 12}
            ),
        ]
    assert [r.status_code for r in replies] == [201, 200, 409, 400]
    error_of(replies[3], 400, "invalid_argument")
    for reply in replies:
        assert idempotency_key not in reply.text
        assert all(idempotency_key not in value for value in reply.headers.values())


# -- listing -------------------------------------------------------------------------


async def test_list_is_newest_first_and_pages_visit_every_task_once(
    make_api: Callable[..., Api],
) -> None:
    """GET /v1/tasks lists newest first; following next_cursor visits every task once."""
    api = make_api()
    created: list[str] = []
    async with client(api) as http:
        for _ in range(7):
            await next_millisecond()
            created.append((await create(http))["id"])
        everything = (await http.get("/v1/tasks")).json()
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "3"} if cursor is None else {"limit": "3", "cursor": cursor}
            reply = await http.get("/v1/tasks", params=params)
            assert reply.status_code == 200, reply.text
            page = reply.json()
            assert len(page["items"]) <= 3
            seen += [t["id"] for t in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert [t["id"] for t in everything["items"]] == created[::-1]
    assert everything["next_cursor"] is None
    assert seen == created[::-1]
    assert pages == 3


async def test_list_filters_by_state_adapter_and_lane(make_api: Callable[..., Api]) -> None:
    """state, adapter and lane filters each select exactly the matching tasks."""
    api = make_api()
    async with client(api) as http:
        plain = (await create(http))["id"]
        shell = (await create(http, adapter="shell", lane="high"))["id"]
        low = (await create(http, lane="low"))["id"]
        canceled = (await create(http))["id"]
        assert (await http.post(f"/v1/tasks/{canceled}/cancel")).status_code == 202

        async def ids(**params: str) -> set[str]:
            reply = await http.get("/v1/tasks", params=params)
            assert reply.status_code == 200, reply.text
            return {t["id"] for t in reply.json()["items"]}

        assert await ids(state="canceled") == {canceled}
        assert await ids(state="queued") == {plain, shell, low}
        assert await ids(state="succeeded") == set()
        assert await ids(adapter="shell") == {shell}
        assert await ids(adapter="mock") == {plain, low, canceled}
        assert await ids(lane="low") == {low}
        assert await ids(lane="high") == {shell}
        assert await ids(adapter="mock", state="queued", lane="default") == {plain}


BAD_LIST_QUERIES = [
    ("state=bogus", "invalid_argument", "state"),
    ("state=QUEUED", "invalid_argument", "state"),
    ("limit=0", "invalid_argument", "limit"),
    ("limit=201", "invalid_argument", "limit"),
    ("limit=abc", "invalid_argument", "limit"),
    ("limit=-1", "invalid_argument", "limit"),
    ("limit=1.5", "invalid_argument", "limit"),
    ("limit=", "invalid_argument", "limit"),
    ("bogus=1", "invalid_argument", "bogus"),
    ("api_key=x", "invalid_argument", "api_key"),
    ("cursor=not%20a%20cursor", "invalid_cursor", None),
    ("cursor=" + "a" * 65, "invalid_cursor", None),
    ("cursor=t_%7B%7D", "invalid_cursor", None),
]


async def test_list_rejects_bad_parameters(make_api: Callable[..., Api]) -> None:
    """Bad filters, limits, unknown parameters and malformed cursors are 400s."""
    api = make_api()
    async with client(api) as http:
        for query, code, parameter in BAD_LIST_QUERIES:
            error = error_of(await http.get(f"/v1/tasks?{query}"), 400, code, case=query)
            if parameter is not None:
                assert error["details"]["parameter"] == parameter, query
        assert (await http.get("/v1/tasks?limit=200")).status_code == 200
        assert (await http.get("/v1/tasks?limit=1")).status_code == 200


# -- cancelling ------------------------------------------------------------------------


async def test_cancel_is_accepted_and_idempotent(make_api: Callable[..., Api]) -> None:
    """Cancelling a queued task answers 202 canceled, and so does cancelling it again."""
    api = make_api()
    async with client(api) as http:
        task_id = (await create(http))["id"]
        first = await http.post(f"/v1/tasks/{task_id}/cancel")
        again = await http.post(f"/v1/tasks/{task_id}/cancel")
        fetched = (await http.get(f"/v1/tasks/{task_id}")).json()
    assert first.status_code == 202, first.text
    assert first.json()["state"] == "canceled"
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert fetched["state"] == "canceled"
    assert [json.loads(raw)["kind"] for raw in await stored_bytes(api, task_id)] == [
        "queued",
        "canceled",
    ]


async def test_cancel_reason_is_kept_and_bad_bodies_refused(make_api: Callable[..., Api]) -> None:
    """A cancel body's reason lands on the task and in its canceled event; a body that is
    not {"reason": string} is a 400/422 and cancels nothing."""
    api = make_api()
    async with client(api) as http:
        task_id = (await create(http))["id"]
        refused = [
            await http.post(f"/v1/tasks/{task_id}/cancel", content=body)
            for body in (b"{", b'{"reason": ""}', b'{"reason": 5}', b'{"why": "x"}', b"[]")
        ]
        still = (await http.get(f"/v1/tasks/{task_id}")).json()
        done = await http.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "superseded"})
    assert [r.status_code for r in refused] == [400, 422, 422, 422, 422]
    assert all(r.json()["error"]["code"] in ("malformed_json", "validation_error") for r in refused)
    assert still["state"] == "queued"
    assert done.status_code == 202
    assert done.json()["cancel_reason"] == "superseded"
    last = json.loads((await stored_bytes(api, task_id))[-1])
    assert last["kind"] == "canceled"
    assert last["data"] == {"reason": "superseded", "ran": False}


# -- bad input ---------------------------------------------------------------------------


BAD_BODIES: list[tuple[bytes, int, tuple[str, ...], str | None]] = [
    (b'{"adapter": "mock"', 400, ("malformed_json",), None),
    (b"{'adapter': 'mock'}", 400, ("malformed_json",), None),
    (b"\xff\xfe", 400, ("malformed_json",), None),
    (b"", 400, ("malformed_json",), None),
    (b"  \n", 400, ("malformed_json",), None),
    (b'[{"adapter": "mock"}]', 422, ("validation_error",), "$"),
    (b"42", 422, ("validation_error",), "$"),
    (b"null", 422, ("validation_error",), "$"),
    (b'{"adapter": 1}', 422, ("validation_error",), "$.adapter"),
    (b"{}", 422, ("validation_error",), "$"),
    (b'{"adapter": "mock", "timeout": 5}', 422, ("validation_error",), "$"),
    (b'{"adapter": ""}', 422, ("validation_error", "invalid_task"), None),
    (b'{"adapter": "Mock"}', 422, ("validation_error", "invalid_task"), None),
    (b'{"adapter": "mo ck"}', 422, ("validation_error", "invalid_task"), None),
    (b'{"adapter": "mock", "lane": "nope"}', 422, ("invalid_task",), None),
    (b'{"adapter": "mock", "lane": ""}', 422, ("validation_error", "invalid_task"), None),
    (b'{"adapter": "mock", "timeout_s": 0}', 422, ("validation_error",), "$.timeout_s"),
    (b'{"adapter": "mock", "timeout_s": -1}', 422, ("validation_error",), "$.timeout_s"),
    (b'{"adapter": "mock", "timeout_s": "5"}', 422, ("validation_error",), "$.timeout_s"),
    (b'{"adapter": "mock", "args": [1]}', 422, ("validation_error",), "$.args"),
    (b'{"adapter": "mock", "args": "x"}', 422, ("validation_error",), "$.args"),
    (b'{"adapter": "mock", "metadata": {"a": 1}}', 422, ("validation_error",), None),
    (b'{"adapter": "mock", "max_attempts": 0}', 422, ("validation_error",), None),
    (b'{"adapter": "mock", "args": {"x": 1e400}}', 422, ("validation_error",), None),
]
"""(body, status, acceptable codes, details.path) of bodies POST /v1/tasks refuses."""


async def test_malformed_create_bodies_are_refused(make_api: Callable[..., Api]) -> None:
    """Malformed JSON is a 400; well-formed JSON that is not a valid task is a 422 whose
    details.path points at the offending field; no task is created."""
    api = make_api()
    async with client(api) as http:
        for body, status, codes, path in BAD_BODIES:
            reply = await http.post(
                "/v1/tasks", content=body, headers={"content-type": "application/json"}
            )
            error = error_of(reply, status, *codes, case=body)
            if path is not None:
                assert error["details"]["path"] == path, body
            if error["code"] == "validation_error":
                assert error["details"]["path"].startswith("$"), body
        listed = (await http.get("/v1/tasks")).json()["items"]
    assert listed == []


async def test_metadata_value_error_names_the_metadata_path(make_api: Callable[..., Api]) -> None:
    """A non-string metadata value is a 422 whose path is inside $.metadata."""
    api = make_api()
    async with client(api) as http:
        reply = await http.post("/v1/tasks", json={**MOCK, "metadata": {"team": 7}})
    assert error_of(reply, 422, "validation_error")["details"]["path"].startswith("$.metadata")


@pytest.mark.parametrize(
    "body",
    [
        b'{"adapter": "mock", "args": {"a": "\xff"}}',
        b'{"adapter": "mock", "name": "\xc3"}',
        b'{"adapter": "mock", "args": {"\xed\xa0\x80": 1}}',  # a UTF-8-encoded surrogate
    ],
)
async def test_invalid_utf8_inside_a_string_is_malformed_json(
    make_api: Callable[..., Api], body: bytes
) -> None:
    """Invalid UTF-8 inside a JSON string is a 400 malformed_json, not a 500."""
    api = make_api()
    async with client(api) as http:
        reply = await http.post(
            "/v1/tasks", content=body, headers={"content-type": "application/json"}
        )
    error_of(reply, 400, "malformed_json", case=body)


async def test_body_over_the_limit_with_content_length_is_413(
    make_api: Callable[..., Api],
) -> None:
    """A body whose Content-Length is over max_body_bytes is refused with 413 unread."""
    api = make_api(max_body_bytes=1024)
    body = json.dumps({**MOCK, "args": {"pad": "x" * 2000}}).encode()
    async with client(api) as http:
        reply = await http.post(
            "/v1/tasks", content=body, headers={"content-type": "application/json"}
        )
        small = await http.post("/v1/tasks", json=MOCK)
    error = error_of(reply, 413, "request_too_large")
    assert error["details"]["limit"] == 1024
    assert small.status_code == 201


async def test_chunked_body_over_the_limit_is_413(make_api: Callable[..., Api]) -> None:
    """A chunked body (no Content-Length) is counted as it arrives and refused with 413
    past max_body_bytes, while a chunked body under the limit is accepted."""
    api = make_api(max_body_bytes=1024)

    def chunked(body: bytes) -> Callable[[], AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 256):
                yield body[start : start + 256]

        return chunks

    big = json.dumps({**MOCK, "args": {"pad": "x" * 3000}}).encode()
    small = json.dumps({**MOCK, "args": {"pad": "x" * 500}}).encode()
    async with client(api) as http:
        over = await http.post(
            "/v1/tasks", content=chunked(big)(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in over.request.headers
        assert over.request.headers["transfer-encoding"] == "chunked"
        under = await http.post(
            "/v1/tasks", content=chunked(small)(), headers={"content-type": "application/json"}
        )
    error_of(over, 413, "request_too_large")
    assert under.status_code == 201, under.text


async def test_body_that_is_not_json_is_415(make_api: Callable[..., Api]) -> None:
    """A body sent as anything but application/json is a 415; charset parameters are fine."""
    api = make_api()
    body = json.dumps(MOCK).encode()
    async with client(api) as http:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/json"):
            reply = await http.post(
                "/v1/tasks", content=body, headers={"content-type": content_type}
            )
            error_of(reply, 415, "unsupported_media_type", case=content_type)
        utf8 = await http.post(
            "/v1/tasks", content=body, headers={"content-type": "Application/JSON; charset=utf-8"}
        )
    assert utf8.status_code == 201, utf8.text


async def test_unknown_route_is_a_json_404(make_api: Callable[..., Api]) -> None:
    """A path no route serves is a JSON 404 not_found."""
    api = make_api()
    async with client(api) as http:
        for path in ("/nope", "/v1/nope", "/v1/tasks/x/y/z", "/v2/tasks"):
            error = error_of(await http.get(path), 404, "not_found", case=path)
            assert error["details"] == {"path": path}


async def test_idle_connections_are_kept_for_http_keepalive_s(
    make_api: Callable[..., Api],
) -> None:
    """An idle keep-alive connection is closed by the server after ``http_keepalive_s``,
    not uvicorn's 5 s default (which equals httpx's own idle expiry, so a reused
    connection could race the server's close)."""
    api = make_api(http_keepalive_s=1)
    async with await anyio.connect_tcp("127.0.0.1", api.port) as conn:
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: axon\r\n\r\n")
        reply = b""
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in reply:
                reply += await conn.receive()
        assert reply.startswith(b"HTTP/1.1 200")
        started = anyio.current_time()
        with anyio.fail_after(4):  # uvicorn's default would close only after 5 s
            try:
                while await conn.receive():
                    pass
            except anyio.EndOfStream:
                pass
        assert anyio.current_time() - started >= 0.5  # it stayed open, then closed


async def test_wrong_method_is_a_json_405(make_api: Callable[..., Api]) -> None:
    """A known path with a method it does not serve is a JSON 405 with an Allow header."""
    api = make_api()
    async with client(api) as http:
        for method, path in [
            ("DELETE", "/v1/tasks"),
            ("PUT", "/v1/tasks"),
            ("DELETE", "/v1/tasks/t_x"),
            ("GET", "/v1/tasks/t_x/cancel"),
            ("POST", "/v1/tasks/t_x/events"),
            ("POST", "/healthz"),
        ]:
            reply = await http.request(method, path)
            error_of(reply, 405, "method_not_allowed", case=method)
            assert method not in reply.headers["allow"], (method, path)


async def test_405_allow_header_lists_every_method_of_the_path(
    make_api: Callable[..., Api],
) -> None:
    """The Allow header of a 405 on /v1/tasks lists both GET and POST (RFC 9110 15.5.6)."""
    api = make_api()
    async with client(api) as http:
        reply = await http.delete("/v1/tasks")
    assert reply.status_code == 405
    allowed = {m.strip() for m in reply.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


TASK_ROUTES = [("GET", ""), ("POST", "/cancel"), ("GET", "/events")]


async def test_malformed_task_id_is_400(make_api: Callable[..., Api]) -> None:
    """A task id outside [A-Za-z0-9_-]{1,64} is a 400 invalid_task_id on every task route."""
    api = make_api()
    async with client(api) as http:
        for task_id in ("bad%20id%21", "a" * 65, "t%7Bx%7D", "%C3%A9t%C3%A9", "t.x", "%20"):
            for method, suffix in TASK_ROUTES:
                reply = await http.request(method, f"/v1/tasks/{task_id}{suffix}")
                error_of(reply, 400, "invalid_task_id", case=task_id)
        assert (await http.get(f"/v1/tasks/{'a' * 64}")).status_code == 404


async def test_unknown_task_is_404(make_api: Callable[..., Api]) -> None:
    """A well-formed id of no task is a 404 task_not_found on every task route."""
    api = make_api()
    task_id = new_task_id()
    async with client(api) as http:
        for method, suffix, accept in [
            *((m, s, "*/*") for m, s in TASK_ROUTES),
            ("GET", "/events", SSE),
        ]:
            reply = await http.request(
                method, f"/v1/tasks/{task_id}{suffix}", headers={"accept": accept}
            )
            error = error_of(reply, 404, "task_not_found", case=accept)
            assert error["details"] == {"task_id": task_id}


# -- events --------------------------------------------------------------------------------


async def test_ndjson_export_is_the_stored_bytes(make_api: Callable[..., Api]) -> None:
    """The NDJSON export (also the default, for */* or no Accept) is the exact stored event
    bytes, one a line, with the last and head seqs in headers."""
    api = make_api()
    async with client(api) as http:
        task_id = await task_with_steps(api, http, 5)
        stored = await stored_bytes(api, task_id)
        assert len(stored) == 6
        for accept in (NDJSON, "*/*", None, "application/*", f"{NDJSON}; q=0.9", "text/*, */*"):
            request = http.build_request("GET", f"/v1/tasks/{task_id}/events")
            if accept is None:
                del request.headers["accept"]
            else:
                request.headers["accept"] = accept
            reply = await http.send(request)
            assert reply.status_code == 200, (accept, reply.text)
            assert reply.headers["content-type"].startswith(NDJSON), accept
            assert lines_of(reply) == stored, accept
            assert reply.headers["x-axon-last-seq"] == "6", accept
            assert reply.headers["x-axon-head-seq"] == "6", accept
    verify_chain(stored, task=task_id)


async def test_ndjson_pages_with_limit_and_since_seq(make_api: Callable[..., Api]) -> None:
    """limit pages the export; since_seq continues it; the pages concatenate into the whole
    log, which verifies as one chain."""
    api = make_api()
    async with client(api, None) as http:
        task_id = await task_with_steps(api, http, 11)
        http.headers["accept"] = NDJSON
        pages: list[list[bytes]] = []
        since = 0
        while True:
            reply = await http.get(
                f"/v1/tasks/{task_id}/events", params={"limit": "5", "since_seq": str(since)}
            )
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-axon-head-seq"] == "12"
            page = lines_of(reply)
            if not page:
                assert reply.headers["x-axon-last-seq"] == str(since)
                break
            pages.append(page)
            assert [json.loads(line)["seq"] for line in page] == list(
                range(since + 1, since + 1 + len(page))
            )
            since = int(reply.headers["x-axon-last-seq"])
            assert since == json.loads(page[-1])["seq"]
    assert [len(p) for p in pages] == [5, 5, 2]
    joined = [line for page in pages for line in page]
    assert joined == await stored_bytes(api, task_id)
    verify_chain(joined, task=task_id)


async def test_last_event_id_wins_over_since_seq(make_api: Callable[..., Api]) -> None:
    """With both a Last-Event-ID header and since_seq, the header is the cursor."""
    api = make_api()
    async with client(api) as http:
        task_id = await task_with_steps(api, http, 5)
        reply = await http.get(
            f"/v1/tasks/{task_id}/events?since_seq=1",
            headers={"accept": NDJSON, "last-event-id": "3"},
        )
    assert reply.status_code == 200, reply.text
    assert [json.loads(line)["seq"] for line in lines_of(reply)] == [4, 5, 6]


BAD_CURSORS: list[tuple[str, dict[str, str]]] = [
    ("since_seq=abc", {}),
    ("since_seq=-1", {}),
    ("since_seq=1.5", {}),
    ("since_seq=%2B1", {}),
    ("since_seq=1e3", {}),
    ("since_seq=", {}),
    ("since_seq=99999999999999999999", {}),
    ("since_seq=%D9%A3", {}),  # ARABIC-INDIC DIGIT THREE: a digit, but not 0-9
    ("", {"last-event-id": "x"}),
    ("", {"last-event-id": "-1"}),
    ("", {"last-event-id": ""}),
    ("", {"last-event-id": "99999999999999999999"}),
    ("since_seq=1", {"last-event-id": "1e3"}),
]
"""(query, headers) of malformed resume cursors."""


async def test_malformed_cursor_is_400(make_api: Callable[..., Api]) -> None:
    """A since_seq or Last-Event-ID that is not a whole number >= 0 is a 400 invalid_cursor,
    for SSE and NDJSON alike."""
    api = make_api()
    async with client(api) as http:
        task_id = (await create(http))["id"]
        for accept in (NDJSON, SSE):
            for query, headers in BAD_CURSORS:
                reply = await http.get(
                    f"/v1/tasks/{task_id}/events?{query}", headers={"accept": accept, **headers}
                )
                case = (accept, query, headers)
                error = error_of(reply, 400, "invalid_cursor", case=case)
                source = "Last-Event-ID" if headers else "since_seq"
                assert error["details"]["source"] == source, case


async def test_cursor_beyond_the_head_is_409(make_api: Callable[..., Api]) -> None:
    """A cursor past the task's last event is a 409 cursor_ahead saying where the head is
    (SSE and NDJSON, since_seq and Last-Event-ID); a cursor at the head is served."""
    api = make_api()
    async with client(api) as http:
        task_id = await task_with_steps(api, http, 2)
        url = f"/v1/tasks/{task_id}/events"
        for accept in (NDJSON, SSE):
            for seq in (4, 10**17):
                by_query = await http.get(f"{url}?since_seq={seq}", headers={"accept": accept})
                by_header = await http.get(
                    url, headers={"accept": accept, "last-event-id": str(seq)}
                )
                for reply in (by_query, by_header):
                    error = error_of(reply, 409, "cursor_ahead", case=(accept, seq))
                    assert error["details"] == {"cursor": seq, "last_seq": 3}
        at_head = await http.get(f"{url}?since_seq=3", headers={"accept": NDJSON})
    assert at_head.status_code == 200
    assert at_head.content == b""
    assert at_head.headers["x-axon-last-seq"] == "3"


async def test_unsupported_accept_is_406(make_api: Callable[..., Api]) -> None:
    """Asking the events endpoint for anything but SSE or NDJSON is a 406 not_acceptable."""
    api = make_api()
    async with client(api) as http:
        task_id = (await create(http))["id"]
        for accept in ("application/json", "text/html", "text/plain, image/png"):
            reply = await http.get(f"/v1/tasks/{task_id}/events", headers={"accept": accept})
            error = error_of(reply, 406, "not_acceptable", case=accept)
            assert set(error["details"]["offered"]) == {SSE, NDJSON}


async def test_limit_is_refused_for_sse(make_api: Callable[..., Api]) -> None:
    """limit applies to NDJSON exports only: with SSE it is a 400 invalid_argument."""
    api = make_api()
    async with client(api) as http:
        task_id = (await create(http))["id"]
        reply = await http.get(f"/v1/tasks/{task_id}/events?limit=5", headers={"accept": SSE})
    assert error_of(reply, 400, "invalid_argument")["details"]["parameter"] == "limit"


async def test_bad_export_parameters_are_400(make_api: Callable[..., Api]) -> None:
    """An export limit outside 1..10000, or an unknown parameter, is a 400 invalid_argument."""
    api = make_api()
    async with client(api) as http:
        task_id = (await create(http))["id"]
        url = f"/v1/tasks/{task_id}/events"
        for query in ("limit=0", "limit=10001", "limit=abc", "limit=", "foo=1", "access_token=x"):
            reply = await http.get(f"{url}?{query}", headers={"accept": NDJSON})
            error_of(reply, 400, "invalid_argument", case=query)
        for edge in ("limit=1", "limit=10000"):
            assert (await http.get(f"{url}?{edge}", headers={"accept": NDJSON})).status_code == 200


async def test_sse_serves_the_stored_bytes_of_a_finished_task(
    make_api: Callable[..., Api],
) -> None:
    """SSE on a cancelled task sends each stored event as one frame and then ends."""
    api = make_api()
    async with client(api) as http:
        task_id = await task_with_steps(api, http, 2)
        assert (await http.post(f"/v1/tasks/{task_id}/cancel")).status_code == 202
        reply = await http.get(f"/v1/tasks/{task_id}/events", headers={"accept": SSE})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith(SSE)
    frames = [block for block in reply.content.split(b"\n\n") if b"\ndata: " in block]
    stored = await stored_bytes(api, task_id)
    assert [f.split(b"\ndata: ", 1)[1] for f in frames] == stored
    assert [f.split(b"\n", 1)[0] for f in frames] == [b"id: 1", b"id: 2", b"id: 3", b"id: 4"]


# -- health and the OpenAPI document -------------------------------------------------------


async def test_healthz_needs_no_key(make_api: Callable[..., Api]) -> None:
    """GET /healthz answers 200 {"status": "ok"} without an API key."""
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        reply = await http.get("/healthz")
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"


async def test_readyz_reports_its_checks(make_api: Callable[..., Api]) -> None:
    """GET /readyz answers 200 with Redis, the scripts and the live tail checked, without
    an API key."""
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        reply = await http.get("/readyz")
    assert reply.status_code == 200
    assert reply.json() == {
        "status": "ok",
        "checks": {"redis": "ok", "scripts": "loaded", "live_tail": "ok"},
    }


def refs(node: Any) -> list[str]:
    """Every ``$ref`` value anywhere in a JSON document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


async def test_openapi_document_is_complete_and_self_consistent(
    make_api: Callable[..., Api],
) -> None:
    """/openapi.json is OpenAPI 3.1 with every route and wire type, and every $ref resolves."""
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        reply = await http.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    document = json.loads(reply.content)
    assert document["openapi"].startswith("3.1")
    routes = {route.path for route in create_app(api.settings).routes}  # type: ignore[attr-defined]
    assert routes - {"/openapi.json"} == set(document["paths"])
    schemas = document["components"]["schemas"]
    assert {"CreateTask", "Task", "TaskList", "ErrorBody", "ConsistencyProof"} <= set(schemas)
    found = refs(document)
    assert found
    for ref in found:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict), ref
            assert part in node, f"{ref} does not resolve"
            node = node[part]


# -- property: no input is a 5xx -----------------------------------------------------------

_apis: dict[int, tuple[Api, str]] = {}


async def _shared_api(make_api: Callable[..., Api]) -> tuple[Api, str]:
    """One server (and one task with a few events) per test function, across examples."""
    key = id(make_api)
    if key not in _apis:
        _apis.clear()
        api = make_api()
        async with client(api) as http:
            task_id = await task_with_steps(api, http, 3)
        _apis[key] = (api, task_id)
    return _apis[key]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
FIELDS = ["adapter", "args", "lane", "name", "metadata", "timeout_s", "max_attempts", "x"]
BODIES = st.one_of(
    st.binary(max_size=120),
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.just("mock"), max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.just("mock"), max_size=4).map(
        lambda d: json.dumps(d, ensure_ascii=False).encode()
    ),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES, since_seq=st.text(max_size=24))
async def test_no_input_is_a_server_error(
    make_api: Callable[..., Api], body: bytes, since_seq: str
) -> None:
    """Any bytes as a task body and any text as since_seq get a 2xx, or a 4xx with the
    contract-5 JSON body, never a 5xx."""
    api, task_id = await _shared_api(make_api)
    async with client(api) as http:
        created = await http.post(
            "/v1/tasks", content=body, headers={"content-type": "application/json"}
        )
        events = await http.get(
            f"/v1/tasks/{task_id}/events",
            params={"since_seq": since_seq},
            headers={"accept": NDJSON},
        )
    for reply in (created, events):
        assert reply.status_code < 500, reply.text
        if reply.status_code >= 400:
            error_of(reply, reply.status_code)
    assert created.status_code in (201, 400, 422), created.text
    assert events.status_code in (200, 400, 409), events.text


async def test_cors_preflight_and_exposed_headers(make_api: Callable[..., Api]) -> None:
    """With AXON_CORS_ORIGINS set, a browser preflight from an allowed origin succeeds
    without a key, real responses carry the CORS headers, and other origins get none."""
    api = make_api(cors_origins=("https://app.example",))
    preflight = {
        "origin": "https://app.example",
        "access-control-request-method": "GET",
        "access-control-request-headers": "authorization, last-event-id",
    }
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        reply = await http.options("/v1/tasks", headers=preflight)
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in reply.headers["access-control-allow-headers"].lower()
        listed = await http.get(
            "/v1/tasks", headers={**api.headers(), "origin": "https://app.example"}
        )
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == "https://app.example"
        other = await http.get(
            "/v1/tasks", headers={**api.headers(), "origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_by_default(make_api: Callable[..., Api]) -> None:
    """Without configured origins the API sends no CORS headers (same-origin only)."""
    api = make_api()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        reply = await http.get(
            "/v1/tasks", headers={**api.headers(), "origin": "https://app.example"}
        )
    assert "access-control-allow-origin" not in reply.headers
