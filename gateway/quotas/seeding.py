"""Putting the ledger's spend back into a Redis that lost it, in the background.

When a reservation reports that the seed marker is gone (a restart without persistence,
a flush, a new Redis), :class:`Seeder` runs :meth:`RedisQuotaStore.seed
<gateway.quotas.redis.RedisQuotaStore.seed>` once in a task: day, month and total spend
come back from the ledger, once across replicas. A failure is logged and tried again
after ``SEED_RETRY_S``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence

from gateway.quotas.redis import RedisQuotaStore
from gateway.quotas.spend import SpendSource

log = logging.getLogger(__name__)

#: After a failed seeding (ledger or Redis down), wait this long before trying again.
SEED_RETRY_S = 30.0


class _NoSpend:
    """The spend source without a ledger: seeding only sets the marker."""

    async def spend_since(self, since: dt.datetime | None) -> Sequence[tuple[str, str | None, int]]:
        return []


class Seeder:
    """Seeds ``primary`` from ``spend_source`` (None: no ledger, only the marker is set)."""

    def __init__(self, primary: RedisQuotaStore, spend_source: SpendSource | None) -> None:
        self.spend_source = spend_source
        #: Times this process seeded Redis.
        self.seeds = 0
        self._primary = primary
        self._task: asyncio.Task[None] | None = None
        self._not_before = 0.0

    def kick(self) -> None:
        """Seed Redis from the ledger in the background (one task; retried after a pause)."""
        if self._task is None and time.monotonic() >= self._not_before:
            self._task = asyncio.get_running_loop().create_task(self.seed())

    async def seed(self) -> None:
        """Put the ledger's spend back into Redis if it lost it (see RedisQuotaStore.seed)."""
        try:
            if await self._primary.is_seeded():
                return
            if await self._primary.seed(self.spend_source or _NoSpend()):
                self.seeds += 1
                if self.spend_source is None:
                    log.info("quota store seeded (no ledger here: no spend to restore)")
                else:
                    log.warning(
                        "quota store had no seed marker (a new Redis, or one that lost its "
                        "data): day, month and total spend restored from the ledger"
                    )
        except Exception as exc:  # a background task: log, and try again later
            self._not_before = time.monotonic() + SEED_RETRY_S
            log.error("quota spend could not be re-seeded", extra={"error": str(exc)[:200]})
        finally:
            self._task = None

    async def stop(self) -> None:
        """Cancel a seeding in progress (closing the store)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
