"""Redis outages against a real redis-server: killed, paused, and brought back."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Principal
from gateway.config import QuotaSettings
from gateway.errors import QuotaStoreUnavailable, RateLimitError
from gateway.metrics import Metrics
from gateway.quotas.base import Demand, Reservation
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.layout import SettleOp
from gateway.quotas.local import LocalQuotaStore
from gateway.quotas.outage import Breaker, Degraded
from gateway.quotas.redis import RedisQuotaStore
from tests.quotas.conftest import FakeClock, principal
from tests.quotas.redis_server import RedisServer

USD = 1_000_000_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, since the test kills it."""
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()


Factory = Callable[..., FailoverQuotaStore]


@pytest.fixture
async def failover(server: RedisServer, clock: FakeClock) -> AsyncIterator[Factory]:
    made: list[FailoverQuotaStore] = []

    def make(
        primary_cls: type[RedisQuotaStore] = RedisQuotaStore, **overrides: Any
    ) -> FailoverQuotaStore:
        opts = {
            "backend": "redis",
            "redis_url": server.url,
            "redis_timeout_s": 0.1,
            "breaker_failures": 1,
            "breaker_open_s": 0.1,
            **overrides,
        }
        settings = QuotaSettings.model_validate(opts)
        store = FailoverQuotaStore(
            primary_cls(settings, clock=clock),
            settings,
            fallback=LocalQuotaStore(settings, clock=clock, rate_divisor=settings.replicas),
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def counters(server: RedisServer, key_id: str) -> dict[str, int]:
    c = server.client()
    try:
        st = c.get(f"tg:q:{{k:{key_id}}}:st")
        held = c.get(f"tg:q:{{k:{key_id}}}:held")
        inflight = c.zcard(f"tg:q:{{k:{key_id}}}:inf")
    finally:
        c.close()
    return {"total": int(st or 0), "held": int(held or 0), "in_flight": int(inflight)}


async def wait_breaker(store: FailoverQuotaStore) -> None:
    await asyncio.sleep(0.12)  # breaker_open_s: the next call probes Redis


def test_breaker_opens_probes_once_and_recovers() -> None:
    now = [0.0]
    b = Breaker(failures=2, open_s=1.0, clock=lambda: now[0])
    assert b.allow()
    b.failure()
    assert not b.is_open and b.allow()
    b.failure()
    assert b.is_open and not b.allow()
    assert b.retry_after_s() == 1.0
    now[0] = 1.5
    assert b.allow()  # the probe
    assert not b.allow()  # only one at a time
    b.failure()  # the probe failed: open again, for a full period
    assert not b.allow()
    now[0] = 2.6
    assert b.allow()
    b.success()
    assert not b.is_open and b.allow() and b.allow()


async def test_budgets_fail_closed_rates_fall_back_to_a_local_share(
    server: RedisServer, failover: Factory
) -> None:
    store = failover(replicas=2)
    server.kill()
    budgeted = principal("b", budget_daily_usd=5.0)
    with pytest.raises(QuotaStoreUnavailable) as info:
        await store.reserve(budgeted, "r", Demand(1, 1))
    err = info.value
    assert err.status_code == 503 and err.code == "quota_store_unavailable"
    assert int(err.headers["Retry-After"]) >= 1
    assert "budget" in err.message
    # rpm=10 shared by 2 replicas: this replica admits 5 on its own.
    limited = principal("r", rpm=10)
    admitted = 0
    for i in range(8):
        try:
            await store.reserve(limited, f"x{i}", Demand(1, 0))
            admitted += 1
        except RateLimitError as exc:
            assert "requests per minute" in exc.message and "limit 5" in exc.message
    assert admitted == 5
    free = await store.reserve(principal("f"), "y", Demand(1, 10))
    assert free.budget_remaining_nusd is None
    assert store.status()["redis"] == "unreachable"


async def test_policies_are_configurable(server: RedisServer, failover: Factory) -> None:
    open_budgets = failover(on_store_error_budgets="fail_open", on_store_error_rates="fail_closed")
    server.kill()
    await open_budgets.reserve(principal("b", budget_daily_usd=5.0), "a", Demand(1, 1))
    with pytest.raises(QuotaStoreUnavailable):
        await open_budgets.reserve(principal("r", rpm=100), "b", Demand(1, 0))


async def test_recovery_replays_settlements_exactly_once(
    server: RedisServer, failover: Factory
) -> None:
    store = failover()
    p = principal("k", budget_total_usd=10.0)
    a = await store.reserve(p, "a", Demand(10, 2 * USD))
    b = await store.reserve(p, "b", Demand(10, 2 * USD))
    server.kill()  # SIGKILL; the AOF keeps every write, as in production
    await store.settle(a, Demand(10, USD))  # cannot reach Redis: queued
    with pytest.raises(QuotaStoreUnavailable):
        await store.reserve(p, "c", Demand(10, USD))  # budgets fail closed
    # a's settlement, and the release of c's hold in case the script ran (it did not).
    assert store.status()["pending_settlements"] == 2

    server.start()
    await wait_breaker(store)
    d = await store.reserve(p, "d", Demand(10, USD))  # the probe: replays `a` first
    await store.drained()
    assert store.status() | {"seeded_from_ledger": 0} == {
        "backend": "redis",
        "redis": "ok",
        "pending_settlements": 0,
        "dropped_settlements": 0,
        "seeded_from_ledger": 0,
    }
    await store.settle(b, Demand(10, 500_000_000))
    await store.drained()
    # Replays of settlements already applied change nothing.
    for res, actual in ((a, Demand(10, USD)), (b, Demand(10, 500_000_000))):
        await store.primary.settle(dataclasses.replace(res, settled=False), actual)
    c = counters(server, "k")
    assert c == {"total": USD + 500_000_000 + USD, "held": USD, "in_flight": 1}
    await store.settle(d, Demand(10, 250_000_000))
    await store.drained()
    assert counters(server, "k")["total"] == USD + 500_000_000 + 250_000_000
    assert await store.budget_remaining_nusd(p) == 10 * USD - 1_750_000_000


async def test_settlement_of_a_degraded_reservation_is_charged_once(
    server: RedisServer, failover: Factory
) -> None:
    store = failover()
    p = principal("k", rpm=100)  # no budget: admitted by the local limiter
    server.kill()
    res = await store.reserve(p, "a", Demand(10, 0))
    await store.settle(res, Demand(10, 700))
    server.start()
    await wait_breaker(store)
    await store.reserve(p, "b", Demand(1, 0))
    await store.drained()
    assert counters(server, "k")["total"] == 700
    # The same settlement replayed (e.g. a reply lost after Redis applied it).
    hold = res.store_token
    assert isinstance(hold, Degraded)
    op = store.primary.settle_op(hold.hold_id, hold.scope_ids, Demand(10, 700), held=False)
    await store.primary.settle_many([op, op])
    assert counters(server, "k")["total"] == 700


class LostReply(RedisQuotaStore):
    """The reservation script runs, then the reply is lost (connection cut)."""

    lose_next = True

    async def reserve_hold(
        self,
        principal: Principal,
        request_id: str,
        hold_id: str,
        demand: Demand,
        *,
        settle_first: Sequence[SettleOp] = (),
    ) -> Reservation:
        res = await super().reserve_hold(
            principal, request_id, hold_id, demand, settle_first=settle_first
        )
        if self.lose_next:
            self.lose_next = False
            raise QuotaStoreUnavailable("reply lost")
        return res


async def test_a_hold_whose_reply_was_lost_is_released(
    server: RedisServer, failover: Factory
) -> None:
    store = failover(LostReply)
    p = principal("k", concurrency=1)
    first = await store.reserve(p, "a", Demand(1, 0))  # Redis holds it; we do not know
    assert counters(server, "k")["in_flight"] == 1
    await store.settle(first, Demand(1, 0))
    await wait_breaker(store)
    # Without the release, the phantom hold would refuse this until its TTL.
    second = await store.reserve(p, "b", Demand(1, 0))
    assert counters(server, "k")["in_flight"] == 1
    await store.settle(second, Demand(1, 0))
    await store.drained()
    assert counters(server, "k")["in_flight"] == 0


async def test_a_hung_redis_costs_one_timeout_then_nothing(
    server: RedisServer, failover: Factory
) -> None:
    store = failover(breaker_open_s=5.0)
    p = principal("k", rpm=1000)
    await store.reserve(p, "warm", Demand(1, 0))
    server.pause()  # SIGSTOP: connections hang instead of being refused
    try:
        t = time.perf_counter()
        await store.reserve(p, "a", Demand(1, 0))  # times out, then the local limiter
        first = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(20):
            await store.reserve(p, f"b{i}", Demand(1, 0))
        rest = (time.perf_counter() - t) / 20
    finally:
        server.resume()
    assert first < 0.5  # redis_timeout_s = 0.1
    assert rest < 0.005  # the breaker is open: no call to Redis at all


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_settlement_queue_is_bounded(server: RedisServer, failover: Factory) -> None:
    store = failover(pending_settles_max=2)
    p = principal("k")
    held = [await store.reserve(p, f"r{i}", Demand(1, 1)) for i in range(3)]
    server.kill()
    for res in held:
        await store.settle(res, Demand(1, 1))
    # Written at once to a connection not yet seen closed: they come back to the queue
    # when the loss is noticed.
    await wait_for(lambda: store.status()["dropped_settlements"] > 0)
    status = store.status()
    assert status["pending_settlements"] == 2 and status["dropped_settlements"] == 1


async def test_metrics_show_the_store_down_and_the_settlements_waiting(
    server: RedisServer, failover: Factory
) -> None:
    store = failover(breaker_open_s=5.0)
    metrics = Metrics()
    metrics.watch_quota_store(store.status)
    p = principal("k", rpm=1000)
    held = await store.reserve(p, "a", Demand(1, 1))
    assert b"tollgate_quota_store_up 1.0" in metrics.render()
    server.kill()
    await store.reserve(p, "b", Demand(1, 0))  # fails over to the local limiter
    await store.settle(held, Demand(1, 1))
    text = metrics.render()
    assert b"tollgate_quota_store_up 0.0" in text
    # a's settlement, and the release of the hold b's lost reply may have left.
    assert store.status()["pending_settlements"] == 2
    assert b"tollgate_quota_pending_settlements 2.0" in text
