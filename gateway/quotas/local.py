"""In-process quota store: the embedded default for a single gateway process.

Same checks, order and errors as the Redis store (see :mod:`gateway.quotas.limits`).
It is exact because a reservation runs without an ``await`` between its check and its
update, so the event loop makes it atomic. Spend survives a restart by being rebuilt
from the ledger at start-up (:meth:`LocalQuotaStore.load_spend`).

It also serves as the Redis store's fallback limiter during an outage, with rate limits
divided by the replica count and budgets left to the failure policy.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.auth import Principal
from gateway.config import QuotaSettings
from gateway.quotas.base import Demand, Reservation
from gateway.quotas.limits import (
    Scope,
    ScopeState,
    Windows,
    budget_remaining,
    refusal,
    scopes_of,
    snapshot,
    too_large,
    violation,
)
from gateway.quotas.spend import SpendSource, spend_by_scope

Clock = Callable[[], float]


@dataclass(slots=True)
class _Hold:
    tokens: int
    cost: int
    minute: int
    day: str
    month: str
    expires: float


@dataclass(slots=True)
class _Counters:
    minute: int = -1
    requests: int = 0
    tokens: int = 0
    #: hold id -> hold, in insertion order, which is expiry order (one TTL per store).
    holds: dict[str, _Hold] = field(default_factory=dict)
    #: "d:YYYYMMDD" / "m:YYYYMM" / "t" -> nano-USD, holds included.
    spend: dict[str, int] = field(default_factory=dict)
    held: int = 0

    def roll(self, w: Windows) -> None:
        if self.minute != w.minute:
            self.minute, self.requests, self.tokens = w.minute, 0, 0
        if f"d:{w.day}" not in self.spend:
            # Keep today and yesterday (a hold may settle just after midnight).
            for k in [k for k in self.spend if k[0] == "d" and k < f"d:{w.day}"][:-1]:
                del self.spend[k]
            self.spend[f"d:{w.day}"] = 0
        if f"m:{w.month}" not in self.spend:
            for k in [k for k in self.spend if k[0] == "m" and k < f"m:{w.month}"][:-1]:
                del self.spend[k]
            self.spend[f"m:{w.month}"] = 0

    def purge(self, now: float) -> None:
        while self.holds:
            hold_id = next(iter(self.holds))
            hold = self.holds[hold_id]
            if hold.expires > now:
                return
            self.release(hold_id, 0, 0, None)

    def release(self, hold_id: str, tokens: int, cost: int, w: Windows | None) -> bool:
        """Replace a hold by actual usage (``w``: the settlement's windows)."""
        hold = self.holds.pop(hold_id, None)
        if hold is None:
            return False
        if hold.minute == self.minute:
            self.tokens += tokens - hold.tokens
        self.held -= hold.cost
        self.add(hold.day, hold.month, -hold.cost)
        if w is not None:
            self.add(w.day, w.month, cost)
        return True

    def add(self, day: str, month: str, nusd: int) -> None:
        for k in (f"d:{day}", f"m:{month}"):
            if k in self.spend:
                self.spend[k] += nusd
        self.spend["t"] = self.spend.get("t", 0) + nusd

    def state(self, w: Windows) -> ScopeState:
        return ScopeState(
            requests=self.requests,
            tokens=self.tokens,
            in_flight=len(self.holds),
            spend_daily=self.spend.get(f"d:{w.day}", 0),
            spend_monthly=self.spend.get(f"m:{w.month}", 0),
            spend_total=self.spend.get("t", 0),
            held=self.held,
        )


@dataclass(frozen=True, slots=True)
class LocalHold:
    """The store token of a local reservation."""

    hold_id: str
    scope_ids: tuple[str, ...]


class LocalQuotaStore:
    """Quota counters in this process's memory (see module docstring)."""

    def __init__(
        self,
        settings: QuotaSettings | None = None,
        *,
        clock: Clock = time.time,
        rate_divisor: int | None = None,
    ) -> None:
        """``rate_divisor`` set: act as the fallback limiter (rates / divisor, no budgets)."""
        settings = settings or QuotaSettings.model_validate({})
        self._ttl = settings.reservation_ttl_s
        self._clock = clock
        self._divisor = rate_divisor
        self._counters: dict[str, _Counters] = {}

    def scopes(self, principal: Principal) -> tuple[Scope, ...]:
        scopes = scopes_of(principal)
        if self._divisor is not None:
            return tuple(s.scaled_rates(self._divisor) for s in scopes)
        return scopes

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        hold_id = f"{request_id}~{secrets.token_hex(6)}"
        return self.reserve_now(principal, request_id, hold_id, demand)

    def reserve_now(
        self, principal: Principal, request_id: str, hold_id: str, demand: Demand
    ) -> Reservation:
        """Check and hold in one step (no await: atomic on the event loop)."""
        scopes = self.scopes(principal)
        err = too_large(scopes, demand)
        if err is not None:
            raise err
        w = Windows.at(self._clock())
        counters = [self._scope(s.id, w) for s in scopes]
        states = [c.state(w) for c in counters]
        for scope, state in zip(scopes, states, strict=True):
            kind = violation(scope, state, demand)
            if kind is not None:
                raise refusal(scope, kind, state, demand, w, snapshot(scopes, states, w))
        expires = w.now + self._ttl
        for c in counters:
            c.requests += 1
            c.tokens += demand.tokens
            c.holds[hold_id] = _Hold(
                demand.tokens, demand.cost_nusd, w.minute, w.day, w.month, expires
            )
            c.held += demand.cost_nusd
            c.add(w.day, w.month, demand.cost_nusd)
        states = [c.state(w) for c in counters]
        return Reservation(
            request_id=request_id,
            principal=principal,
            demand=demand,
            snapshot=snapshot(scopes, states, w),
            budget_remaining_nusd=budget_remaining(scopes, states),
            store_token=LocalHold(hold_id, tuple(s.id for s in scopes)),
        )

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        token = reservation.store_token
        if not isinstance(token, LocalHold):
            return
        w = Windows.at(self._clock())
        for scope_id in token.scope_ids:
            c = self._counters.get(scope_id)
            if c is None:
                c = self._scope(scope_id, w)
            c.roll(w)
            # A hold already gone was settled before, or outlived its TTL (longer than
            # any request may run): either way, like the Redis store, nothing to do.
            c.release(token.hold_id, actual.tokens, actual.cost_nusd, w)

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        scopes = self.scopes(principal)
        w = Windows.at(self._clock())
        return budget_remaining(scopes, [self._scope(s.id, w).state(w) for s in scopes])

    async def spend_totals(self, period: str) -> dict[str, int]:
        """Settled nano-USD per key id in the current UTC ``period`` ("day" or "month"),
        for reconciliation with the ledger (holds of requests in flight left out)."""
        w = Windows.at(self._clock())
        label = w.day if period == "day" else w.month
        bucket = f"{period[0]}:{label}"
        out: dict[str, int] = {}
        for scope_id, c in self._counters.items():
            if not scope_id.startswith("k:"):
                continue
            c.purge(w.now)
            held = sum(
                h.cost for h in c.holds.values() if (h.day if period == "day" else h.month) == label
            )
            spent = c.spend.get(bucket, 0) - held
            if spent:
                out[scope_id[2:]] = spent
        return out

    async def load_spend(self, source: SpendSource) -> None:
        """Rebuild day, month and total spend per key and team from the ledger."""
        w = Windows.at(self._clock())
        for scope_id, spent in (await spend_by_scope(source, w)).items():
            c = self._scope(scope_id, w)
            for bucket, nusd in ((f"d:{w.day}", spent.day), (f"m:{w.month}", spent.month),
                                 ("t", spent.total)):  # fmt: skip
                c.spend[bucket] = c.spend.get(bucket, 0) + nusd

    async def aclose(self) -> None:
        return None

    def status(self) -> dict[str, object]:
        return {"backend": "local", "scopes": len(self._counters)}

    def _scope(self, scope_id: str, w: Windows) -> _Counters:
        c = self._counters.get(scope_id)
        if c is None:
            c = self._counters[scope_id] = _Counters()
        c.roll(w)
        c.purge(w.now)
        return c
