"""Fixtures for the quota tests: a real redis-server and stores over both backends."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Limits, Principal
from gateway.config import QuotaSettings
from gateway.quotas.base import QuotaStore
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.local import LocalQuotaStore
from gateway.quotas.redis import RedisQuotaStore
from tests.quotas.redis_server import RedisServer

#: 2026-03-10 12:00:05 UTC: early in a minute, a day and a month, far from every edge.
T0 = dt.datetime(2026, 3, 10, 12, 0, 5, tzinfo=dt.UTC).timestamp()


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def principal(
    key: str = "k1",
    *,
    team: str | None = None,
    team_limits: Limits | None = None,
    **limits: Any,
) -> Principal:
    own = Limits(**limits)
    return Principal(
        key_id=key,
        key_prefix="tg-" + key[:7],
        name=key,
        team=team,
        limits=own.stricter(team_limits) if team_limits else own,
        team_limits=team_limits,
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StoreFactory = Callable[..., QuotaStore]


@pytest.fixture(params=["local", "redis"])
async def make_store(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Builds stores of one backend (the test runs once per backend), closed afterwards.

    "redis" is the production composition: the Redis store behind the failover wrapper.
    """
    backend: str = request.param
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    made: list[QuotaStore] = []

    def factory(**overrides: Any) -> QuotaStore:
        settings = QuotaSettings.model_validate({"backend": backend, "redis_url": url, **overrides})
        store: QuotaStore
        if backend == "redis":
            store = FailoverQuotaStore(RedisQuotaStore(settings, clock=clock), settings)
        else:
            store = LocalQuotaStore(settings, clock=clock)
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.aclose()
