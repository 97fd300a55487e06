"""Circuit breaker (outlier ejection, half-open probes, health checks) and retry budget."""

from __future__ import annotations

from gateway.config import BreakerSettings, RetrySettings
from gateway.errors import EngineUnavailableError, InvalidRequestError, OverloadedError
from gateway.routing.health import Breakers, RetryBudget
from gateway.routing.pool import EnginePool
from gateway.upstream.engine import Engine
from tests.routing.helpers import FakeClock, make_settings


def setup(threshold: int = 3, open_s: float = 10.0) -> tuple[Breakers, Engine, FakeClock]:
    clock = FakeClock()
    b = Breakers(
        BreakerSettings(failure_threshold=threshold, open_seconds=open_s, max_open_seconds=35),
        clock,
    )
    return b, EnginePool(make_settings().engines).engines["small-0"], clock


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    b, e, _ = setup(threshold=3)
    b.failure(e)
    b.failure(e)
    b.success(e)
    b.failure(e)
    b.failure(e)
    assert e.healthy and b.available(e)
    b.failure(e)
    assert not e.healthy and not b.available(e) and not b.admit(e)


def test_half_open_lets_exactly_one_probe_through() -> None:
    b, e, clock = setup(threshold=1, open_s=10)
    b.failure(e)
    clock.advance(9.9)
    assert not b.available(e)
    clock.advance(0.2)
    assert b.available(e) and b.available(e)  # ranking has no side effect
    assert b.admit(e)  # the probe
    assert not b.admit(e) and not b.available(e)  # one at a time
    b.success(e)
    assert e.healthy and b.admit(e)


def test_failed_probe_reopens_with_doubling_backoff_capped() -> None:
    b, e, clock = setup(threshold=1, open_s=10)
    b.failure(e)  # open 10 s
    periods = []
    for _ in range(4):
        start = clock.now
        while not b.available(e):
            clock.advance(1)
        periods.append(clock.now - start)
        assert b.admit(e)
        b.failure(e)
    assert periods == [10, 20, 35, 35]  # capped at max_open_seconds


def test_a_probe_without_verdict_is_released() -> None:
    b, e, clock = setup(threshold=1)
    b.failure(e)
    clock.advance(11)
    assert b.admit(e)
    b.record(e, InvalidRequestError("bad request"))  # not the engine's fault: no verdict
    assert b.admit(e)


def test_late_failures_while_open_do_not_stretch_the_backoff() -> None:
    b, e, clock = setup(threshold=1, open_s=10)
    b.failure(e)
    b.failure(e)  # a request sent before the trip fails late
    b.failure(e)
    clock.advance(10)
    assert b.available(e)


def test_overload_is_not_a_failure() -> None:
    b, e, _ = setup(threshold=1)
    b.record(e, OverloadedError("busy"))
    assert e.healthy
    b.record(e, EngineUnavailableError("refused"))
    assert not e.healthy


def test_health_checks_eject_and_readmit_but_do_not_override_request_failures() -> None:
    b, e, clock = setup(threshold=1)
    b.health_failed(e)
    clock.advance(1000)
    assert not b.available(e)  # no probe requests while /health fails
    b.health_passed(e)
    assert e.healthy
    b.failure(e)  # ejected by a failing request
    b.health_passed(e)  # /health can pass while generation fails
    assert not e.healthy
    clock.advance(10)
    assert b.admit(e)


def test_retry_budget_ratio_and_floor() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetrySettings(budget_ratio=0.5, budget_min_per_s=1.0), clock)
    assert budget.try_spend()  # the initial floor token
    assert not budget.try_spend()
    budget.on_request()
    budget.on_request()
    assert budget.try_spend() and not budget.try_spend()  # 2 requests x 0.5
    clock.advance(3)
    assert budget.tokens == 3.0
    clock.advance(1000)
    assert budget.tokens == 10.0  # capped


def test_inconclusive_health_failures_need_two_in_a_row() -> None:
    b, e, _ = setup()
    b.health_failed(e, definite=False)
    b.health_passed(e)
    b.health_failed(e, definite=False)
    assert e.healthy
    b.health_failed(e, definite=False)
    assert not e.healthy and not b.available(e)
