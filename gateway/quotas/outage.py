"""Redis out of reach: the breaker that notices, and the failure policy meanwhile.

The :class:`Breaker` opens after ``quotas.breaker_failures`` consecutive failures, for
``quotas.breaker_open_s``, then lets one probe through and closes when Redis answers.
While it is open, :func:`degraded_reservation` admits a request by the policy per limit
kind: budgets (``on_store_error_budgets``) fail closed by default, rate limits
(``on_store_error_rates``) fall back by default to an in-process limiter. The store that
uses both is :class:`~gateway.quotas.fallback.FailoverQuotaStore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth import Principal
from gateway.config import QuotaSettings
from gateway.errors import QuotaStoreUnavailable, with_retry_after
from gateway.quotas.base import Demand, RateSnapshot, Reservation
from gateway.quotas.limits import scopes_of
from gateway.quotas.local import LocalQuotaStore


class Breaker:
    """Consecutive-failure breaker: closed → open for ``open_s`` → half-open (one probe)."""

    def __init__(
        self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether a call may go to Redis now (claims the probe when half-open)."""
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self._open_s:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()

    def abandon(self) -> None:
        """A call was cancelled before it could tell: free the probe slot."""
        self._probing = False

    def retry_after_s(self) -> float:
        if self._opened_at is None:
            return self._open_s
        return max(1.0, self._open_s - (self._clock() - self._opened_at))


@dataclass(frozen=True, slots=True)
class Degraded:
    """The store token of a reservation admitted while Redis was unreachable."""

    hold_id: str
    scope_ids: tuple[str, ...]
    #: The local fallback limiter's reservation, when rate limits applied.
    local: Reservation | None


def degraded_reservation(
    settings: QuotaSettings,
    fallback: LocalQuotaStore,
    retry_after_s: float,
    principal: Principal,
    request_id: str,
    hold_id: str,
    demand: Demand,
) -> Reservation:
    """Admit without Redis by the failure policy, or raise 503 + Retry-After."""
    scopes = scopes_of(principal)
    s = settings
    if s.on_store_error_budgets == "fail_closed" and any(x.has_budget for x in scopes):
        raise with_retry_after(
            QuotaStoreUnavailable(
                "The quota store is unreachable, so requests from keys with a spend "
                "budget are refused until it is back."
            ),
            retry_after_s,
        )
    local: Reservation | None = None
    if any(x.has_rates for x in scopes):
        if s.on_store_error_rates == "fail_closed":
            raise with_retry_after(
                QuotaStoreUnavailable(
                    "The quota store is unreachable, so rate-limited requests are "
                    "refused until it is back."
                ),
                retry_after_s,
            )
        if s.on_store_error_rates == "local":
            local = fallback.reserve_now(principal, request_id, hold_id, demand)
    return Reservation(
        request_id=request_id,
        principal=principal,
        demand=demand,
        snapshot=local.snapshot if local is not None else RateSnapshot(),
        budget_remaining_nusd=None,
        store_token=Degraded(hold_id, tuple(x.id for x in scopes), local),
    )
