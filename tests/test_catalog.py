"""The tenant-scoped task service against real servers: submit, get, cancel, list."""

from __future__ import annotations

import hashlib

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon import catalog as catalog_module
from axon.catalog import ORPHAN_AFTER_MS, Submitted, TaskCatalog, TaskPage
from axon.errors import (
    AxonError,
    IdempotencyConflict,
    InvalidArgument,
    InvalidCursor,
    InvalidTaskId,
    InvalidTaskSpec,
    TaskNotFound,
)
from axon.keys import new_task_id
from axon.queue import Queue
from axon.records import TaskRecord, TaskSpec, TaskState
from axon.store import Store, now_ms

pytestmark = pytest.mark.anyio

SPEC = TaskSpec(tenant="acme", adapter="mock", args={"n": 1})


@pytest.fixture
def catalog(store: Store) -> TaskCatalog:
    """A catalog over a queue on ``store``; tasks stay queued (no worker runs)."""
    return TaskCatalog(Queue(store))


async def submit_many(catalog: TaskCatalog, n: int, spec: TaskSpec = SPEC) -> list[str]:
    """Submit ``n`` tasks like ``spec`` one after the other; their ids."""
    return [(await catalog.submit(spec)).task.id for _ in range(n)]


async def all_pages(catalog: TaskCatalog, tenant: str, **filters: object) -> list[TaskPage]:
    """Every page of a listing, following ``next_cursor`` until it is None."""
    pages: list[TaskPage] = []
    cursor: str | None = None
    while True:
        page = await catalog.list(tenant, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append(page)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def ids_of(pages: list[TaskPage]) -> list[str]:
    """The task ids of all pages, in order."""
    return [record.id for page in pages for record in page.items]


def digest(text: str) -> str:
    """Hex SHA-256, as the catalog stores idempotency keys."""
    return hashlib.sha256(text.encode()).hexdigest()


# -- submitting and listing ---------------------------------------------------------


async def test_submit_creates_a_queued_task_listed_newest_first(catalog: TaskCatalog) -> None:
    """Submitted tasks are queued, readable, and listed newest first with no further page."""
    submitted = [await catalog.submit(SPEC) for _ in range(5)]
    assert all(not s.replayed and s.task.state is TaskState.QUEUED for s in submitted)
    ids = [s.task.id for s in submitted]
    page = await catalog.list("acme")
    assert [r.id for r in page.items] == sorted(ids, reverse=True)
    assert page.next_cursor is None
    assert await catalog.get("acme", ids[0]) == page.items[-1]


async def test_tasks_queued_outside_the_api_are_listed(catalog: TaskCatalog) -> None:
    """A task created by ``Queue.submit`` (the CLI, a dead-letter replay) is in its
    tenant's listing too, not only tasks created over HTTP."""
    record = await catalog.queue.submit(SPEC)
    page = await catalog.list("acme")
    assert [r.id for r in page.items] == [record.id]


async def test_pagination_yields_every_task_once_in_order(catalog: TaskCatalog) -> None:
    """25 tasks in pages of 10 come back as 10, 10, 5, each task exactly once, newest first."""
    ids = await submit_many(catalog, 25)
    pages = await all_pages(catalog, "acme", limit=10)
    assert [len(p.items) for p in pages] == [10, 10, 5]
    assert ids_of(pages) == sorted(ids, reverse=True)
    assert pages[0].next_cursor == pages[0].items[-1].id


async def test_page_that_ends_the_index_has_no_cursor(catalog: TaskCatalog) -> None:
    """A page that takes the last task says so at once, rather than one empty page later."""
    await submit_many(catalog, 20)
    first = await catalog.list("acme", limit=10)
    assert first.next_cursor is not None
    second = await catalog.list("acme", limit=10, cursor=first.next_cursor)
    assert (len(second.items), second.next_cursor) == (10, None)
    assert (await catalog.list("acme", limit=20)).next_cursor is None


async def test_empty_tenant_lists_nothing(catalog: TaskCatalog) -> None:
    """A tenant without tasks gets one empty, final page."""
    assert await catalog.list("nobody") == TaskPage(items=[], next_cursor=None)


async def test_filters_by_state_adapter_and_lane(catalog: TaskCatalog) -> None:
    """State, adapter and lane filters keep only matching tasks, and combine."""
    mock_default = await submit_many(catalog, 4)
    echo_high = await submit_many(catalog, 3, TaskSpec(tenant="acme", adapter="echo", lane="high"))
    mock_low = await submit_many(catalog, 2, TaskSpec(tenant="acme", adapter="mock", lane="low"))
    canceled = [mock_default[0], echo_high[1]]
    for task_id in canceled:
        await catalog.cancel("acme", task_id)

    async def listed(**filters: object) -> list[str]:
        return ids_of(await all_pages(catalog, "acme", **filters))

    everything = mock_default + echo_high + mock_low
    assert await listed(state=TaskState.CANCELED) == sorted(canceled, reverse=True)
    assert await listed(state=TaskState.QUEUED) == sorted(
        set(everything) - set(canceled), reverse=True
    )
    assert await listed(state=TaskState.RUNNING) == []
    assert await listed(adapter="echo") == sorted(echo_high, reverse=True)
    assert await listed(lane="low") == sorted(mock_low, reverse=True)
    assert await listed(adapter="mock", lane="default", state=TaskState.QUEUED) == sorted(
        mock_default[1:], reverse=True
    )


async def test_selective_filter_returns_short_pages_until_cursor_is_null(
    catalog: TaskCatalog,
) -> None:
    """A filter matching only old tasks gives an empty page with a cursor, then finds them all."""
    rare = await submit_many(catalog, 2, TaskSpec(tenant="acme", adapter="rare"))
    await submit_many(catalog, 600)
    first = await catalog.list("acme", adapter="rare", limit=5)
    assert first.items == []
    assert first.next_cursor is not None
    pages = await all_pages(catalog, "acme", adapter="rare", limit=5)
    assert all(len(p.items) <= 5 for p in pages)
    assert ids_of(pages) == sorted(rare, reverse=True)


@pytest.mark.parametrize("cursor", ["", "not a cursor", "{tag}", "x" * 65, "t_\n"])
async def test_malformed_cursor_is_refused(catalog: TaskCatalog, cursor: str) -> None:
    """A cursor that is not a task id raises InvalidCursor."""
    with pytest.raises(InvalidCursor):
        await catalog.list("acme", cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1, 201])
