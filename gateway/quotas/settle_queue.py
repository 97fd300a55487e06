"""Settlements waiting for Redis: one bounded queue, sent in batches in the background.

A settlement that could not be written at once (no connection, Redis out, scripts lost)
waits here. A reservation takes up to ``INLINE_SETTLE_MAX`` of them along in its own
round trip, ahead of itself; what none picks up within ``SETTLE_LINGER_S`` a background
task sends in batches of ``BATCH_MAX``. While Redis is out they wait, and are replayed
when it is back (replays are idempotent by hold id). Beyond
``quotas.pending_settles_max`` the oldest are dropped, and counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from gateway.errors import QuotaStoreUnavailable
from gateway.quotas.layout import SettleOp
from gateway.quotas.outage import Breaker
from gateway.quotas.redis import RedisQuotaStore

log = logging.getLogger(__name__)

#: Queued settlements a reservation carries along in its round trip, at most.
INLINE_SETTLE_MAX = 64
#: How long queued settlements (only those that could not be written at once) wait for a
#: reservation to carry them before a background task sends them.
SETTLE_LINGER_S = 0.005
#: Settlements per background round trip.
BATCH_MAX = 256


class SettleQueue:
    """The failover store's queue of settlements not yet in Redis (see module docstring).

    ``on_failure(what)`` is told when a background send finds Redis unreachable (the
    store counts it for the breaker and logs the breaker opening).
    """

    def __init__(
        self,
        primary: RedisQuotaStore,
        breaker: Breaker,
        max_len: int,
        on_failure: Callable[[str], None],
    ) -> None:
        self.pending: collections.deque[SettleOp] = collections.deque()
        self.dropped = 0
        self._primary = primary
        self._breaker = breaker
        self._max_len = max_len
        self._on_failure = on_failure
        self._drain_task: asyncio.Task[None] | None = None

    def take(self, limit: int) -> list[SettleOp]:
        batch: list[SettleOp] = []
        while self.pending and len(batch) < limit:
            batch.append(self.pending.popleft())
        return batch

    def requeue(self, batch: list[SettleOp]) -> None:
        self.pending.extendleft(reversed(batch))

    def enqueue(self, op: SettleOp) -> None:
        if len(self.pending) >= self._max_len:
            self.pending.popleft()
            self.dropped += 1
            log.error(
                "quota settlement queue full: oldest settlement dropped",
                extra={"dropped": self.dropped},
            )
        self.pending.append(op)

    async def flush(self) -> None:
        """Send everything queued now (raises QuotaStoreUnavailable, queue intact)."""
        while self.pending:
            batch = self.take(BATCH_MAX)
            try:
                await self._primary.settle_many(batch)
            except BaseException:
                self.requeue(batch)
                raise

    def kick(self) -> None:
        """Start sending queued settlements unless that runs already or Redis is out."""
        if self.pending and self._drain_task is None and not self._breaker.is_open:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def drained(self) -> None:
        """Wait until queued settlements are sent, or cannot be (tests, shutdown)."""
        while self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    async def stop(self) -> None:
        """Let the background send in progress finish (closing the store)."""
        task, self._drain_task = self._drain_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(SETTLE_LINGER_S)
            while self.pending and self._breaker.allow():
                try:
                    await self.flush()
                except QuotaStoreUnavailable:
                    self._on_failure("settle")
                    return
                except BaseException:
                    self._breaker.abandon()
                    raise
                self._breaker.success()
        finally:
            self._drain_task = None
