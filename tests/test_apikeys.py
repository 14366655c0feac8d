"""API keys: issuing, hashing at rest, authenticating, caching, revoking, and ``axon keys``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon import apikeys
from axon.apikeys import ApiKeyInfo, KeyStore, Principal, Role
from axon.embedded import ServerProcess
from axon.errors import InvalidArgument, KeyNotFound, Unauthenticated
from axon.store import Store

KEY_SHAPE = re.compile(r"axon_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")

FIXED_MESSAGES = {"malformed API key (expected axon_<id>_<secret>)", "unknown API key"}

pytestmark = pytest.mark.anyio


class Issued:
    """A key store and one live writer key of tenant ``acme``."""

    def __init__(self, keys: KeyStore, key: str, info: ApiKeyInfo) -> None:
        self.keys = keys
        self.key = key
        self.info = info


@pytest.fixture
async def issued(store: Store) -> Issued:
    """A fresh key store with one issued key."""
    keys = KeyStore(store)
    key, info = await keys.create("acme", name="ci")
    return Issued(keys, key, info)


# -- roles ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.ADMIN, {Role.ADMIN, Role.WRITER, Role.READER}),
        (Role.WRITER, {Role.WRITER, Role.READER}),
        (Role.READER, {Role.READER}),
    ],
)
def test_role_allows_itself_and_the_roles_below(role: Role, allowed: set[Role]) -> None:
    """admin > writer > reader: a role allows exactly itself and the roles below it."""
    assert {required for required in Role if role.allows(required)} == allowed


def test_roles_are_their_names() -> None:
    """Roles are plain strings on the wire and in Redis."""
    assert [str(role) for role in Role] == ["admin", "writer", "reader"]
    assert Role("reader") is Role.READER


# -- create, list, storage ----------------------------------------------------


async def test_create_returns_a_key_of_the_documented_shape(store: Store) -> None:
    """A new key is axon_<12 hex id>_<43 url-safe chars>, and its info names its id."""
    keys = KeyStore(store)
    key, info = await keys.create("acme", Role.READER, name="dashboard")
    assert KEY_SHAPE.fullmatch(key)
    assert key.split("_", 2)[1] == info.id
    assert (info.tenant, info.role, info.name, info.revoked_ms) == (
        "acme",
        Role.READER,
        "dashboard",
        None,
    )
    assert info.created_ms > 0


async def test_only_the_sha256_of_the_key_is_stored(store: Store) -> None:
    """Redis holds the key's SHA-256 and metadata, never the key or its secret."""
    keys = KeyStore(store)
    key, info = await keys.create("acme")
    stored = await store.redis.hgetall(store.keys.api_key(info.id))
    assert stored[b"sha256"] == hashlib.sha256(key.encode()).hexdigest().encode()
    assert stored[b"sha256"] != key.encode()
    secret = key[len("axon_") + 13 :]
    for value in stored.values():
        assert key.encode() not in value
        assert secret.encode() not in value
    assert set(stored) == {b"sha256", b"tenant", b"role", b"created_ms"}
    assert await store.redis.smembers(store.keys.api_keys()) == {info.id.encode()}


async def test_list_shows_info_but_never_secrets(store: Store) -> None:
    """list returns every key oldest first, filters by tenant, and carries no secret."""
    keys = KeyStore(store)
    first_key, first = await keys.create("acme", name="one")
    second_key, second = await keys.create("acme", Role.ADMIN)
    third_key, third = await keys.create("globex", Role.READER)
    listed = await keys.list()
    by_age = sorted([first, second, third], key=lambda info: (info.created_ms, info.id))
    assert listed == by_age
    assert await keys.list(tenant="acme") == [info for info in by_age if info.tenant == "acme"]
    assert await keys.list(tenant="initech") == []
    dumped = repr(listed)
    for key in (first_key, second_key, third_key):
        assert key not in dumped
        assert hashlib.sha256(key.encode()).hexdigest() not in dumped


async def test_list_of_an_empty_store_is_empty(store: Store) -> None:
    """No keys, no entries."""
    assert await KeyStore(store).list() == []