async def test_limit_out_of_range_is_refused(catalog: TaskCatalog, limit: int) -> None:
    """A limit outside 1..200 raises InvalidArgument."""
    with pytest.raises(InvalidArgument):
        await catalog.list("acme", limit=limit)


async def test_missing_records_are_skipped_and_orphans_dropped(
    catalog: TaskCatalog, store: Store
) -> None:
    """Index entries without a record are not listed; old ones are removed, fresh ones kept."""
    ids = await submit_many(catalog, 3)
    orphan = new_task_id(now_ms() - ORPHAN_AFTER_MS - 60_000)
    creating = new_task_id()  # as if a submit had indexed it and not yet created it
    index = store.keys.tenant_tasks("acme")
    await store.redis.zadd(index, {orphan: 0, creating: 0})
    pages = await all_pages(catalog, "acme", limit=2)
    assert ids_of(pages) == sorted(ids, reverse=True)
    assert await store.redis.zscore(index, orphan) is None
    assert await store.redis.zscore(index, creating) == 0


async def test_invalid_spec_leaves_nothing_behind(catalog: TaskCatalog, store: Store) -> None:
    """A submit that fails on the spec leaves no index entry and no idempotency key."""
    with pytest.raises(InvalidTaskSpec):
        await catalog.submit(TaskSpec(tenant="acme", adapter="mock", lane="nope"))
    with pytest.raises(InvalidTaskSpec):
        await catalog.submit(
            TaskSpec(tenant="acme", adapter="mock", max_attempts=0), idempotency_key="k1"
        )
    with pytest.raises(InvalidTaskSpec):
        await catalog.submit(TaskSpec(tenant="a}b", adapter="mock"))
    assert await store.redis.zcard(store.keys.tenant_tasks("acme")) == 0
    assert await store.redis.exists(store.keys.idempotency("acme", digest("k1"))) == 0
    retried = await catalog.submit(SPEC, idempotency_key="k1")
    assert not retried.replayed


