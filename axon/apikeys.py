"""API keys: who a request comes from (a tenant) and what it may do (a role).

A key is ``axon_<id>_<secret>``: ``id`` is 12 lowercase hex characters and
names the key in listings and revocations; ``secret`` is 43 URL-safe characters
(256 random bits). The key is shown once, when created. Redis keeps only the
SHA-256 of the whole key, in the hash ``KeySpace.api_key(id)``, next to the
tenant, role, label and timestamps; ``KeySpace.api_keys()`` is the set of ids.

Authentication parses the key strictly (a malformed one never reaches Redis),
reads the hash by id and compares digests in constant time. Successful lookups
are cached in the process for ``cache_ttl_s`` seconds, so a burst of requests
does not pay a round trip each; a revocation therefore takes effect at once in
the ``KeyStore`` that revoked the key and within ``cache_ttl_s`` elsewhere.

The hash and the id set live in different cluster slots, so they are written
by separate single-key commands, never in one transaction: the hash first
(claimed with ``HSETNX``, so two keys can never share an id), then the set.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import hashlib
import hmac
import re
import secrets
import time

import msgspec
from redis.typing import EncodableT

from axon.errors import InvalidArgument, KeyNotFound, Unauthenticated
from axon.store import TENANT_PATTERN, Store, now_ms, text_of

KEY_PREFIX = "axon_"
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
KEY_PATTERN = re.compile(r"axon_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
"""A whole key: the id (group 1) and the secret (group 2, ``secrets.token_urlsafe(32)``)."""
KEY_LENGTH = len(KEY_PREFIX) + 12 + 1 + 43

DEFAULT_CACHE_TTL_S = 5.0
DEFAULT_CACHE_SIZE = 10_000
MAX_NAME_LENGTH = 200

_monotonic = time.monotonic  # the cache's clock; tests replace it to expire entries


class Role(enum.StrEnum):
    """What a key may do; each role can do everything the roles below it can."""

    ADMIN = "admin"
    """Everything a writer can, plus administration (dead letters, key management)."""
    WRITER = "writer"
    """Start, cancel and read tasks."""
    READER = "reader"
    """Read tasks and their events; never start or cancel."""

    def allows(self, required: Role) -> bool:
        """Whether this role may do what ``required`` may (admin > writer > reader)."""
        return _RANK[self] >= _RANK[required]


_RANK = {Role.READER: 0, Role.WRITER: 1, Role.ADMIN: 2}


class ApiKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as listed: everything but the secret and its digest.

    Attributes:
        id: the key's id, the part after ``axon_`` (12 hex characters).
        tenant: the tenant whose tasks the key acts on.
        role: what the key may do.
        name: a label for people.
        created_ms / revoked_ms: unix milliseconds; ``revoked_ms`` is ``None`` while live.
    """

    id: str
    tenant: str
    role: Role
    name: str | None = None
    created_ms: int
    revoked_ms: int | None = None


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who an authenticated request acts as."""

    tenant: str
    role: Role
    key_id: str


class KeyStoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Cache counters of one ``KeyStore``.

    Attributes:
        hits: authentications answered from the cache.
        misses: authentications that read the key from Redis (including failed ones).
        cached: keys in the cache now (some may have expired and not yet been dropped).
    """

    hits: int
    misses: int
    cached: int


class _Cached:
    __slots__ = ("digest", "expires", "principal")

    def __init__(self, digest: bytes, principal: Principal, expires: float) -> None:
        self.digest = digest
        self.principal = principal
        self.expires = expires


