"""One behaviour, two backends: every test runs against the local and the Redis store."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from gateway.auth import Limits
from gateway.errors import GatewayError, QuotaExceededError, RateLimitError
from gateway.quotas.base import Demand, Reservation
from tests.quotas.conftest import T0, FakeClock, StoreFactory, principal

USD = 1_000_000_000


async def refused(coro: object) -> GatewayError:
    """Await a reservation that must be refused; return the error."""
    with pytest.raises(RateLimitError) as info:
        await coro  # type: ignore[misc]
    return info.value


async def test_rpm_admits_exactly_the_limit_then_resets(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store()
    p = principal(rpm=3)
    for i in range(3):
        res = await store.reserve(p, f"r{i}", Demand(10, 0))
        await store.settle(res, Demand(5, 0))
    err = await refused(store.reserve(p, "r3", Demand(10, 0)))
    assert err.status_code == 429
    assert err.error_type == "rate_limit_exceeded" and err.code == "rate_limit_exceeded"
    assert err.message.startswith(
        "Rate limit reached for requests per minute (this API key): limit 3, used 3."
    )
    assert err.headers["x-tollgate-limit"] == "rpm"
    assert err.headers["Retry-After"] == "55"  # T0 is 5 s into its minute
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    clock.advance(55)
    res = await store.reserve(p, "r4", Demand(10, 0))
    assert res.snapshot.remaining_requests == 2


async def test_refused_requests_do_not_count(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(rpm=2)
    await store.reserve(p, "a", Demand(1, 0))
    await store.reserve(p, "b", Demand(1, 0))
    for i in range(5):
        await refused(store.reserve(p, f"x{i}", Demand(1, 0)))
    other = principal("k2", rpm=2)
    assert (await store.reserve(other, "c", Demand(1, 0))).snapshot.remaining_requests == 1


async def test_concurrent_reservations_admit_exactly_n(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(rpm=10)

    async def one(i: int) -> bool:
        try:
            await store.reserve(p, f"r{i}", Demand(1, 0))
        except RateLimitError:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(60)))
    assert sum(results) == 10


async def test_tpm_reserves_worst_case_and_settles_to_actual(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(tpm=1000)
    first = await store.reserve(p, "a", Demand(600, 0))
    assert first.snapshot.limit_tokens == 1000
    assert first.snapshot.remaining_tokens == 400
    err = await refused(store.reserve(p, "b", Demand(600, 0)))
    assert "tokens per minute" in err.message and "requested 600" in err.message
    assert err.headers["x-tollgate-limit"] == "tpm"
    await store.settle(first, Demand(100, 0))
    second = await store.reserve(p, "b", Demand(600, 0))
    assert second.snapshot.remaining_tokens == 300  # 100 used + 600 reserved


async def test_request_larger_than_tpm_is_refused_outright(make_store: StoreFactory) -> None:
    store = make_store()
    err = await refused(store.reserve(principal(tpm=1000), "a", Demand(1500, 0)))
    assert err.message.startswith("Request too large for tokens per minute")
    assert "Retry-After" not in err.headers  # waiting cannot help


async def test_concurrency_slot_released_by_settle(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(concurrency=2)
    a = await store.reserve(p, "a", Demand(1, 0))
    await store.reserve(p, "b", Demand(1, 0))
    err = await refused(store.reserve(p, "c", Demand(1, 0)))
    assert err.message.startswith("Rate limit reached for concurrent requests")
    assert err.headers["Retry-After"] == "1"
    await store.settle(a, Demand(1, 0))
    await store.reserve(p, "c", Demand(1, 0))


async def test_same_request_id_twice_holds_two_slots(make_store: StoreFactory) -> None:
    # Clients choose X-Request-ID: reusing one must not share or free a slot.
    store = make_store()
    p = principal(concurrency=2)
    a = await store.reserve(p, "dup", Demand(1, 0))
    b = await store.reserve(p, "dup", Demand(1, 0))
    await refused(store.reserve(p, "dup", Demand(1, 0)))
    await store.settle(a, Demand(1, 0))
    c = await store.reserve(p, "dup", Demand(1, 0))
    await refused(store.reserve(p, "other", Demand(1, 0)))
    for r in (b, c):
        await store.settle(r, Demand(1, 0))
    await store.reserve(p, "other", Demand(1, 0))


async def test_budget_holds_worst_case_then_settles(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(budget_daily_usd=1.0)
    a = await store.reserve(p, "a", Demand(10, 600_000_000))
    assert a.budget_remaining_nusd == 400_000_000
    err = await refused(store.reserve(p, "b", Demand(10, 600_000_000)))
    assert isinstance(err, QuotaExceededError)
    assert err.error_type == "insufficient_quota" and err.code == "insufficient_quota"
    assert err.message.startswith("Budget exhausted for daily spend (this API key): limit $1")
    assert "held by requests in flight" in err.message
    assert err.headers["Retry-After"] == "1"  # the hold comes back when `a` settles
    await store.settle(a, Demand(10, 300_000_000))
    assert await store.budget_remaining_nusd(p) == 700_000_000
    b = await store.reserve(p, "b", Demand(10, 600_000_000))
    assert b.budget_remaining_nusd == 100_000_000


async def test_daily_budget_resets_at_midnight_monthly_does_not(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store()
    p = principal(budget_daily_usd=1.0, budget_monthly_usd=1.5)
    a = await store.reserve(p, "a", Demand(1, USD))
    await store.settle(a, Demand(1, USD))
    err = await refused(store.reserve(p, "b", Demand(1, 1)))
    assert "daily spend" in err.message
    wait = int(err.headers["Retry-After"])
    assert wait == math.ceil(12 * 3600 - 5)  # until 00:00 UTC
    clock.advance(wait)
    b = await store.reserve(p, "b", Demand(1, 400_000_000))
    assert b.budget_remaining_nusd == 100_000_000  # the month holds 1.4 of 1.5
    err = await refused(store.reserve(p, "c", Demand(1, 200_000_000)))
    assert "monthly spend" in err.message


async def test_total_budget_says_an_admin_must_act(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(budget_total_usd=0.5)
    a = await store.reserve(p, "a", Demand(1, 500_000_000))
    await store.settle(a, Demand(1, 500_000_000))
    err = await refused(store.reserve(p, "b", Demand(1, 0)))
    assert "total spend" in err.message and "admin" in err.message
    assert err.headers["Retry-After"] == "86400"


async def test_zero_budget_blocks_even_free_requests(make_store: StoreFactory) -> None:
    store = make_store()
    err = await refused(store.reserve(principal(budget_daily_usd=0.0), "a", Demand(1, 0)))
    assert isinstance(err, QuotaExceededError)


async def test_team_limit_is_shared_by_its_keys(make_store: StoreFactory) -> None:
    store = make_store()
    team = Limits(rpm=3)
    k1 = principal("k1", team="eng", team_limits=team)
    k2 = principal("k2", team="eng", team_limits=team, rpm=10)
    assert k2.limits.rpm == 3  # the effective limit is the stricter one
    await store.reserve(k1, "a", Demand(1, 0))
    await store.reserve(k2, "b", Demand(1, 0))
    await store.reserve(k1, "c", Demand(1, 0))
    err = await refused(store.reserve(k2, "d", Demand(1, 0)))
    assert "(team 'eng')" in err.message
    outsider = principal("k3", team="ops", team_limits=team)
    await store.reserve(outsider, "e", Demand(1, 0))


async def test_team_budget_counts_spend_of_every_key(make_store: StoreFactory) -> None:
    store = make_store()
    team = Limits(budget_daily_usd=1.0)
    k1 = principal("k1", team="eng", team_limits=team)
    k2 = principal("k2", team="eng", team_limits=team)
    a = await store.reserve(k1, "a", Demand(1, 700_000_000))
    await store.settle(a, Demand(1, 700_000_000))
    err = await refused(store.reserve(k2, "b", Demand(1, 400_000_000)))
    assert "team 'eng'" in err.message
    assert await store.budget_remaining_nusd(k2) == 300_000_000


async def test_settle_is_idempotent(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(budget_total_usd=10.0, concurrency=1)
    res = await store.reserve(p, "a", Demand(100, 2 * USD))
    await store.settle(res, Demand(50, USD))
    await store.settle(res, Demand(50, USD))
    # A replay from another copy of the reservation (e.g. a queued retry) too.
    await store.settle(dataclasses.replace(res, settled=False), Demand(50, USD))
    assert await store.budget_remaining_nusd(p) == 9 * USD
    await store.reserve(p, "b", Demand(1, 0))  # the slot was released once, and is free


async def test_expired_reservation_is_reclaimed(make_store: StoreFactory, clock: FakeClock) -> None:
    # A process that dies holding a reservation must not leak it (reliability item 8).
    store = make_store(reservation_ttl_s=30)
    p = principal(concurrency=1, budget_daily_usd=1.0)
    await store.reserve(p, "crashed", Demand(10, 900_000_000))
    await refused(store.reserve(p, "b", Demand(10, 200_000_000)))
    clock.advance(31)
    res = await store.reserve(p, "b", Demand(10, 200_000_000))
    assert res.budget_remaining_nusd == 800_000_000


async def test_headers_show_the_tightest_scope(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(team="eng", team_limits=Limits(rpm=5, tpm=10_000), rpm=50, tpm=2_000)
    res = await store.reserve(p, "a", Demand(500, 0))
    h = res.snapshot.headers()
    assert h["x-ratelimit-limit-requests"] == "5"
    assert h["x-ratelimit-remaining-requests"] == "4"
    assert h["x-ratelimit-limit-tokens"] == "2000"
    assert h["x-ratelimit-remaining-tokens"] == "1500"
    assert h["x-ratelimit-reset-requests"] == "55.000s"


async def test_unlimited_keys_still_count_spend(make_store: StoreFactory) -> None:
    # A budget added later starts from the true spend of the period.
    store = make_store()
    free = principal("k1")
    res = await store.reserve(free, "a", Demand(10, 300_000_000))
    assert res.snapshot.headers() == {} and res.budget_remaining_nusd is None
    await store.settle(res, Demand(10, 300_000_000))
    assert await store.budget_remaining_nusd(free) is None
    capped = principal("k1", budget_daily_usd=1.0)
    assert await store.budget_remaining_nusd(capped) == 700_000_000


async def test_spend_totals_for_reconciliation(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal("k1", team="eng")
    done = await store.reserve(p, "a", Demand(10, 123))
    await store.settle(done, Demand(10, 100))
    await store.reserve(p, "in-flight", Demand(10, 5_000))
    await store.reserve(principal("k2"), "b", Demand(1, 0))
    totals = getattr(store, "spend_totals")  # noqa: B009 - not on the QuotaStore protocol
    assert await totals("day") == {"k1": 100}
    assert await totals("month") == {"k1": 100}


async def test_reservation_reports_what_it_held(make_store: StoreFactory) -> None:
    store = make_store()
    p = principal(rpm=5)
    res = await store.reserve(p, "req-1", Demand(42, 7))
    assert isinstance(res, Reservation)
    assert res.request_id == "req-1" and res.demand == Demand(42, 7) and not res.settled
    await store.settle(res, Demand(40, 7))
    assert res.settled


async def test_a_request_ending_after_midnight_is_billed_to_the_new_day(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    # The ledger bills a request when it finishes; the counters follow it.
    clock.now = T0 - 5 - 12 * 3600 + 86_400 - 2  # 23:59:58 UTC
    store = make_store()
    p = principal(budget_daily_usd=1.0)
    res = await store.reserve(p, "late", Demand(10, 500_000_000))
    clock.advance(4)
    await store.settle(res, Demand(10, 300_000_000))
    assert await store.budget_remaining_nusd(p) == 700_000_000
    totals = getattr(store, "spend_totals")  # noqa: B009
    assert await totals("day") == {"k1": 300_000_000}
    clock.advance(-4)
    assert await store.budget_remaining_nusd(p) == 10**9  # nothing left on the old day
