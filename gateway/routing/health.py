"""Per-engine circuit breaker and retry budget.

Consecutive failures eject an engine (``healthy = False``) for ``open_seconds``; after
that one request is let through as a half-open probe. A success closes the breaker.
Background health checks (see :mod:`gateway.routing.monitor`) close it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.config import BreakerSettings, RetrySettings
from gateway.engines import Engine


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float = 0.0


class Breakers:
    """Tracks engine failures and decides who may receive traffic."""

    def __init__(self, settings: BreakerSettings, clock: object = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._state: dict[str, _State] = {}

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator, no-any-return]

    def state(self, engine: Engine) -> _State:
        st = self._state.get(engine.name)
        if st is None:
            st = self._state[engine.name] = _State()
        return st

    def available(self, engine: Engine) -> bool:
        """True if the engine may take a request now (closed, or due for a probe)."""
        if engine.healthy:
            return True
        st = self.state(engine)
        now = self._now()
        if now >= st.open_until:
            # Half-open: let one request through, and hold the rest for another period.
            st.open_until = now + self._settings.open_seconds
            return True
        return False

    def success(self, engine: Engine) -> None:
        st = self.state(engine)
        st.failures = 0
        engine.healthy = True

    def failure(self, engine: Engine) -> None:
        st = self.state(engine)
        st.failures += 1
        if not engine.healthy or st.failures >= self._settings.failure_threshold:
            engine.healthy = False
            st.open_until = self._now() + self._settings.open_seconds

    def eject(self, engine: Engine) -> None:
        """Take an engine out now (failed health check)."""
        engine.healthy = False
        self.state(engine).open_until = self._now() + self._settings.open_seconds


class RetryBudget:
    """Retries allowed: ``ratio`` of recent requests plus a floor per second."""

    def __init__(self, settings: RetrySettings, clock: object = time.monotonic) -> None:
        self._ratio = settings.budget_ratio
        self._floor = settings.budget_min_per_s
        self._clock = clock
        self._tokens = settings.budget_min_per_s
        self._last = self._now()

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator, no-any-return]

    def _refill(self) -> None:
        now = self._now()
        cap = max(10.0, self._floor * 10)
        self._tokens = min(cap, self._tokens + (now - self._last) * self._floor)
        self._last = now

    def on_request(self) -> None:
        self._tokens += self._ratio

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