# -- tenant isolation -------------------------------------------------------------------


def assert_same_error(
    foreign: AxonError, missing: AxonError, foreign_id: str, missing_id: str
) -> None:
    """Two errors are indistinguishable apart from the task id they name."""
    assert type(foreign) is type(missing)
    assert foreign.code == missing.code
    assert foreign.message == missing.message.replace(missing_id, foreign_id)
    assert str(foreign) == str(missing).replace(missing_id, foreign_id)
    assert foreign.details.keys() == missing.details.keys()
    assert foreign.details == {"task_id": foreign_id}


async def test_other_tenants_task_looks_missing(catalog: TaskCatalog) -> None:
    """Another tenant's get, cancel and list see nothing, with the missing-task error."""
    task = (await catalog.submit(SPEC)).task
    missing_id = new_task_id()
    for operation in (catalog.get, catalog.cancel):
        with pytest.raises(TaskNotFound) as missing:
            await operation("acme", missing_id)
        with pytest.raises(TaskNotFound) as foreign:
            await operation("globex", task.id)
        assert_same_error(foreign.value, missing.value, task.id, missing_id)
    assert (await catalog.list("globex")).items == []
    assert (await catalog.get("acme", task.id)).state is TaskState.QUEUED


async def test_malformed_task_id_is_refused(catalog: TaskCatalog) -> None:
    """A malformed id raises InvalidTaskId before any tenant check."""
    with pytest.raises(InvalidTaskId):
        await catalog.get("acme", "{bad}")
    with pytest.raises(InvalidTaskId):
        await catalog.cancel("acme", "has space")


# -- idempotency ------------------------------------------------------------------------


async def test_idempotent_submit_replays_the_first_task(catalog: TaskCatalog, store: Store) -> None:
    """The same key and body return the same task, replayed, and create nothing new."""
    first = await catalog.submit(SPEC, idempotency_key="order-42", body_digest="d1")
    again = await catalog.submit(SPEC, idempotency_key="order-42", body_digest="d1")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.task == first.task
    assert [r.id for r in (await catalog.list("acme")).items] == [first.task.id]
    key = store.keys.idempotency("acme", digest("order-42"))
    assert await store.redis.get(key) == f"d1 {first.task.id}".encode()
    assert 0 < await store.redis.ttl(key) <= 86_400


async def test_replay_returns_the_current_record(catalog: TaskCatalog) -> None:
    """A replay shows the task as it is now, not as it was created."""
    first = await catalog.submit(SPEC, idempotency_key="k")
    await catalog.cancel("acme", first.task.id)
    again = await catalog.submit(SPEC, idempotency_key="k")
    assert again.task.id == first.task.id
    assert again.task.state is TaskState.CANCELED


async def test_same_key_with_another_body_conflicts(catalog: TaskCatalog) -> None:
    """Reusing a key with a different body digest raises IdempotencyConflict, without the key."""
    await catalog.submit(SPEC, idempotency_key="secret-key", body_digest="d1")
    with pytest.raises(IdempotencyConflict, match="different request body") as conflict:
        await catalog.submit(SPEC, idempotency_key="secret-key", body_digest="d2")
    assert conflict.value.details == {}
    assert "secret-key" not in str(conflict.value)


async def test_same_key_in_two_tenants_makes_two_tasks(catalog: TaskCatalog) -> None:
    """Idempotency keys are per tenant: the same key in another tenant creates its own task."""
    a = await catalog.submit(SPEC, idempotency_key="k", body_digest="d")
    b = await catalog.submit(
        TaskSpec(tenant="globex", adapter="mock"), idempotency_key="k", body_digest="d"
    )
    assert not b.replayed
    assert a.task.id != b.task.id
    assert b.task.tenant == "globex"


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "line\nbreak", "tab\t"])
async def test_malformed_idempotency_key_is_refused(catalog: TaskCatalog, key: str) -> None:
    """Keys that are not 1-255 printable ASCII characters raise InvalidArgument."""
    with pytest.raises(InvalidArgument):
        await catalog.submit(SPEC, idempotency_key=key)
    assert (await catalog.list("acme")).items == []


