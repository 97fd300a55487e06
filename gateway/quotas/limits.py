"""What the quota stores share: scopes, windows, and the wording of refusals.

A request is checked against one or two *scopes*: its key, and its team when it has
one. Each scope counts, per fixed window:

* requests admitted in the current UTC minute (``rpm``),
* tokens reserved or used in the current UTC minute (``tpm``: prompt + max_tokens at
  admission, settled to prompt + completion),
* requests in flight (``concurrency``), each a *hold* with an expiry,
* nano-USD spent in the current UTC day, the current UTC month and in total (budgets);
  in-flight holds count at their worst-case cost until settled.

Windows are fixed, keyed by the minute/day/month number. A fixed window is exact (a
counter per window, no estimate) and costs O(1) memory and time per scope; the price is
that a key may use up to twice its rpm across a minute boundary. A sliding-window log
would remove that burst but costs a sorted-set entry per request. Budgets are calendar
periods anyway, so fixed windows are what users expect there.

The Redis store (Lua) and the local store (Python) implement the same checks in the same
order; the code here turns their counters into headers and errors, so both speak alike.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass

from gateway.auth import Limits, Principal
from gateway.errors import GatewayError, QuotaExceededError, RateLimitError, with_retry_after
from gateway.quotas.base import Demand, RateSnapshot

NANO = 1_000_000_000
#: Retry-After for a spent total budget: waiting does not help, an admin must raise it.
TOTAL_BUDGET_RETRY_S = 86_400.0

#: Check order; the first violated limit is the one reported.
KINDS = ("budget_total", "budget_monthly", "budget_daily", "concurrency", "rpm", "tpm")
BUDGET_KINDS = frozenset(KINDS[:3])
RATE_KINDS = frozenset(KINDS[3:])

_RATE_NAMES = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrency": "concurrent requests",
}
_BUDGET_NAMES = {
    "budget_daily": "daily",
    "budget_monthly": "monthly",
    "budget_total": "total",
}


@dataclass(frozen=True, slots=True)
class Scope:
    """One set of counters and the limits that apply to it (``None``: unlimited)."""

    id: str
    label: str
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget_daily: int | None = None
    budget_monthly: int | None = None
    budget_total: int | None = None

    @classmethod
    def of(cls, id: str, label: str, limits: Limits) -> Scope:
        return cls(
            id=id,
            label=label,
            rpm=limits.rpm,
            tpm=limits.tpm,
            concurrency=limits.concurrency,
            budget_daily=usd_to_nusd(limits.budget_daily_usd),
            budget_monthly=usd_to_nusd(limits.budget_monthly_usd),
            budget_total=usd_to_nusd(limits.budget_total_usd),
        )

    def limit(self, kind: str) -> int | None:
        value: int | None = getattr(self, kind)
        return value

    @property
    def has_budget(self) -> bool:
        return any(getattr(self, k) is not None for k in BUDGET_KINDS)

    @property
    def has_rates(self) -> bool:
        return any(getattr(self, k) is not None for k in RATE_KINDS)

    def scaled_rates(self, divisor: int) -> Scope:
        """Rate limits divided among ``divisor`` replicas (for the local fallback)."""

        def part(v: int | None) -> int | None:
            return None if v is None else max(1, v // divisor)

        return Scope(
            self.id,
            self.label,
            rpm=part(self.rpm),
            tpm=part(self.tpm),
            concurrency=part(self.concurrency),
        )


@dataclass(slots=True)
class ScopeState:
    """One scope's counters, before (refusal) or after (admission) a reservation."""

    requests: int = 0
    tokens: int = 0
    in_flight: int = 0
    spend_daily: int = 0
    spend_monthly: int = 0
    spend_total: int = 0
    #: Worst-case cost of the in-flight holds, included in the spend figures.
    held: int = 0

    def used(self, kind: str) -> int:
        value: int = getattr(self, _USED[kind])
        return value


#: The ScopeState counter each limit kind is checked against.
_USED = {
    "rpm": "requests",
    "tpm": "tokens",
    "concurrency": "in_flight",
    "budget_daily": "spend_daily",
    "budget_monthly": "spend_monthly",
    "budget_total": "spend_total",
}


@functools.lru_cache(maxsize=4)
def _labels(minute: int) -> tuple[str, str]:
    """The UTC day and month a minute falls in (days start on a minute: cacheable;
    formatting them cost 8 µs a call, twice per request)."""
    t = dt.datetime.fromtimestamp(minute * 60, dt.UTC)
    return t.strftime("%Y%m%d"), t.strftime("%Y%m")


