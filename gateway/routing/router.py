"""The route stage: model name → tier (fixed or by policy) → ordered engine candidates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config import ModelSettings, Settings
from gateway.engines import Engine
from gateway.errors import EngineUnavailableError, NotFoundError
from gateway.routing.health import Breakers
from gateway.routing.policies import Features, Policy, build_policy
from gateway.routing.pool import EnginePool


@dataclass(slots=True)
class RouteDecision:
    tier: str
    reason: str
    #: Engines to try, best first (fallback tier's engines appended when allowed).
    candidates: list[Engine] = field(default_factory=list)


class Router:
    """Resolves client-facing model names and chooses engines."""

    def __init__(
        self,
        settings: Settings,
        pool: EnginePool,
        breakers: Breakers,
        policy: Policy | None = None,
    ) -> None:
        self._pool = pool
        self._breakers = breakers
        self._settings = settings
        self._models: dict[str, ModelSettings] = {}
        for m in settings.models:
            self._models[m.name] = m
            for alias in m.aliases:
                self._models[alias] = m
        self._policy = policy or build_policy(settings.routing.policy, settings.routing.params)
        self._fallback = settings.routing.fallback

    @property
    def pool(self) -> EnginePool:
        return self._pool

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

    def decide(self, model: ModelSettings, features: Features) -> RouteDecision:
        if model.auto:
            tier, reason = self._policy.choose(features, self._pool)
        else:
            tier, reason = model.tier or "", "by_name"
        candidates = self._ranked(tier)
        fallback = model.fallback_tier or self._other_tier(tier)
        if self._fallback and fallback and fallback != tier:
            candidates += self._ranked(fallback)
        if not candidates:
            raise EngineUnavailableError(f"No engine is available for the {tier} tier.")
        return RouteDecision(tier=tier, reason=reason, candidates=candidates)

    def _other_tier(self, tier: str) -> str | None:
        others = [t for t in self._pool.tiers if t != tier]
        return others[0] if len(others) == 1 else None

    def _ranked(self, tier: str) -> list[Engine]:
        pool = self._pool
        engines = [e for e in pool.by_tier.get(tier, ()) if self._breakers.available(e)]
        if len(engines) > 1:
            engines.sort(
                key=lambda e: (e.in_flight + pool.queue_depth(e)) / max(e.settings.weight, 1e-9)
            )
        return engines

    def reachable_tiers(self, model: ModelSettings) -> list[str]:
        """Tiers a request for ``model`` may end up on (for worst-case admission)."""
        if model.auto:
            return self._pool.tiers
        tiers = [model.tier or ""]
        fallback = model.fallback_tier or self._other_tier(tiers[0])
        if self._fallback and fallback:
            tiers.append(fallback)
        return tiers

    def describe(self) -> dict[str, Any]:
        return {"policy": self._settings.routing.policy}
