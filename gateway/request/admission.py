"""Admission: parse what we need, size the worst case, price it, reserve it.

The prompt is sized by an upper bound that cannot be below the engine's count
(:mod:`gateway.prompt_bound`), on every model the request may reach, so the reservation
is a true worst case; the settlement then brings it down to the engine's usage.

A request to an explicit model name reserves the worst case over its tier and the one
fallback may reach, and is refused (429) when that is over budget. A request to an
``auto`` model reserves at the tier its policy chooses, or at a cheaper tier when only
that fits the key's budget (:mod:`gateway.request.tiering`).
"""

from __future__ import annotations

from gateway.auth import Principal
from gateway.config import ServerSettings
from gateway.errors import InvalidRequestError
from gateway.protocol import Endpoint, parse_request
from gateway.quotas.base import Demand, QuotaStore
from gateway.request import route
from gateway.request.context import Admitted, RequestContext
from gateway.request.metering import Meter
from gateway.request.tiering import TierReserver
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.tokens import TokenCounter


class Admission:
    """Turns an authenticated request body into an :class:`Admitted` request, or refuses."""

    def __init__(
        self,
        *,
        server: ServerSettings,
        router: Router,
        pool: EnginePool,
        tokens: TokenCounter,
        meter: Meter,
        quotas: QuotaStore,
    ) -> None:
        self._server = server
        self._router = router
        self._pool = pool
        self._tokens = tokens
        self._meter = meter
        self._quotas = quotas
        self._tiers = TierReserver(router=router, pool=pool, quotas=quotas)

    async def admit(self, ctx: RequestContext, principal: Principal, body: bytes) -> Admitted:
        s = self._server
        req = parse_request(ctx.endpoint, body, max_messages=s.max_messages, max_n=s.max_n)
        model = self._router.resolve(req.model)
        principal.check_model(model.name)
        self._router.check_kind(model, ctx.endpoint is Endpoint.EMBEDDINGS)
        ctx.model = model
        if req.stream and ctx.endpoint is Endpoint.EMBEDDINGS:
            raise InvalidRequestError("Embeddings cannot be streamed.", param="stream")
        requested = req.requested_max_tokens
        if requested is not None and requested > s.max_tokens_cap:
            raise InvalidRequestError(
                f"max_tokens={requested} is above this gateway's limit of {s.max_tokens_cap}.",
                param="max_tokens",
            )
        tiers = self._router.reachable_tiers(model)
        bound = self._tokens.prompt_bound(self._models(tiers), req)
        # What is billed if the engine reports no usage: the exact count when there is
        # one, else today's estimate (the bound would over-bill).
        prompt = (
            bound.upper if bound.exact else self._tokens.count_prompt(self._token_model(tiers), req)
        )
        embeddings = ctx.endpoint is Endpoint.EMBEDDINGS

        def size(reach: list[str]) -> tuple[Demand, int]:
            """The worst case over the tiers ``reach``: the demand and its output tokens."""
            if embeddings:
                max_tokens = 0
            elif requested is not None:
                max_tokens = requested * req.n
            else:
                # The engine's room is the context less the real prompt: size it with
                # the prompt's lower bound, so the output is not under-reserved either.
                max_tokens = self._default_max_tokens(reach, bound.lower) * req.n
            cost = self._meter.worst_case(reach, bound.upper, max_tokens)
            return Demand(tokens=bound.upper + max_tokens, cost_nusd=cost), max_tokens

        if model.auto and not embeddings:
            f = route.features_of(req, principal, prompt, self._router)
            plan, reservation, max_tokens = await self._tiers.reserve(
                principal,
                ctx.request_id,
                model=model,
                f=f,
                tiers=tiers,
                size=size,
                context_tokens=bound.lower + (requested or 1),
            )
            return Admitted(principal, req, model, prompt, max_tokens, reservation, plan)
        demand, max_tokens = size(tiers)
        reservation = await self._quotas.reserve(principal, ctx.request_id, demand)
        return Admitted(principal, req, model, prompt, max_tokens, reservation)

    def _models(self, tiers: list[str]) -> list[str]:
        """Every upstream model the request may reach (each bounds its own prompt)."""
        by_tier = self._pool.entries_by_tier
        return list(dict.fromkeys(e.model for t in tiers for e in by_tier.get(t, ())))

    def _token_model(self, tiers: list[str]) -> str:
        entries = self._pool.entries_by_tier.get(tiers[0]) if tiers else None
        return entries[0].model if entries else ""

    def _default_max_tokens(self, tiers: list[str], prompt_tokens: int) -> int:
        """With no max_tokens, the most the longest context can still produce."""
        cap = self._server.max_tokens_cap
        lens = [
            e.max_model_len
            for t in tiers
            for e in self._pool.entries_by_tier.get(t, ())
            if e.max_model_len
        ]
        if lens:
            return max(1, min(cap, max(lens) - prompt_tokens))
        return cap
