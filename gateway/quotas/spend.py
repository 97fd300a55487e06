"""Spend as the ledger knows it, for stores that must rebuild their counters.

The local store rebuilds day, month and total spend at start-up; the Redis store seeds
them once when Redis has lost its data (see :meth:`RedisQuotaStore.seed`). Both read the
same sums through a :class:`SpendSource`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, func, select

from gateway.quotas.limits import Windows


class SpendSource(Protocol):
    """Where settled spend is read from (the ledger)."""

    async def spend_since(self, since: dt.datetime | None) -> Sequence[tuple[str, str | None, int]]:
        """``(key_id, team, nano-USD)`` summed per key and team over the requests
        finished at or after ``since`` (``None``: all time)."""
        ...


class LedgerSpend:
    """A :class:`SpendSource` reading the ledger table (in a thread)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def spend_since(self, since: dt.datetime | None) -> Sequence[tuple[str, str | None, int]]:
        return await asyncio.to_thread(self._query, since)

    def dispose(self) -> None:
        self._engine.dispose()

    def _query(self, since: dt.datetime | None) -> list[tuple[str, str | None, int]]:
        from gateway.ledger.models import LedgerRow

        q = select(LedgerRow.key_id, LedgerRow.team, func.sum(LedgerRow.cost_nusd)).group_by(
            LedgerRow.key_id, LedgerRow.team
        )
        if since is not None:
            q = q.where(LedgerRow.finished_at >= since)
        with self._engine.connect() as conn:
            return [(k, t, int(n or 0)) for k, t, n in conn.execute(q)]


@dataclass(slots=True)
class ScopeSpend:
    """Nano-USD spent by one scope in the current UTC day, month, and in total."""

    day: int = 0
    month: int = 0
    total: int = 0


async def spend_by_scope(source: SpendSource, w: Windows) -> dict[str, ScopeSpend]:
    """The ledger's spend per scope id (``k:<key id>`` and ``t:<team>``) as of ``w``."""
    now = dt.datetime.fromtimestamp(w.now, dt.UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    out: dict[str, ScopeSpend] = {}
    for field, since in (("day", day_start), ("month", month_start), ("total", None)):
        for key_id, team, nusd in await source.spend_since(since):
            ids = [f"k:{key_id}"] + ([f"t:{team}"] if team is not None else [])
            for scope_id in ids:
                s = out.setdefault(scope_id, ScopeSpend())
                setattr(s, field, getattr(s, field) + int(nusd))
    return out
