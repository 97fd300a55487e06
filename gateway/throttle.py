"""Failed admin logins, counted per client address, so the admin token cannot be guessed.

After ``auth.admin_max_failures`` wrong tokens from one address within
``auth.admin_lockout_s``, that address gets 429 + Retry-After on every admin route until
the oldest failure leaves the window. Memory is bounded: at most ``max_clients``
addresses are tracked, the least recently failing forgotten first.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from gateway.errors import RateLimitError, with_retry_after


class FailedAttempts:
    def __init__(
        self,
        max_failures: int,
        window_s: float,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window_s
        self._max_clients = max_clients
        self._clock = clock
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def check(self, client: str) -> None:
        """Raise 429 if ``client`` has failed too often lately."""
        times = self._failures.get(client)
        if times is None or len(times) < self._max:
            return
        wait = times[0] + self._window - self._clock()
        if wait <= 0:
            return
        raise with_retry_after(
            RateLimitError(
                f"Too many failed admin logins from this address; try again in {math.ceil(wait)}s.",
                code="too_many_failed_logins",
            ),
            wait,
        )

    def failed(self, client: str) -> None:
        times = self._failures.pop(client, None)
        if times is None:
            times = collections.deque(maxlen=self._max)
        times.append(self._clock())
        self._failures[client] = times  # most recent last
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