@pytest.mark.parametrize("tenant", ["", "a b", "x" * 65, "acme/eu", "ténant", "{acme}"])
async def test_create_rejects_a_malformed_tenant(store: Store, tenant: str) -> None:
    """Tenants follow the task tenant pattern; anything else is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        await KeyStore(store).create(tenant)
    assert await store.redis.smembers(store.keys.api_keys()) == set()


async def test_create_rejects_a_bad_role_or_name(store: Store) -> None:
    """An unknown role or an empty, overlong or control-character name is InvalidArgument."""
    keys = KeyStore(store)
    with pytest.raises(InvalidArgument):
        await keys.create("acme", "owner")  # type: ignore[arg-type]
    for name in ("", "x" * 201, "line\nbreak"):
        with pytest.raises(InvalidArgument):
            await keys.create("acme", name=name)
    assert await keys.list() == []


async def test_create_accepts_a_role_by_its_name(store: Store) -> None:
    """A role given as its string works like the enum member."""
    _, info = await KeyStore(store).create("acme", "admin")  # type: ignore[arg-type]
    assert info.role is Role.ADMIN


# -- authenticate ---------------------------------------------------------------


async def test_authenticate_returns_the_principal(issued: Issued) -> None:
    """The issued key authenticates as its tenant, role and id."""
    principal = await issued.keys.authenticate(issued.key)
    assert principal == Principal(tenant="acme", role=Role.WRITER, key_id=issued.info.id)


async def test_authenticate_from_another_key_store(issued: Issued) -> None:
    """Keys live in Redis: a key store in another process (here: another instance) accepts it."""
    other = KeyStore(issued.keys.store)
    assert (await other.authenticate(issued.key)).key_id == issued.info.id


async def test_wrong_secret_for_a_real_id_is_rejected(issued: Issued) -> None:
    """Another secret under a real id fails, both before and after the key is cached."""
    forged = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")
    with pytest.raises(Unauthenticated) as uncached:
        await issued.keys.authenticate(forged)
    await issued.keys.authenticate(issued.key)
    with pytest.raises(Unauthenticated) as cached:
        await issued.keys.authenticate(forged)
    for error in (uncached.value, cached.value):
        assert forged not in str(error)
        assert forged not in repr(error.details)


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "axon_",
        "Bearer axon_0123456789ab_" + "a" * 43,
        "0123456789ab_" + "a" * 43,
        "axon-0123456789ab-" + "a" * 43,
        "AXON_0123456789ab_" + "a" * 43,
        "axon_0123456789AB_" + "a" * 43,
        "axon_0123456789a_" + "a" * 44,
        "axon_0123456789abc_" + "a" * 42,
        "axon_0123456789ab_" + "a" * 42,
        "axon_0123456789ab_" + "a" * 44,
        "axon_0123456789zz_" + "a" * 43,
        "axon_0123456789ab_" + "a" * 42 + "=",
        "axon_0123456789ab_" + "a" * 42 + "é",
        "axon_0123456789ab_" + "a" * 42 + "\n",
        "axon_" + "".join(map(chr, range(0x660, 0x66A))) + "ab_" + "a" * 43,  # Arabic-Indic digits
        "axon_0123456789ab_" + "a" * 43 + " ",
    ],
)
async def test_malformed_keys_are_rejected_without_redis(store: Store, presented: str) -> None:
    """A key of the wrong shape is Unauthenticated and never costs a Redis lookup."""
    keys = KeyStore(store)
    with pytest.raises(Unauthenticated) as raised:
        await keys.authenticate(presented)
    assert keys.statistics().misses == 0
    assert "malformed" in raised.value.message


async def test_non_string_keys_are_rejected(store: Store) -> None:
    """None or bytes are Unauthenticated, not a TypeError."""
    keys = KeyStore(store)
    for presented in (None, b"axon_0123456789ab_" + b"a" * 43):
        with pytest.raises(Unauthenticated):
            await keys.authenticate(presented)  # type: ignore[arg-type]


async def test_a_well_formed_unknown_key_is_rejected(store: Store) -> None:
    """A key of the right shape whose id was never issued is Unauthenticated."""
    with pytest.raises(Unauthenticated, match="unknown"):
        await KeyStore(store).authenticate("axon_0123456789ab_" + "a" * 43)


KEY_LENGTH = len("axon_") + 12 + 1 + 43
POSITIONS = st.integers(0, KEY_LENGTH - 1)
SECRETS = st.from_regex(r"[A-Za-z0-9_\-]{43}", fullmatch=True)

EDITS = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=100)),
    st.tuples(
        st.just("text"), st.from_regex(r"axon_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}", fullmatch=True)
    ),
    st.tuples(st.just("secret"), SECRETS),
    st.tuples(st.just("replace"), POSITIONS, st.characters()),
    st.tuples(st.just("insert"), POSITIONS, st.text(min_size=1, max_size=3)),
    st.tuples(st.just("delete"), POSITIONS),
    st.tuples(st.just("append"), st.text(min_size=1, max_size=5)),
    st.tuples(st.just("upper")),
    st.tuples(st.just("swapcase")),
)
"""Ways to get texts that are almost an issued key, or anything at all.

