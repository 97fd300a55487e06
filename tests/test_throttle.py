"""Failed admin logins per address: lock-out, window, and bounded memory."""

from __future__ import annotations

import pytest

from gateway.errors import RateLimitError
from gateway.throttle import FailedAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_too_many_failures_lock_out_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    f = FailedAttempts(3, 60.0, clock=clock)
    for _ in range(2):
        f.failed("10.0.0.1")
        clock.now += 10
    f.check("10.0.0.1")  # two failures: still allowed
    f.failed("10.0.0.1")
    with pytest.raises(RateLimitError) as caught:
        f.check("10.0.0.1")
    assert caught.value.headers["Retry-After"] == "40"  # the first failure was 20 s ago
    f.check("10.0.0.2")  # other addresses are not affected
    clock.now += 40.5
    f.check("10.0.0.1")  # the first failure left the window


def test_a_success_clears_and_memory_stays_bounded() -> None:
    f = FailedAttempts(1, 60.0, max_clients=100, clock=Clock())
    f.failed("a")
    f.succeeded("a")
    f.check("a")
    for i in range(1000):
        f.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(f._failures) == 100
    f.check("10.0.0.0")  # forgotten first
    with pytest.raises(RateLimitError):
        f.check("10.0.3.231")  # the most recent is remembered
