"""The quota store interface used by the admit and settle stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.auth import Principal


@dataclass(frozen=True, slots=True)
class Demand:
    """What a request may consume at most (admission) or did consume (settlement)."""

    tokens: int
    cost_nusd: int


@dataclass(frozen=True, slots=True)
class RateSnapshot:
    """Values for the OpenAI-style ``x-ratelimit-*`` headers."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.remaining_requests or 0))
            out["x-ratelimit-reset-requests"] = f"{self.reset_requests_s or 0:.3f}s"
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.remaining_tokens or 0))
            out["x-ratelimit-reset-tokens"] = f"{self.reset_tokens_s or 0:.3f}s"
        return out


@dataclass(slots=True)
class Reservation:
    """A held admission: released exactly once by ``settle``."""

    request_id: str
    principal: Principal
    demand: Demand
    snapshot: RateSnapshot = field(default_factory=RateSnapshot)
    #: Remaining budget (nano-USD) after this reservation, when the key has a budget.
    budget_remaining_nusd: int | None = None
    settled: bool = False
    store_token: object = None


class QuotaStore(Protocol):
    """Atomic reserve-then-settle of rpm, tpm, concurrency and USD budgets."""

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        """Admit or raise RateLimitError / QuotaExceededError / QuotaStoreUnavailable."""
        ...

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        """Replace the reservation by the actual usage and release its concurrency slot.

        Idempotent: a second call for the same reservation does nothing.
        """
        ...

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        """Smallest remaining budget (day, month, total), or None when unlimited."""
        ...

    async def aclose(self) -> None: ...


class Unlimited:
    """No limits (keys without limits, or quotas disabled)."""

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        return Reservation(request_id, principal, demand)

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        reservation.settled = True

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        return None

    async def aclose(self) -> None:
        return None