They are applied to the key in the test (it is only known there): drawing with
``st.data()`` inside an anyio test breaks the runner when Hypothesis stops a draw.
"""


def near_miss(key: str, edit: tuple[Any, ...]) -> str:
    """``key`` changed by ``edit`` (one of ``EDITS``)."""
    match edit:
        case ("text", str() as text):
            return text
        case ("secret", str() as secret):
            return key[: len("axon_") + 13] + secret
        case ("replace", int() as at, str() as char):
            return key[:at] + char + key[at + 1 :]
        case ("insert", int() as at, str() as text):
            return key[:at] + text + key[at:]
        case ("delete", int() as at):
            return key[:at] + key[at + 1 :]
        case ("append", str() as text):
            return key + text
        case ("upper",):
            return key.upper()
        case _:
            return key.swapcase()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edit=EDITS)
async def test_only_issued_keys_authenticate(issued: Issued, edit: tuple[Any, ...]) -> None:
    """Any text other than an issued key fails, and the error never echoes it."""
    candidate = near_miss(issued.key, edit)
    if candidate == issued.key:
        assert (await issued.keys.authenticate(candidate)).key_id == issued.info.id
        return
    with pytest.raises(Unauthenticated) as raised:
        await issued.keys.authenticate(candidate)
    # Fixed messages and no details: nothing of the candidate is echoed.
    assert raised.value.message in FIXED_MESSAGES
    assert raised.value.details == {}


# -- cache and revocation ------------------------------------------------------


async def test_successful_lookups_are_cached(issued: Issued) -> None:
    """A burst of authentications costs one Redis lookup."""
    for _ in range(5):
        await issued.keys.authenticate(issued.key)
    stats = issued.keys.statistics()
    assert (stats.misses, stats.hits, stats.cached) == (1, 4, 1)


async def test_a_zero_ttl_disables_the_cache(store: Store) -> None:
    """With cache_ttl_s=0 every authentication reads Redis."""
    keys = KeyStore(store, cache_ttl_s=0)
    key, _ = await keys.create("acme")
    for _ in range(3):
        await keys.authenticate(key)
    stats = keys.statistics()
    assert (stats.misses, stats.hits, stats.cached) == (3, 0, 0)


async def test_revoke_takes_effect_at_once_in_the_revoking_key_store(issued: Issued) -> None:
    """A cached key stops working in the same key store as soon as revoke returns."""
    await issued.keys.authenticate(issued.key)
    assert issued.keys.statistics().cached == 1
    revoked = await issued.keys.revoke(issued.info.id)
    assert revoked.revoked_ms is not None
    assert revoked.revoked_ms >= revoked.created_ms
    with pytest.raises(Unauthenticated, match="revoked") as raised:
        await issued.keys.authenticate(issued.key)
    assert issued.key not in str(raised.value)
    assert (await issued.keys.list()) == [revoked]


async def test_revoke_reaches_other_key_stores_within_the_ttl(
    issued: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's cache may accept a revoked key until its TTL runs out, no longer."""
    clock = [1000.0]
    monkeypatch.setattr(apikeys, "_monotonic", lambda: clock[0])
    other = KeyStore(issued.keys.store, cache_ttl_s=5.0)
    await other.authenticate(issued.key)
    await issued.keys.revoke(issued.info.id)
    clock[0] += 4.9
    assert (await other.authenticate(issued.key)).key_id == issued.info.id
    clock[0] += 0.2
    with pytest.raises(Unauthenticated, match="revoked"):
        await other.authenticate(issued.key)


async def test_revoke_is_idempotent(issued: Issued) -> None:
    """Revoking twice keeps the first revocation time."""
    first = await issued.keys.revoke(issued.info.id)
    second = await issued.keys.revoke(issued.info.id)
    assert first == second
    assert second.revoked_ms is not None


async def test_revoke_leaves_other_keys_alone(issued: Issued) -> None:
    """Revoking one key does not affect another key of the same tenant."""
    other_key, _ = await issued.keys.create("acme")
    await issued.keys.revoke(issued.info.id)
    assert (await issued.keys.authenticate(other_key)).tenant == "acme"


@pytest.mark.parametrize("key_id", ["0123456789ab", "nope", ""])
async def test_revoke_of_an_unknown_id_is_key_not_found(store: Store, key_id: str) -> None:
    """An id that names no key, well-formed or not, is KeyNotFound."""
    with pytest.raises(KeyNotFound):
        await KeyStore(store).revoke(key_id)


