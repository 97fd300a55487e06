"""The route stage: model name → tier (fixed or by policy) → ordered engine candidates.

:meth:`Router.decide` is on every request's path and is kept cheap (see
``bench/routing_bench.py``): a policy decision, then for the chosen tier a version draw
(rollouts), then replica ordering (:class:`Balancer`). When fallback is on, the other
tier's engines follow the chosen tier's in the candidate list; a request that ends up
there is recorded with ``;fallback_from:TIER``.

For an ``auto`` model, admission chooses the tier first (:meth:`Router.choose`) and
reserves for it; :meth:`Router.decide` then keeps the request, fallback included, within
the tiers that reservation covers (:class:`~gateway.routing.plan.TierPlan`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import ModelSettings, Settings
from gateway.errors import EngineUnavailableError, InvalidRequestError, NotFoundError
from gateway.routing.balancer import Balancer, prefix_hash
from gateway.routing.features import Features, Policy, Score, ScoringPolicy
from gateway.routing.health import Breakers
from gateway.routing.learned import LearnedPolicy
from gateway.routing.plan import TierPlan
from gateway.routing.policies import build_policy, learned_of, scores
from gateway.routing.pool import EnginePool
from gateway.routing.prefix_index import prefix_blocks
from gateway.routing.rollout import TierRollout
from gateway.routing.scorer import ReplicaScorer
from gateway.upstream.engine import Engine


@dataclass(slots=True)
class RouteDecision:
    """Where one request goes and why."""

    tier: str
    reason: str
    #: Engines to try, best first (fallback tier's engines appended when allowed).
    candidates: list[Engine] = field(default_factory=list)
    #: A shadow engine to mirror this request to (answer discarded), if sampled.
    shadow: Engine | None = None
    #: The replica choice's note for the route reason (``scored`` balancer), e.g.
    #: ``replica=score:0.82,w:1/0.5/0.25/0.5``. Kept out of ``reason``, which labels metrics.
    replica_note: str = ""
    #: The learned policy's score, when it decided (recorded on the ledger).
    score: Score | None = None


class Router:
    """Resolves client-facing model names and chooses engines."""

    def __init__(
        self,
        settings: Settings,
        pool: EnginePool,
        breakers: Breakers,
        policy: Policy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._breakers = breakers
        self._settings = settings
        routing = settings.routing
        self._models: dict[str, ModelSettings] = {}
        for m in settings.models:
            self._models[m.name] = m
            for alias in m.aliases:
                self._models[alias] = m
        self._policy = policy or build_policy(routing.policy, routing.params)
        self._scoring: ScoringPolicy | None = self._policy if scores(self._policy) else None
        self._fallback = routing.fallback
        self._rng = rng or random.Random()
        self._balancer = Balancer(routing, pool, self._rng)
        self._affinity_chars = routing.affinity_prefix_chars if routing.prefix_affinity else 0
        #: The multi-signal scorer replaces the balancer's first pick when configured.
        self._scorer = ReplicaScorer(routing.scorer, pool) if routing.balancer == "scored" else None
        self._shadow: dict[str, tuple[Engine, float]] = {}
        for tier, rollout in routing.rollouts.items():
            if rollout.shadow is not None and rollout.shadow.sample > 0:
                engine = pool.engines[rollout.shadow.engine]
                self._shadow[tier] = (engine, rollout.shadow.sample)
        self._shadow_only = {r.shadow.engine for r in routing.rollouts.values() if r.shadow}
        #: Tier → serves embeddings only (True) or generation (False); from the config
        #: entries, so a tier whose replicas are all gone keeps its kind.
        self._kinds = {
            tier: all(e.embeddings for e in entries)
            for tier, entries in pool.entries_by_tier.items()
        }
        self._serving: dict[str, list[Engine]] = {}
        self._rollouts: dict[str, TierRollout] = {}
        self._generation = -1
        self._sync()

    def _sync(self) -> None:
        """Rebuild the per-tier tables when the pool's engines changed (discovery)."""
        if self._generation == self._pool.generation:
            return
        self._generation = self._pool.generation
        rollouts = self._settings.routing.rollouts
        #: Engines that take regular traffic, by tier (shadow targets excluded).
        self._serving = {
            tier: [e for e in engines if e.name not in self._shadow_only]
            for tier, engines in self._pool.by_tier.items()
        }
        self._rollouts = {}
        for tier, engines in self._serving.items():
            plan = TierRollout(tier, engines, rollouts.get(tier))
            if plan.active:
                self._rollouts[tier] = plan

    @property
    def pool(self) -> EnginePool:
        return self._pool

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def learned(self) -> LearnedPolicy | None:
        """The learned policy deciding ``auto`` requests, if that is the configured one."""
        return learned_of(self._policy)

    def public_models(self) -> list[ModelSettings]:
        return list(self._settings.models)

    def resolve(self, name: str) -> ModelSettings:
        model = self._models.get(name)
        if model is None:
            raise NotFoundError(
                f"The model '{name}' does not exist. Available models: "
                f"{', '.join(sorted(m.name for m in self._settings.models))}.",
                param="model",
            )
        return model

    def check_kind(self, model: ModelSettings, embeddings: bool) -> None:
        """Refuse (400) an embeddings request for a generation model, or the reverse.

        The config says which tiers serve embeddings, so such a request never goes to an
        engine, whose 404 would read as a broken engine (502).
        """
        serves_embeddings = False if model.auto else self._kinds.get(model.tier or "")
        if serves_embeddings is not None and serves_embeddings != embeddings:
            what = "embeddings" if embeddings else "completions"
            raise InvalidRequestError(
                f"The model '{model.name}' does not serve {what}.", param="model"
            )

    def prefix_hash(self, raw: Mapping[str, Any]) -> int:
        """The request's affinity key (0 when prefix affinity is off)."""
        return prefix_hash(raw, self._affinity_chars) if self._affinity_chars else 0

    def prefix_blocks(self, raw: Mapping[str, Any]) -> tuple[int, ...]:
        """The request's prefix blocks for the ``scored`` balancer (empty otherwise)."""
        if self._scorer is None:
            return ()
        s = self._settings.routing.scorer
        return prefix_blocks(raw, s.block_chars, s.max_blocks)

    def choose(self, features: Features) -> tuple[str, str, Score | None]:
        """The policy's (tier, reason, learned score) for a request to an ``auto`` model."""
        self._sync()
        return self._choose(features)

    def _choose(self, features: Features) -> tuple[str, str, Score | None]:
        if self._scoring is not None:
            return self._scoring.choose_scored(features, self._pool)
        tier, reason = self._policy.choose(features, self._pool)
        return tier, reason, None

    def reach(self, model: ModelSettings, tier: str) -> list[str]:
        """``tier`` and the tier that fallback may move a request there to."""
        fallback = self._fallback_tier(model, tier)
        return [tier, fallback] if fallback else [tier]

    def _fallback_tier(self, model: ModelSettings, tier: str) -> str | None:
        if not self._fallback:
            return None
        fallback = model.fallback_tier or self._other_tier(tier)
        return fallback if fallback and fallback != tier else None

    def decide(
        self, model: ModelSettings, features: Features, plan: TierPlan | None = None
    ) -> RouteDecision:
        """Where the request goes. With admission's ``plan`` (``auto`` models), the tier
        stays within what the reservation covers: a rescued request keeps the plan's
        tier; otherwise the policy runs again when it now knows the key's remaining
        budget (``budget:low``), and a choice outside the plan's cover falls back to the
        plan's own. The learned policy's score is the one admission's choice had."""
        self._sync()
        score: Score | None = None
        if plan is not None:
            tier, reason, score = plan.tier, plan.reason, plan.score
            if not plan.rescued and features.budget_remaining_nusd is not None:
                chosen = self._policy.choose(features, self._pool)
                if chosen[0] in plan.covered:
                    tier, reason = chosen
        elif model.auto:
            tier, reason, score = self._choose(features)
        else:
            tier, reason = model.tier or "", "by_name"
        candidates, note = self._ranked(tier, features)
        fallback = self._fallback_tier(model, tier)
        if fallback and (plan is None or fallback in plan.covered):
            available = self._breakers.available
            candidates += self._balancer.failover(
                [e for e in self._serving.get(fallback, ()) if available(e)]
            )
        if not candidates:
            auto = model.auto and plan is None
            tiers = " or ".join(self.reachable_tiers(model)) if auto else tier
            raise EngineUnavailableError(
                f"No engine is available for the {tiers} tier; try again shortly.",
                headers={"Retry-After": str(self._retry_after())},
            )
        shadow = self._shadow.get(tier)
        sampled = shadow is not None and self._rng.random() < shadow[1]
        return RouteDecision(
            tier=tier,
            reason=reason,
            candidates=candidates,
            shadow=shadow[0] if shadow is not None and sampled else None,
            replica_note=note,
            score=score,
        )

    def _retry_after(self) -> int:
        return max(1, int(self._settings.routing.breaker.open_seconds + 0.999))

    def _other_tier(self, tier: str) -> str | None:
        """The one other tier of the same kind (generation or embeddings), if unique."""
        kind = self._kinds.get(tier)
        others = [t for t, k in self._kinds.items() if k == kind and t != tier]
        return others[0] if len(others) == 1 else None

    def _ranked(self, tier: str, f: Features) -> tuple[list[Engine], str]:
        available = self._breakers.available
        engines = [e for e in self._serving.get(tier, ()) if available(e)]
        if len(engines) <= 1 and self._scorer is None:
            return engines, ""
        plan = self._rollouts.get(tier)
        if plan is None:
            return self._order(engines, f)
        mine, rest = plan.order(engines, plan.pick(f.key_id, self._rng))
        first, note = self._order(mine, f)
        if self._scorer is not None:  # retries only: plain least outstanding, nothing recorded
            return first + self._balancer.failover(rest), note
        return first + self._balancer.order(rest, f.prefix_hash), note

    def _order(self, engines: list[Engine], f: Features) -> tuple[list[Engine], str]:
        if self._scorer is not None:
            scored = self._scorer.order(engines, f.prefix_blocks)
            return scored.engines, scored.note
        return self._balancer.order(engines, f.prefix_hash), ""

    def reachable_tiers(self, model: ModelSettings) -> list[str]:
        """Tiers a request for ``model`` may end up on (for worst-case admission)."""
        if model.auto:
            return [t for t, embed_only in self._kinds.items() if not embed_only]
        tiers = [model.tier or ""]
        fallback = model.fallback_tier or self._other_tier(tiers[0])
        if self._fallback and fallback:
            tiers.append(fallback)
        return tiers

    def servable(self, model: ModelSettings) -> bool:
        """Whether a request for ``model`` can reach some engine now, fallback included.

        ``auto`` without fallback needs every tier its policy may choose.
        """
        self._sync()
        available = self._breakers.available
        up = [
            any(available(e) for e in self._serving.get(t, ())) for t in self.reachable_tiers(model)
        ]
        if model.auto and not self._fallback:
            return bool(up) and all(up)
        return any(up)

    def describe(self) -> dict[str, Any]:
        routing = self._settings.routing
        return {
            "policy": routing.policy,
            "balancer": routing.balancer,
            "prefix_affinity": routing.prefix_affinity,
            "scorer": routing.scorer.model_dump() if self._scorer is not None else None,
            "fallback": routing.fallback,
            "rollouts": {t: p.versions for t, p in self._rollouts.items()},
            "shadow": {t: e.name for t, (e, _) in self._shadow.items()},
        }
