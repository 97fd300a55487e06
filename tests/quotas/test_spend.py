"""Spend from the ledger: the local store rebuilds it at start-up, and a Redis that lost
its data gets it back once."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.auth import Limits
from gateway.config import QuotaSettings, Settings
from gateway.errors import QuotaExceededError
from gateway.ledger.record import LedgerRecord
from gateway.ledger.store import LedgerStore
from gateway.quotas.base import Demand, Unlimited
from gateway.quotas.factory import build_quota_store
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.local import LocalQuotaStore
from gateway.quotas.redis import RedisQuotaStore
from tests.quotas.conftest import T0, FakeClock, principal

NOW = dt.datetime.fromtimestamp(T0, dt.UTC)  # 2026-03-10 12:00:05 UTC


class FakeSpend:
    """Spend rows as a ledger would sum them, keyed by finish time."""

    def __init__(self, rows: list[tuple[dt.datetime, str, str | None, int]]) -> None:
        self.rows = rows
        self.calls: list[dt.datetime | None] = []

    async def spend_since(self, since: dt.datetime | None) -> Sequence[tuple[str, str | None, int]]:
        self.calls.append(since)
        sums: dict[tuple[str, str | None], int] = {}
        for at, key, team, nusd in self.rows:
            if since is None or at >= since:
                sums[(key, team)] = sums.get((key, team), 0) + nusd
        return [(k, t, n) for (k, t), n in sums.items()]


async def test_load_spend_fills_day_month_and_total_per_key_and_team() -> None:
    source = FakeSpend(
        [
            (NOW - dt.timedelta(hours=1), "k1", "eng", 100),  # today
            (NOW - dt.timedelta(days=2), "k1", "eng", 20),  # this month
            (NOW - dt.timedelta(days=40), "k1", "eng", 3),  # before
            (NOW - dt.timedelta(hours=2), "k2", "eng", 1000),
        ]
    )
    store = LocalQuotaStore(QuotaSettings.model_validate({}), clock=FakeClock())
    await store.load_spend(source)
    assert source.calls == [
        dt.datetime(2026, 3, 10, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        None,
    ]
    team = Limits(budget_daily_usd=2000e-9)
    k1 = principal("k1", team="eng", team_limits=team, budget_daily_usd=1e-6)
    assert await store.budget_remaining_nusd(k1) == 2000 - 1100  # the team's is tighter
    assert await store.budget_remaining_nusd(principal("k1", budget_monthly_usd=1e-6)) == 880
    assert await store.budget_remaining_nusd(principal("k1", budget_total_usd=1e-6)) == 877
    assert await store.spend_totals("day") == {"k1": 100, "k2": 1000}


def record(request_id: str, key: str, team: str | None, at: dt.datetime, nusd: int) -> LedgerRecord:
    return LedgerRecord(
        request_id=request_id,
        started_at=at,
        finished_at=at,
        key_id=key,
        key_prefix="tg-" + key,
        team=team,
        endpoint="chat",
        requested_model="small",
        engine="small-0",
        tier="small",
        upstream_model="m",
        route_reason="by_name",
        stream=False,
        prompt_tokens=1,
        completion_tokens=1,
        cached_tokens=0,
        usage_estimated=False,
        latency_ms=1.0,
        ttft_ms=None,
        status="ok",
        http_status=200,
        error_code=None,
        cost_nusd=nusd,
        counterfactual_nusd=nusd,
        price_version="m@2026-01-01",
    )


async def test_a_restarted_gateway_remembers_todays_spend(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    ledger = LedgerStore.from_url(url)
    ledger.migrate()
    today = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ledger.insert(
        [
            record("r1", "k1", "eng", today, 600_000_000),
            record("r2", "k1", "eng", today, 300_000_000),
            record("r3", "k2", None, today, 50),
        ]
    )
    ledger.dispose()
    settings = Settings.model_validate(
        {"ledger": {"url": url}, "pricing": {"file": "configs/prices.yaml"}}
    )
    store = await build_quota_store(settings)
    assert isinstance(store, LocalQuotaStore)
    p = principal("k1", budget_daily_usd=1.0)
    assert await store.budget_remaining_nusd(p) == 100_000_000
    res = await store.reserve(p, "next", Demand(1, 100_000_000))
    assert res.budget_remaining_nusd == 0
    await store.aclose()


async def test_a_missing_ledger_table_starts_from_zero(tmp_path: Path) -> None:
    settings = Settings.model_validate({"ledger": {"url": f"sqlite:///{tmp_path}/empty.db"}})
    store = await build_quota_store(settings)
    assert await store.budget_remaining_nusd(principal("k1", budget_daily_usd=1.0)) == 10**9


async def test_quotas_can_be_switched_off() -> None:
    settings = Settings.model_validate({"quotas": {"enabled": False}})
    store = await build_quota_store(settings)
    assert isinstance(store, Unlimited)
    for i in range(5):
        await store.reserve(principal("k", rpm=1), f"r{i}", Demand(1, 0))


# ---------------------------------------------------------------------------- Redis

LEDGER_ROWS = [
    (NOW - dt.timedelta(hours=1), "k1", "eng", 700),  # today
    (NOW - dt.timedelta(days=3), "k1", "eng", 200),  # this month
    (NOW - dt.timedelta(days=45), "k1", "eng", 50),  # before
]


async def wait_seeded(store: FailoverQuotaStore, count: int = 1) -> None:
    deadline = time.monotonic() + 5
    while store.status()["seeded_from_ledger"] < count:
        assert time.monotonic() < deadline, "not seeded"
        await asyncio.sleep(0.01)


def redis_store(url: str, clock: FakeClock, source: FakeSpend) -> FailoverQuotaStore:
    settings = QuotaSettings.model_validate({"backend": "redis", "redis_url": url})
    return FailoverQuotaStore(RedisQuotaStore(settings, clock=clock), settings, spend_source=source)


@pytest.mark.redis
async def test_a_redis_that_lost_its_data_gets_the_ledgers_spend_back_once(
    redis_url: str, clock: FakeClock
) -> None:
    """Two replicas notice the empty Redis; one seeds, and budgets count the ledger."""
    source_a, source_b = FakeSpend(LEDGER_ROWS), FakeSpend(LEDGER_ROWS)
    a, b = redis_store(redis_url, clock, source_a), redis_store(redis_url, clock, source_b)
    try:
        p = principal("k1", team="eng", budget_daily_usd=1000e-9)
        # Admitted against an empty Redis: the ledger's 700 is not there yet.
        await a.reserve(p, "r1", Demand(1, 100))
        await wait_seeded(a)
        assert await a.budget_remaining_nusd(p) == 1000 - 700 - 100
        # Replica b sees the marker: it neither queries the ledger nor seeds again.
        await b.reserve(p, "r2", Demand(1, 100))
        await asyncio.sleep(0.05)
        assert b.status()["seeded_from_ledger"] == 0 and source_b.calls == []
        with pytest.raises(QuotaExceededError):
            await b.reserve(p, "r3", Demand(1, 101))  # 700 + 200 held + 101 > 1000
        month = principal("k1", team="eng", budget_monthly_usd=2000e-9)
        assert await a.budget_remaining_nusd(month) == 2000 - 900 - 200
        total = principal("k1", team="eng", budget_total_usd=3000e-9)
        assert await a.budget_remaining_nusd(total) == 3000 - 950 - 200
        team = principal("k9", team="eng", team_limits=Limits(budget_total_usd=2000e-9))
        assert await a.budget_remaining_nusd(team) == 2000 - 950 - 200
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
async def test_the_gateway_seeds_a_new_redis_before_its_first_request(
    redis_url: str, tmp_path: Path
) -> None:
    source = FakeSpend([(dt.datetime.now(dt.UTC), "k1", None, 900)])
    settings = Settings.model_validate(
        {
            "quotas": {"backend": "redis", "redis_url": redis_url},
            "ledger": {"url": f"sqlite:///{tmp_path}/l.db", "partial_restore_ok": True},
        }
    )
    store = await build_quota_store(settings, spend_source=source)
    try:
        assert isinstance(store, FailoverQuotaStore)
        assert store.status()["seeded_from_ledger"] == 1
        with pytest.raises(QuotaExceededError, match="used"):
            await store.reserve(principal("k1", budget_daily_usd=1000e-9), "r", Demand(1, 101))
    finally:
        await store.aclose()
    # A second start finds the marker (a persistent Redis): the ledger is not read.
    again_source = FakeSpend([(dt.datetime.now(dt.UTC), "k1", None, 900)])
    again = await build_quota_store(settings, spend_source=again_source)
    try:
        assert isinstance(again, FailoverQuotaStore)
        assert again.status()["seeded_from_ledger"] == 0 and again_source.calls == []
    finally:
        await again.aclose()
