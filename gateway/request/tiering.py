"""Reserving at the tier the policy chooses under the key's budget (``auto`` models).

The problem. Admission used to reserve the worst case at the dearest tier an ``auto``
request could reach, before routing ran; a key that could afford the small tier but not
the large one got 429 where the policy would have sent it small. Admission and routing
must agree on the tier, and on what was reserved for it.

The order, for an ``auto`` model:

1. The policy chooses a tier from the request alone (the key's remaining budget is not
   known yet): ``T, reason``.
2. Admission reserves the worst case over ``T`` and the tier fallback may move it to
   from ``T`` (:meth:`Router.reach`): for two tiers with fallback on that is the large
   tier's worst case, as before; with fallback off, ``T``'s alone.
3. If that reservation is refused *for the budget* (:class:`QuotaExceededError`; a rate,
   token or concurrency refusal is not helped by a cheaper tier), each cheaper tier of
   the model's kind that can hold the request's context is tried in turn, dearest first,
   reserving the worst case at that tier alone. The first to fit is the rescue: the
   route reason gains ``;budget:rescue`` (``x-tollgate-route-reason``). A key whose
   routing forces a tier is not rescued.
4. If every tier is refused, the cheapest tier's refusal is the 429, saying so.

Why retry rather than read the remaining budget first: a read and the reservation that
follows are two steps, and between them other requests on any replica may spend the
budget, so the read would be stale. Each reservation is one Lua script, atomic per key
(:mod:`gateway.quotas.redis`), and a refused one leaves the counters as they were, so
trying the dearer tier and then the cheaper one is exact under any concurrency, and it
costs a second round trip only when the first is refused.

What the reservation covers (:attr:`TierPlan.covered`) bounds the route: the route stage
sends the request, fallback included, only to tiers whose worst case (cost and tokens)
is within what was reserved. A rescued request cannot fall back to the dearer tier, so
it never spends more than was reserved. A request that was not rescued is routed again
once its reservation reports the remaining budget (``budget:low`` needs it), within the
same cover.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.auth import Principal
from gateway.config import ModelSettings
from gateway.errors import QuotaExceededError
from gateway.quotas.base import Demand, QuotaStore, Reservation
from gateway.routing.features import Features
from gateway.routing.plan import TierPlan
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router

#: Appended to the route reason of a request sent to a cheaper tier to fit its budget.
RESCUE_REASON = "budget:rescue"

#: ``tiers -> (demand, max_tokens)``: the worst case of a request over those tiers.
Sizer = Callable[[list[str]], tuple[Demand, int]]


class TierReserver:
    """Reserves an ``auto`` request at the policy's tier, or rescues it to a cheaper one."""

    def __init__(self, *, router: Router, pool: EnginePool, quotas: QuotaStore) -> None:
        self._router = router
        self._pool = pool
        self._quotas = quotas

    async def reserve(
        self,
        principal: Principal,
        request_id: str,
        *,
        model: ModelSettings,
        f: Features,
        tiers: list[str],
        size: Sizer,
        context_tokens: int,
    ) -> tuple[TierPlan, Reservation, int]:
        """Return the plan, the reservation and the output tokens reserved, or raise.

        ``tiers`` are every tier the model may use; ``context_tokens`` the least context
        an engine needs to take the request (the rescue tier must hold it).
        """
        tier, reason, score = self._router.choose(f)
        reach = self._router.reach(model, tier)
        demand, max_tokens = size(reach)
        try:
            res = await self._quotas.reserve(principal, request_id, demand)
        except QuotaExceededError as err:
            refused = err
        else:
            return TierPlan(tier, reason, frozenset(reach), False, f, score), res, max_tokens
        if f.key_defaults and f.key_defaults.get("force_tier"):
            raise refused
        tried = tier
        for cheaper, cheaper_demand, cheaper_max in self._cheaper(
            tier, tiers, demand, size, context_tokens
        ):
            try:
                res = await self._quotas.reserve(principal, request_id, cheaper_demand)
            except QuotaExceededError as err:
                refused, tried = err, cheaper
                continue
            covered = self._covered(cheaper, tiers, cheaper_demand, size)
            plan = TierPlan(cheaper, f"{reason};{RESCUE_REASON}", covered, True, f, score)
            return plan, res, cheaper_max
        if tried == tier:
            raise refused
        raise QuotaExceededError(
            f"Even the cheapest tier ({tried}) is over budget. {refused.message}",
            code=refused.code,
            headers=refused.headers,
        )

    def _cheaper(
        self, tier: str, tiers: list[str], refused: Demand, size: Sizer, context_tokens: int
    ) -> list[tuple[str, Demand, int]]:
        """Tiers that cost less than the refused demand and can hold the request, dearest
        first (the nearest to what the policy chose)."""
        out: list[tuple[str, Demand, int]] = []
        for t in tiers:
            if t == tier or not self._fits(t, context_tokens):
                continue
            demand, max_tokens = size([t])
            if demand.cost_nusd < refused.cost_nusd:
                out.append((t, demand, max_tokens))
        out.sort(key=lambda c: c[1].cost_nusd, reverse=True)
        return out

    @staticmethod
    def _covered(tier: str, tiers: list[str], reserved: Demand, size: Sizer) -> frozenset[str]:
        """``tier`` and every other tier whose worst case is within ``reserved``."""
        covered = {tier}
        for t in tiers:
            demand, _ = size([t])
            if demand.cost_nusd <= reserved.cost_nusd and demand.tokens <= reserved.tokens:
                covered.add(t)
        return frozenset(covered)

    def _fits(self, tier: str, tokens: int) -> bool:
        """Whether some engine of ``tier`` has a context long enough for ``tokens``."""
        for e in self._pool.entries_by_tier.get(tier, ()):
            if e.max_model_len is None or tokens <= e.max_model_len:
                return True
        return False
