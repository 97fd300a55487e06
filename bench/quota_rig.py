"""The quota benchmark's set-up: its config, the principal and demands it reserves, a
throwaway ``redis-server`` (optionally pinned to CPUs), the ping floor and the stores.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench import machine, results, stats
from gateway.auth import Limits, Principal
from gateway.config import QuotaSettings
from gateway.quotas.base import Demand, QuotaStore, Reservation, Unlimited
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.link import RedisLink
from gateway.quotas.local import LocalQuotaStore
from gateway.quotas.redis import RedisQuotaStore
from tests.support.redis_server import RedisServer

RESULTS = results.RESULTS


BIG = 10**9


PRINCIPAL = Principal(
    key_id="bench",
    key_prefix="tg-bench",
    name="bench",
    team="bench-team",
    limits=Limits(
        rpm=BIG,
        tpm=BIG,
        concurrency=100_000,
        budget_daily_usd=1e6,
        budget_monthly_usd=1e6,
        budget_total_usd=1e6,
    ),
    team_limits=Limits(rpm=BIG, tpm=BIG, concurrency=100_000, budget_daily_usd=1e6),
)


DEMAND = Demand(tokens=600, cost_nusd=120_000)


ACTUAL = Demand(tokens=350, cost_nusd=70_000)


@dataclass
class Config:
    iterations: int = 5000
    rate: float = 300.0
    duration: float = 20.0  # per backend, split in ABBA blocks
    blocks: int = 8
    engine_ms: float = 20.0
    redis_url: str | None = None


def pcts(values_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean in microseconds."""
    if not values_s:
        return {}
    names = ("p50_us", "p90_us", "p99_us")
    out = stats.percentiles(values_s, (50, 90, 99), names=names, scale=1e6, digits=1)
    return out | {"mean_us": stats.mean(values_s, scale=1e6, digits=1), "n": len(values_s)}


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus is not None:
        machine.pin(pid, cpus)


@dataclass(frozen=True)
class RedisUnderTest:
    url: str
    #: The server's process when this bench started it (None: a given ``--redis-url``).
    pid: int | None


@contextlib.contextmanager
def redis_server(url: str | None, cpus: set[int] | None = None) -> Iterator[RedisUnderTest]:
    """The given Redis, or a throwaway one (loopback, AOF fsync every second)."""
    if url is not None:
        yield RedisUnderTest(url, None)
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed; pass --redis-url")
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendfsync="everysec").start()
        assert server.proc is not None
        pin(server.proc.pid, cpus)
        try:
            yield RedisUnderTest(server.url, server.proc.pid)
        finally:
            server.stop()


class PingFloor:
    """Two PING round trips per request (reserve, settle): the floor of any Redis store
    on this machine, to tell the store's own cost from the host's scheduling delays.
    With redis-py's asyncio client (``ping-redis-py``) or our multiplexed link
    (``ping-link``), to compare the two clients on the same server."""

    def __init__(self, url: str, client: str) -> None:
        self._py = Redis.from_url(url) if client == "redis-py" else None
        self._link = RedisLink(url, timeout_s=1.0, connect_timeout_s=2.0)

    async def _ping(self) -> None:
        if self._py is not None:
            await self._py.ping()
        else:
            await self._link.call("PING")

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        await self._ping()
        return Reservation(request_id, principal, demand)

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        await self._ping()

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        return None

    async def aclose(self) -> None:
        if self._py is not None:
            await self._py.aclose()
        await self._link.aclose()


async def make_store(kind: str, url: str) -> QuotaStore:
    settings = QuotaSettings.model_validate({"backend": "redis", "redis_url": url})
    if kind == "local":
        return LocalQuotaStore(settings)
    if kind == "off":
        return Unlimited()
    if kind.startswith("ping-"):
        floor = PingFloor(url, kind.removeprefix("ping-"))
        await floor.reserve(PRINCIPAL, "warm", DEMAND)
        return floor
    primary = RedisQuotaStore(settings)
    await primary.ping()
    await primary.link.call("FLUSHDB")
    return FailoverQuotaStore(primary, settings)