@dataclass(frozen=True, slots=True)
class Windows:
    """The fixed windows ``now`` falls in, and how long until each resets."""

    now: float
    minute: int
    day: str
    month: str

    @classmethod
    def at(cls, now: float) -> Windows:
        minute = int(now // 60)
        return cls(now, minute, *_labels(minute))

    @property
    def minute_reset_s(self) -> float:
        return (self.minute + 1) * 60 - self.now

    @property
    def day_reset_s(self) -> float:
        t = dt.datetime.fromtimestamp(self.now, dt.UTC)
        midnight = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
        return midnight.timestamp() - self.now

    @property
    def month_reset_s(self) -> float:
        t = dt.datetime.fromtimestamp(self.now, dt.UTC)
        year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
        return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() - self.now

    def reset_s(self, kind: str) -> float:
        if kind in ("rpm", "tpm"):
            return self.minute_reset_s
        if kind == "budget_daily":
            return self.day_reset_s
        if kind == "budget_monthly":
            return self.month_reset_s
        if kind == "budget_total":
            return TOTAL_BUDGET_RETRY_S
        return 1.0


def usd_to_nusd(usd: float | None) -> int | None:
    return None if usd is None else round(usd * NANO)


def scopes_of(principal: Principal) -> tuple[Scope, ...]:
    """The key scope, plus the team scope when the principal belongs to a team.

    Every scope is counted even without limits, so a limit set later starts from the
    true spend of the current period.
    """
    key = Scope.of(f"k:{principal.key_id}", "this API key", principal.limits)
    if principal.team is None:
        return (key,)
    team = Scope.of(
        f"t:{principal.team}", f"team '{principal.team}'", principal.team_limits or Limits()
    )
    return (key, team)


def violation(scope: Scope, state: ScopeState, demand: Demand) -> str | None:
    """The first limit of ``scope`` that admitting ``demand`` would break (``KINDS`` order)."""
    for kind in KINDS:
        limit = scope.limit(kind)
        if limit is None:
            continue
        used = state.used(kind)
        if kind in BUDGET_KINDS:
            if used >= limit or used + demand.cost_nusd > limit:
                return kind
        elif kind == "tpm":
            if used + demand.tokens > limit:
                return kind
        elif used + 1 > limit:
            return kind
    return None


def too_large(scopes: tuple[Scope, ...], demand: Demand) -> GatewayError | None:
    """A request whose tokens exceed a whole minute's allowance can never be admitted."""
    for scope in scopes:
        if scope.tpm is not None and demand.tokens > scope.tpm:
            return RateLimitError(
                f"Request too large for tokens per minute ({scope.label}): limit "
                f"{scope.tpm}, requested {demand.tokens} (prompt + max_tokens). "
                "Lower max_tokens or shorten the prompt.",
                code="rate_limit_exceeded",
                headers={"x-tollgate-limit": "tpm"},
            )
    return None


def refusal(
    scope: Scope,
    kind: str,
    state: ScopeState,
    demand: Demand,
    windows: Windows,
    snapshot: RateSnapshot,
) -> GatewayError:
    """The 429 for a refused reservation: names the limit, says when to retry."""
    limit = scope.limit(kind)
    assert limit is not None
    used = state.used(kind)
    if kind in BUDGET_KINDS:
        # Spend held by in-flight requests comes back when they settle: retry soon.
        settled = used - state.held
        frees_up = state.held > 0 and settled + demand.cost_nusd <= limit
        wait = 1.0 if frees_up else windows.reset_s(kind)
        period = _BUDGET_NAMES[kind]
        msg = (
            f"Budget exhausted for {period} spend ({scope.label}): limit {_usd(limit)}, "
            f"used {_usd(used)}"
            + (f" (of which {_usd(state.held)} held by requests in flight)" if state.held else "")
            + f", this request may cost up to {_usd(demand.cost_nusd)}. "
        )
        if frees_up:
            msg += "Try again when the requests in flight finish."
        elif kind == "budget_total":
            msg += "An admin must raise the total budget."
        else:
            msg += f"The budget resets in {_duration(wait)}."
        err: GatewayError = QuotaExceededError(msg)
    else:
        wait = windows.reset_s(kind)
        name = _RATE_NAMES[kind]
        if kind == "tpm":
            detail = f"limit {limit}, used {used}, requested {demand.tokens}"
        elif kind == "concurrency":
            detail = f"limit {limit}, in flight {used}"
        else:
            detail = f"limit {limit}, used {used}"
        tail = (
            "Try again when a request in flight finishes."
            if kind == "concurrency"
            else f"Try again in {math.ceil(wait)}s."
        )
        err = RateLimitError(f"Rate limit reached for {name} ({scope.label}): {detail}. {tail}")
    err.headers.update(snapshot.headers())
    err.headers["x-tollgate-limit"] = kind
    return with_retry_after(err, wait)


def snapshot(scopes: tuple[Scope, ...], states: list[ScopeState], windows: Windows) -> RateSnapshot:
    """The tightest rpm and tpm figures over the scopes, for ``x-ratelimit-*`` headers."""
    req: tuple[int, int] | None = None
    tok: tuple[int, int] | None = None
    for scope, state in zip(scopes, states, strict=True):
        if scope.rpm is not None:
            cand = (scope.rpm - state.requests, scope.rpm)
            req = cand if req is None or cand < req else req
        if scope.tpm is not None:
            cand = (scope.tpm - state.tokens, scope.tpm)
            tok = cand if tok is None or cand < tok else tok
    reset = windows.minute_reset_s
    return RateSnapshot(
        limit_requests=req[1] if req else None,
        remaining_requests=max(0, req[0]) if req else None,
        reset_requests_s=reset if req else None,
        limit_tokens=tok[1] if tok else None,
        remaining_tokens=max(0, tok[0]) if tok else None,
        reset_tokens_s=reset if tok else None,
    )


def budget_remaining(scopes: tuple[Scope, ...], states: list[ScopeState]) -> int | None:
    """Smallest remaining budget over the scopes and periods, or None when unlimited."""
    best: int | None = None
    for scope, state in zip(scopes, states, strict=True):
        for limit, used in (
            (scope.budget_daily, state.spend_daily),
            (scope.budget_monthly, state.spend_monthly),
            (scope.budget_total, state.spend_total),
        ):
            if limit is not None:
                left = max(0, limit - used)
                best = left if best is None or left < best else best
    return best


def _usd(nusd: int) -> str:
    return f"${nusd / NANO:.6f}".rstrip("0").rstrip(".") if nusd else "$0"


def _duration(seconds: float) -> str:
    s = max(1, math.ceil(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h {s % 3600 // 60}m"