async def test_revoke_never_echoes_a_whole_key(issued: Issued) -> None:
    """Passing the key instead of its id fails without repeating the secret."""
    with pytest.raises(KeyNotFound) as raised:
        await issued.keys.revoke(issued.key)
    assert issued.key not in str(raised.value)
    assert issued.key not in repr(raised.value.details)


async def test_the_cache_is_bounded(store: Store) -> None:
    """Past cache_size the oldest entry is dropped, and the dropped key still authenticates."""
    keys = KeyStore(store, cache_size=2)
    issued = [(await keys.create("acme"))[0] for _ in range(3)]
    for key in issued:
        await keys.authenticate(key)
    assert keys.statistics().cached == 2
    await keys.authenticate(issued[0])  # evicted: read again
    assert keys.statistics().misses == 4


def test_cache_settings_are_checked() -> None:
    """A negative TTL or an empty cache is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        KeyStore(None, cache_ttl_s=-1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        KeyStore(None, cache_size=0)  # type: ignore[arg-type]


# -- axon keys ---------------------------------------------------------------

AXON = [sys.executable, "-m", "axon"]


def axon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m axon`` with ``args`` and capture its output."""
    full_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [*AXON, *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


@pytest.fixture
def cli_env(valkey: ServerProcess, request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment pointing ``axon`` at the test Valkey under a prefix of this test."""
    prefix = f"keys{os.getpid()}-{request.node.name}".replace("[", "-").replace("]", "")
    return {"REDIS_URL": valkey.url, "AXON_KEY_PREFIX": prefix}


def test_cli_create_list_revoke(cli_env: dict[str, str]) -> None:
    """create prints only the key; list prints JSON lines without secrets; revoke marks it."""
    created = axon(
        "keys", "create", "--tenant", "acme", "--role", "reader", "--name", "ci", env=cli_env
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.endswith("\n")
    key = created.stdout.removesuffix("\n")
    assert KEY_SHAPE.fullmatch(key), created.stdout
    assert key not in created.stderr
    key_id = key.split("_", 2)[1]
    axon("keys", "create", "--tenant", "globex", env=cli_env)

    listed = axon("keys", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [row["tenant"] for row in rows] == ["acme", "globex"]
    assert rows[0] == {
        "id": key_id,
        "tenant": "acme",
        "role": "reader",
        "name": "ci",
        "created_ms": rows[0]["created_ms"],
        "revoked_ms": None,
    }
    assert rows[1]["role"] == "writer"
    assert key not in listed.stdout
    assert hashlib.sha256(key.encode()).hexdigest() not in listed.stdout
    only_acme = axon("keys", "list", "--tenant", "acme", env=cli_env)
    assert [json.loads(line)["id"] for line in only_acme.stdout.splitlines()] == [key_id]

    revoked = axon("keys", "revoke", key_id, env=cli_env)
    assert revoked.returncode == 0, revoked.stderr
    row = json.loads(revoked.stdout)
    assert (row["id"], isinstance(row["revoked_ms"], int)) == (key_id, True)
    again = axon("keys", "revoke", key_id, env=cli_env)
    assert (again.returncode, json.loads(again.stdout)) == (0, row)


def test_cli_revoke_unknown_id_exits_1(cli_env: dict[str, str]) -> None:
    """Revoking an id that names no key is an error on stderr and exit code 1."""
    result = axon("keys", "revoke", "0123456789ab", env=cli_env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("axon: error: key_not_found")
    assert "Traceback" not in result.stderr


def test_cli_rejects_bad_input(cli_env: dict[str, str]) -> None:
    """A bad tenant is exit 1, a bad role or a missing tenant a usage error (exit 2)."""
    bad_tenant = axon("keys", "create", "--tenant", "a b", env=cli_env)
    assert (bad_tenant.returncode, bad_tenant.stdout) == (1, "")
    assert "invalid_argument" in bad_tenant.stderr
    assert (
        axon("keys", "create", "--tenant", "acme", "--role", "owner", env=cli_env).returncode == 2
    )
    assert axon("keys", "create", env=cli_env).returncode == 2
    assert axon("keys", env=cli_env).returncode == 2


def test_cli_needs_redis_url() -> None:
    """Without REDIS_URL, `axon keys` explains where keys live and exits 2."""
    result = axon("keys", "list")
    assert (result.returncode, result.stdout) == (2, "")
    assert "REDIS_URL" in result.stderr
    assert "axon dev" in result.stderr