class KeyStore:
    """Creates, lists, revokes and checks API keys kept in the store's Redis.

    Args:
        store: the store whose Redis (and key prefix) holds the keys.
        cache_ttl_s: how long a successful authentication is remembered in this
            process; ``0`` disables the cache. Bounds how late other processes
            notice a revocation.
        cache_size: most keys remembered; the oldest entry goes first.
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if not cache_ttl_s >= 0:  # also rejects NaN
            raise InvalidArgument("cache_ttl_s must be >= 0", cache_ttl_s=cache_ttl_s)
        if cache_size < 1:
            raise InvalidArgument("cache_size must be >= 1", cache_size=cache_size)
        self.store = store
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self._cache: dict[str, _Cached] = {}  # key id -> entry, oldest first
        self._revocations = 0  # bumped by every revoke, so a racing lookup does not re-cache
        self._hits = 0
        self._misses = 0

    def statistics(self) -> KeyStoreStatistics:
        """Cache hits and misses since creation, and the cache's size."""
        return KeyStoreStatistics(hits=self._hits, misses=self._misses, cached=len(self._cache))

    async def create(
        self, tenant: str, role: Role = Role.WRITER, *, name: str | None = None
    ) -> tuple[str, ApiKeyInfo]:
        """Create a key for ``tenant``; returns the key (shown this once) and its info.

        Raises:
            InvalidArgument: the tenant, role or name is malformed.
            StoreUnavailable: Redis failed; no key was issued.
        """
        if not isinstance(tenant, str) or TENANT_PATTERN.fullmatch(tenant) is None:
            raise InvalidArgument(
                "tenant must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'", field="tenant"
            )
        try:
            role = Role(role)
        except ValueError:
            raise InvalidArgument(
                f"role must be one of {', '.join(Role)}", field="role", role=str(role)[:80]
            ) from None
        if name is not None and not (
            isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and name.isprintable()
        ):
            raise InvalidArgument(
                f"name must be 1-{MAX_NAME_LENGTH} printable characters", field="name"
            )
        redis = self.store.redis
        created = now_ms()
        while True:
            key_id = secrets.token_hex(6)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            hash_key = self.store.keys.api_key(key_id)
            # Claims the id: 0 means another key has it (1 in 2**48 per existing key).
            if await self.store.call(redis.hsetnx(hash_key, "sha256", _digest(key))):
                break
        fields: dict[EncodableT, EncodableT] = {
            "tenant": tenant,
            "role": role.value,
            "created_ms": created,
        }
        if name is not None:
            fields["name"] = name
        try:
            await self.store.call(redis.hset(hash_key, mapping=fields))
            await self.store.call(redis.sadd(self.store.keys.api_keys(), key_id))
        except Exception:
            # The key was never shown; drop its hash if Redis lets us (an orphan
            # left behind would be unlisted and unusable anyway: nobody has the key).
            with contextlib.suppress(Exception):  # the original failure is the one to report
                await self.store.call(redis.delete(hash_key))
            raise
        info = ApiKeyInfo(id=key_id, tenant=tenant, role=role, name=name, created_ms=created)
        return key, info

    async def list(self, *, tenant: str | None = None) -> builtins.list[ApiKeyInfo]:
        """Every key (of ``tenant``, if given), revoked ones included, oldest first.

        Raises:
            StoreUnavailable: Redis failed.
        """
        redis = self.store.redis
        ids = sorted(
            text_of(i) for i in await self.store.call(redis.smembers(self.store.keys.api_keys()))
        )
        if not ids:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self.store.keys.api_key(key_id))
            replies = await self.store.call(pipe.execute())
        infos = []
        for key_id, fields in zip(ids, replies, strict=True):
            info = _info(key_id, fields)
            if info is not None and (tenant is None or info.tenant == tenant):
                infos.append(info)
        infos.sort(key=lambda info: (info.created_ms, info.id))
        return infos

    async def revoke(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key for good; returns its info. Revoking it again changes nothing.

        The key stops working at once in this ``KeyStore`` and within
        ``cache_ttl_s`` in every other process.

        Raises:
            KeyNotFound: no key has this id.
            StoreUnavailable: Redis failed.
        """
        if not isinstance(key_id, str) or KEY_ID_PATTERN.fullmatch(key_id) is None:
            # Never echo it: a confused caller may have passed the whole key.
            raise KeyNotFound("no API key has that id (ids are 12 lowercase hex characters)")
        redis = self.store.redis
        hash_key = self.store.keys.api_key(key_id)
        info = _info(key_id, await self.store.call(redis.hgetall(hash_key)))
        if info is None:
            raise KeyNotFound(f"no API key has id {key_id}", key_id=key_id)
        if info.revoked_ms is None:
            revoked = now_ms()
            # HSETNX: of racing revokes, the first time stands.
            if await self.store.call(redis.hsetnx(hash_key, "revoked_ms", revoked)):
                info = msgspec.structs.replace(info, revoked_ms=revoked)
            else:
                fields = await self.store.call(redis.hgetall(hash_key))
                info = _info(key_id, fields) or info
        self._revocations += 1
        self._cache.pop(key_id, None)
        return info

    async def authenticate(self, presented: str) -> Principal:
        """The principal a presented key stands for.

        The error never contains the presented key.

        Raises:
            Unauthenticated: the key is malformed, unknown, wrong or revoked.
            StoreUnavailable: Redis failed.
        """
        if not isinstance(presented, str) or len(presented) != KEY_LENGTH:
            raise Unauthenticated("malformed API key (expected axon_<id>_<secret>)")
        match = KEY_PATTERN.fullmatch(presented)
        if match is None:
            raise Unauthenticated("malformed API key (expected axon_<id>_<secret>)")
        key_id = match.group(1)
        digest = _digest(presented).encode()
        now = _monotonic()
        cached = self._cache.get(key_id)
        if cached is not None:
            if cached.expires > now:
                # The digest of an id never changes, so a mismatch is final.
                if not hmac.compare_digest(cached.digest, digest):
                    raise Unauthenticated("unknown API key")
                self._hits += 1
                return cached.principal
            del self._cache[key_id]
        self._misses += 1
        revocations = self._revocations
        fields = await self.store.call(self.store.redis.hgetall(self.store.keys.api_key(key_id)))
        stored = fields.get(b"sha256", b"")
        # Compare even when the id is unknown, so both cases take the same time.
        matches = hmac.compare_digest(stored or bytes(len(digest)), digest)
        info = _info(key_id, fields)
        if not matches or info is None:
            raise Unauthenticated("unknown API key")
        if info.revoked_ms is not None:
            raise Unauthenticated("revoked API key", key_id=key_id)
        principal = Principal(tenant=info.tenant, role=info.role, key_id=key_id)
        if self.cache_ttl_s > 0 and revocations == self._revocations:
            self._cache.pop(key_id, None)  # a racing lookup may have cached it meanwhile
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[key_id] = _Cached(digest, principal, now + self.cache_ttl_s)
        return principal


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _info(key_id: str, fields: dict[bytes, bytes]) -> ApiKeyInfo | None:
    """The info in a key's hash; ``None`` if the hash is missing or incomplete."""
    try:
        name = fields.get(b"name")
        revoked = fields.get(b"revoked_ms")
        return ApiKeyInfo(
            id=key_id,
            tenant=fields[b"tenant"].decode(),
            role=Role(fields[b"role"].decode()),
            name=None if name is None else name.decode(),
            created_ms=int(fields[b"created_ms"]),
            revoked_ms=None if revoked is None else int(revoked),
        )
    except (KeyError, ValueError):  # half-created (see create) or not ours
        return None