async def test_concurrent_submits_with_one_key_make_one_task(catalog: TaskCatalog) -> None:
    """Ten simultaneous requests with the same key create exactly one task between them."""
    results: list[Submitted] = []

    async def one() -> None:
        results.append(await catalog.submit(SPEC, idempotency_key="burst", body_digest="d"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert len(results) == 10
    assert len({r.task.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert len((await catalog.list("acme")).items) == 1


async def test_key_of_a_request_still_creating_its_task_conflicts(
    catalog: TaskCatalog, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeat whose first request has not created its task yet gives up with a conflict."""
    monkeypatch.setattr(catalog_module, "REPLAY_WAIT_S", 0.1)
    key = store.keys.idempotency("acme", digest("k"))
    await store.redis.set(key, f"d {new_task_id()}")
    with pytest.raises(IdempotencyConflict, match="still in progress"):
        await catalog.submit(SPEC, idempotency_key="k", body_digest="d")
    assert (await catalog.list("acme")).items == []


async def test_orphaned_key_is_adopted(catalog: TaskCatalog, store: Store) -> None:
    """A key whose request died before creating its task gets that task created by a repeat."""
    orphan = new_task_id(now_ms() - ORPHAN_AFTER_MS - 60_000)
    await store.redis.set(store.keys.idempotency("acme", digest("k")), f"d {orphan}")
    adopted = await catalog.submit(SPEC, idempotency_key="k", body_digest="d")
    assert (adopted.task.id, adopted.replayed) == (orphan, True)
    again = await catalog.submit(SPEC, idempotency_key="k", body_digest="d")
    assert again.task.id == orphan
    assert [r.id for r in (await catalog.list("acme")).items] == [orphan]


# -- cancelling -------------------------------------------------------------------------


async def test_cancel_is_idempotent(catalog: TaskCatalog) -> None:
    """Cancelling a queued task cancels it; cancelling it again returns the same record."""
    task = (await catalog.submit(SPEC)).task
    once = await catalog.cancel("acme", task.id)
    twice = await catalog.cancel("acme", task.id)
    assert once.state is TaskState.CANCELED
    assert twice == once
    assert (await catalog.get("acme", task.id)).state is TaskState.CANCELED


# -- properties -------------------------------------------------------------------------


@pytest.fixture
async def mixed(catalog: TaskCatalog) -> list[TaskRecord]:
    """37 tasks of tenant acme over two adapters and two lanes, a few of them cancelled."""
    records = []
    for i in range(37):
        spec = TaskSpec(
            tenant="acme",
            adapter="echo" if i % 2 else "mock",
            lane="low" if i % 3 == 0 else "default",
        )
        records.append((await catalog.submit(spec)).task)
    for record in records[::5]:
        await catalog.cancel("acme", record.id)
    return [await catalog.get("acme", r.id) for r in records]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 20),
    adapter=st.sampled_from([None, "mock", "echo"]),
    state=st.sampled_from([None, TaskState.QUEUED, TaskState.CANCELED]),
)
async def test_any_page_size_lists_each_match_once(
    catalog: TaskCatalog,
    mixed: list[TaskRecord],
    limit: int,
    adapter: str | None,
    state: TaskState | None,
) -> None:
    """For any limit and filter, following cursors yields each matching task once, newest first."""
    pages = await all_pages(catalog, "acme", limit=limit, adapter=adapter, state=state)
    expected = sorted(
        (
            r.id
            for r in mixed
            if (adapter is None or r.adapter == adapter) and (state is None or r.state is state)
        ),
        reverse=True,
    )
    assert ids_of(pages) == expected
    assert all(len(p.items) <= limit for p in pages)
