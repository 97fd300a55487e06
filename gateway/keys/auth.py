"""Authenticating managed keys on the hot path, and wiring the key services at start-up."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from gateway.auth import Authenticator, Principal, hash_key
from gateway.config import Settings
from gateway.db import make_engine
from gateway.errors import AuthenticationError, ServiceUnavailableError
from gateway.keys.store import Found, KeyStore

log = logging.getLogger(__name__)

#: The shape of a managed key; anything else is refused before any lookup.
KEY_RE = re.compile(r"^tg-[A-Za-z0-9_-]{40}$")


@dataclass(slots=True)
class _Entry:
    found: Found | None
    fresh_until: float


class KeyAuthenticator:
    """Authenticates managed keys through a bounded TTL cache in front of the key store."""

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl_s: float = 10.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._cache: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Task[Found | None]] = {}

    async def authenticate(self, token: str) -> Principal:
        if not KEY_RE.match(token):
            raise AuthenticationError("Incorrect API key provided.")
        digest = hash_key(token)
        entry = self._cache.get(digest)
        if entry is not None and entry.fresh_until > self._clock():
            self._cache.move_to_end(digest)
            found = entry.found
        else:
            found = await self._load(digest)
        if found is None or (
            found.expires_at is not None and found.expires_at <= dt.datetime.now(dt.UTC)
        ):
            raise AuthenticationError("Incorrect API key provided.")
        return found.principal

    def invalidate(self) -> None:
        """Forget every cached key (after an admin change in this process)."""
        self._cache.clear()

    async def _load(self, digest: str) -> Found | None:
        # One lookup per hash at a time (a burst on a cold key makes one query), in a
        # task of its own so that a caller going away does not cancel it for the others.
        task = self._loading.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(digest))
            self._loading[digest] = task
            task.add_done_callback(lambda t: self._fetched(digest, t))
        return await asyncio.shield(task)

    def _fetched(self, digest: str, task: asyncio.Task[Found | None]) -> None:
        self._loading.pop(digest, None)
        if not task.cancelled():
            task.exception()  # mark retrieved even when every caller has gone

    async def _fetch(self, digest: str) -> Found | None:
        try:
            found = await asyncio.to_thread(self._store.lookup, digest)
        except SQLAlchemyError as exc:
            log.error("key store lookup failed", extra={"error": type(exc).__name__})
            raise ServiceUnavailableError(
                "The key store is unavailable.",
                code="key_store_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        self._cache[digest] = _Entry(found, self._clock() + self._ttl)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return found


class ChainAuthenticator:
    """Tries authenticators in order; the first that knows the key wins."""

    def __init__(self, *authenticators: Authenticator) -> None:
        self._chain = authenticators

    async def authenticate(self, token: str) -> Principal:
        for auth in self._chain:
            try:
                return await auth.authenticate(token)
            except AuthenticationError:
                continue
        raise AuthenticationError("Incorrect API key provided.")


@dataclass(slots=True)
class KeyServices:
    """The key store and its authenticator, built once at start-up."""

    store: KeyStore
    authenticator: KeyAuthenticator

    def close(self) -> None:
        self.store.engine.dispose()


def open_key_services(settings: Settings) -> KeyServices | None:
    """The managed key store when ``auth.key_store`` is on (same database as the ledger
    unless ``auth.database_url`` is set). Connects lazily: nothing happens until a
    well-formed managed key arrives."""
    auth = settings.auth
    if not auth.key_store:
        return None
    # Keys name canonical models: the pipeline checks the name an alias resolves to.
    known = {m.name for m in settings.models} or None
    store = KeyStore(make_engine(auth.database_url or settings.ledger.url), known_models=known)
    return KeyServices(
        store, KeyAuthenticator(store, ttl_s=auth.key_cache_ttl_s, max_entries=auth.key_cache_size)
    )
