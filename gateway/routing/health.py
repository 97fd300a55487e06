"""Per-engine circuit breaker (outlier ejection) and the retry budget.

Breaker states of one engine::

    closed ──(failure_threshold consecutive failures)──▶ open(until)
    open ──(open period over)──▶ half-open: exactly one request is let through (a probe)
    half-open ──(probe succeeds)──▶ closed
    half-open ──(probe fails)──▶ open again, for twice as long (up to max_open_seconds)
    any ──(background health check fails)──▶ open until a health check passes

Ranking asks :meth:`Breakers.available` (no side effect); dispatch asks
:meth:`Breakers.admit`, which claims the half-open probe. So an engine that merely
appears in a candidate list does not use up its probe. Overload answers (429, gateway
queue full) are not failures: a busy engine is not a sick one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import BreakerSettings, RetrySettings
from gateway.errors import GatewayError, OverloadedError
from gateway.upstream.engine import Engine

Clock = Callable[[], float]

#: Inconclusive health-check failures in a row that eject an engine.
HEALTH_FAILURES_TO_EJECT = 2


@dataclass(slots=True)
class BreakerState:
    """One engine's breaker; ``engine.healthy`` mirrors ``closed``."""

    failures: int = 0
    open_until: float = 0.0
    #: Consecutive trips without a success in between (drives the backoff).
    trips: int = 0
    #: Opened by a failed health check: wait for a passing one, not for a timer.
    by_health: bool = False
    probing: bool = False
    #: Consecutive failed health checks.
    health_failures: int = 0


class Breakers:
    """Tracks engine failures and decides who may receive traffic."""

    def __init__(self, settings: BreakerSettings, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._state: dict[str, BreakerState] = {}

    def state(self, engine: Engine) -> BreakerState:
        st = self._state.get(engine.name)
        if st is None:
            st = self._state[engine.name] = BreakerState()
        return st

    def forget(self, engine: Engine) -> None:
        """Drop a removed replica's state."""
        self._state.pop(engine.name, None)

    def describe(self, engine: Engine) -> str:
        """``closed``, ``open``, ``half_open`` (a probe may go) or ``ejected`` (health check)."""
        if engine.healthy:
            return "closed"
        st = self.state(engine)
        if st.by_health:
            return "ejected"
        if st.probing or self._clock() >= st.open_until:
            return "half_open"
        return "open"

    def available(self, engine: Engine) -> bool:
        """True if the engine may be ranked: closed, or due for a half-open probe."""
        if engine.healthy:
            return True
        st = self.state(engine)
        return not st.by_health and not st.probing and self._clock() >= st.open_until

    def admit(self, engine: Engine) -> bool:
        """Claim the right to send one request now (the probe, when half-open)."""
        if engine.healthy:
            return True
        st = self.state(engine)
        if st.by_health or st.probing or self._clock() < st.open_until:
            return False
        st.probing = True
        return True

    def release(self, engine: Engine) -> None:
        """The attempt ended with neither verdict (client left, bad request): free the probe."""
        if not engine.healthy:
            self.state(engine).probing = False

    def success(self, engine: Engine) -> None:
        st = self.state(engine)
        st.failures = 0
        st.trips = 0
        st.probing = False
        st.by_health = False
        engine.healthy = True

    def failure(self, engine: Engine) -> None:
        st = self.state(engine)
        if not engine.healthy:
            # Already open: only the probe's verdict counts (late failures of requests
            # sent before the trip must not stretch the backoff).
            if st.probing:
                self._open(engine, st)
            return
        st.failures += 1
        if st.failures >= self._settings.failure_threshold:
            self._open(engine, st)

    def record(self, engine: Engine, err: GatewayError) -> None:
        """Count an engine's error: retryable ones (5xx, timeouts, refused) but not overload."""
        if err.retryable and not isinstance(err, OverloadedError):
            self.failure(engine)
        else:
            self.release(engine)

    def _open(self, engine: Engine, st: BreakerState) -> None:
        s = self._settings
        period = min(s.max_open_seconds, s.open_seconds * (2 ** min(st.trips, 16)))
        st.trips += 1
        st.failures = 0
        st.probing = False
        st.open_until = self._clock() + period
        engine.healthy = False

    # ------------------------------------------------------------------ health checks

    def health_failed(self, engine: Engine, *, definite: bool = True) -> None:
        """A background health check failed: take the engine out until one passes.

        A refused connection is ``definite``; a slow or odd answer takes two in a row,
        so one probe that lost a race with a busy event loop does not eject an engine.
        """
        st = self.state(engine)
        st.health_failures += 1
        if not definite and st.health_failures < HEALTH_FAILURES_TO_EJECT:
            return
        if engine.healthy:
            self._open(engine, st)
        st.by_health = True

    def health_passed(self, engine: Engine) -> None:
        """A health check passed: re-admit an engine that health checks had taken out.

        An engine ejected for failing requests stays out until its timer runs and a
        probe request succeeds: ``/health`` can be fine while generation fails.
        """
        st = self.state(engine)
        st.health_failures = 0
        if st.by_health:
            self.success(engine)

    def eject(self, engine: Engine) -> None:
        """Take an engine out now (alias kept for callers: a failed health check)."""
        self.health_failed(engine)


class RetryBudget:
    """Retries allowed: ``budget_ratio`` of recent requests plus a floor per second.

    A token bucket: each request deposits ``budget_ratio`` tokens, time deposits
    ``budget_min_per_s`` per second, and each retry withdraws one. So when everything
    fails, retries add at most ``budget_ratio`` (plus the floor) to the load instead of
    multiplying it by the attempt count.
    """

    def __init__(self, settings: RetrySettings, clock: Clock = time.monotonic) -> None:
        self._ratio = settings.budget_ratio
        self._floor = settings.budget_min_per_s
        self._clock = clock
        self._cap = max(10.0, self._floor * 10)
        self._tokens = min(self._cap, settings.budget_min_per_s)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self._floor)
        self._last = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def on_request(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
