"""Reconciliation: do the quota store's spend counters agree with the ledger?

The quota store counts each key's spend per budget period (it settles every request at
the exact cost the ledger records), so over the current UTC day or month the two must
match to the nano-dollar. A difference means a lost or doubled settlement, a lost
ledger record, or a leaked reservation (reliability items 8 and 9).

Transient differences are expected for requests in flight (reserved, not yet settled)
and for records still in the writer's queue; run it again, or allow a tolerance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.ledger.money import format_usd
from gateway.ledger.periods import period_bounds
from gateway.ledger.reports import Reports

Period = Literal["day", "month"]


class SpendCounters(Protocol):
    """What a quota store has counted as spent, per key id, in the current period.

    Implemented by the quota stores (local and Redis); amounts are nano-USD, the same
    integers the pipeline settles with.
    """

    async def spend_totals(self, period: Period) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class KeyDifference:
    """One key's spend on each side."""

    key_id: str
    ledger_nusd: int
    counter_nusd: int

    @property
    def difference_nusd(self) -> int:
        """Counter minus ledger: positive when the quota store counted more."""
        return self.counter_nusd - self.ledger_nusd

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "ledger_nusd": self.ledger_nusd,
            "counter_nusd": self.counter_nusd,
            "difference_nusd": self.difference_nusd,
            "ledger_usd": format_usd(self.ledger_nusd, 9),
            "counter_usd": format_usd(self.counter_nusd, 9),
        }


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The outcome: every key seen on either side, and which ones differ."""

    period: Period
    start: dt.datetime
    end: dt.datetime
    keys: list[KeyDifference]
    tolerance_nusd: int

    @property
    def mismatches(self) -> list[KeyDifference]:
        return [k for k in self.keys if abs(k.difference_nusd) > self.tolerance_nusd]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def ledger_total_nusd(self) -> int:
        return sum(k.ledger_nusd for k in self.keys)

    @property
    def counter_total_nusd(self) -> int:
        return sum(k.counter_nusd for k in self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "ok": self.ok,
            "tolerance_nusd": self.tolerance_nusd,
            "ledger_total_nusd": self.ledger_total_nusd,
            "counter_total_nusd": self.counter_total_nusd,
            "keys": [k.to_dict() for k in self.keys],
            "mismatches": [k.key_id for k in self.mismatches],
        }


def compare(
    period: Period,
    start: dt.datetime,
    end: dt.datetime,
    ledger: dict[str, int],
    counters: dict[str, int],
    tolerance_nusd: int = 0,
) -> Reconciliation:
    keys = [
        KeyDifference(k, ledger.get(k, 0), counters.get(k, 0))
        for k in sorted(set(ledger) | set(counters))
    ]
    return Reconciliation(period, start, end, keys, tolerance_nusd)


async def reconcile(
    reports: Reports,
    counters: SpendCounters,
    period: Period = "day",
    *,
    tolerance_nusd: int = 0,
    now: dt.datetime | None = None,
) -> Reconciliation:
    """Compare the counters with the ledger over the current ``period``."""
    start, end = period_bounds(period, now or dt.datetime.now(dt.UTC))
    counted = await counters.spend_totals(period)
    ledger = await asyncio.to_thread(reports.spend_by_key, start, end)
    return compare(period, start, end, ledger, counted, tolerance_nusd)
