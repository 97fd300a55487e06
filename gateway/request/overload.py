"""Overload control: past capacity, refuse at once and cheaply, before any other work.

A gateway exists to protect what sits behind it. When more arrives than one process
can serve, the excess must not queue inside it (every request would then be late, and
most would time out at the client); it gets 503 with ``Retry-After`` straight away,
before authentication, quotas or an engine are touched, so the process keeps serving at
capacity. Two signals, both cheap to read per request:

* **in flight**: requests between admission and their end (``server.max_in_flight``);
* **event-loop lag**: how late a 20 ms timer fires, sustained over three samples in a
  row (``server.max_loop_lag_ms``). A saturated loop shows it first: requests then
  wait in the loop's queue before any handler sees them, which an in-flight count
  cannot see. One slow turn of the loop (a collection, a CPU steal) is not overload.
"""

from __future__ import annotations

import asyncio

from gateway.config import ServerSettings
from gateway.errors import ServiceUnavailableError
from gateway.metrics import Metrics


class LoopLag:
    """Samples the event loop's lag: how much later than asked a short sleep returns."""

    #: Samples the lag must exceed in a row (``window`` x ``interval_s``).
    window = 3

    def __init__(self, metrics: Metrics, interval_s: float = 0.02) -> None:
        self._metrics = metrics
        self._interval = interval_s
        #: The smallest of the last ``window`` samples, in seconds.
        self.lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        recent = [0.0] * self.window
        i = 0
        gauge = self._metrics.loop_lag
        while True:
            start = loop.time()
            await asyncio.sleep(self._interval)
            sample = max(0.0, loop.time() - start - self._interval)
            recent[i] = sample
            i = (i + 1) % self.window
            # Sustained lag, not a spike: a garbage collection, a page fault or one CPU
            # steal lags one sample; a saturated loop lags every one.
            self.lag = min(recent)
            gauge.set(sample)


class OverloadGuard:
    """Decides, per request and in O(1), whether this process takes more work."""

    def __init__(self, server: ServerSettings, lag: LoopLag, metrics: Metrics) -> None:
        self._max_in_flight = server.max_in_flight
        self._max_lag = server.max_loop_lag_ms / 1000 if server.max_loop_lag_ms else None
        self._lag = lag
        self._by_in_flight = metrics.overload_refusals.labels("in_flight")
        self._by_lag = metrics.overload_refusals.labels("loop_lag")

    def refuses(self, in_flight: int) -> str | None:
        """The signal (``in_flight``, ``loop_lag``) on which this process refuses more
        work now, counted in ``overload_refusals``; None when it takes the request.

        The one decision: the HTTP protocol (gateway/api/shedding.py) asks it before a
        request becomes a task, the route (:meth:`check`) for servers without that
        protocol."""
        if in_flight >= self._max_in_flight:
            self._by_in_flight.inc()
            return "in_flight"
        if self._max_lag is not None and self._lag.lag > self._max_lag:
            self._by_lag.inc()
            return "loop_lag"
        return None

    def check(self, in_flight: int) -> None:
        """Raise 503 (Retry-After: 1) when the process is past capacity."""
        signal = self.refuses(in_flight)
        if signal == "in_flight":
            raise overload_error(f"{in_flight} requests are in flight")
        if signal == "loop_lag":
            raise overload_error(f"its event loop is {self._lag.lag * 1000:.0f} ms behind")


#: Why, in a refusal's message, per signal (the protocol's prebuilt answers).
REASONS = {"in_flight": "too many requests are in flight", "loop_lag": "its event loop is behind"}


def overload_error(why: str) -> ServiceUnavailableError:
    """The one refusal: 503 ``gateway_overloaded`` with ``Retry-After: 1``."""
    return ServiceUnavailableError(
        f"The gateway is over capacity ({why}); retry shortly.",
        code="gateway_overloaded",
        headers={"Retry-After": "1"},
    )
