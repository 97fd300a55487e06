"""Routing policies for "auto" models, chosen by name from a registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import ConfigError
from gateway.routing.pool import EnginePool


@dataclass(frozen=True, slots=True)
class Features:
    """What a policy may look at: cheap facts about the request and its key."""

    prompt_tokens: int
    max_tokens: int
    messages: int
    has_tools: bool
    json_mode: bool
    text: str
    budget_remaining_nusd: int | None = None
    key_defaults: dict[str, Any] | None = None


class Policy(Protocol):
    def choose(self, f: Features, pool: EnginePool) -> tuple[str, str]:
        """Return (tier, reason)."""
        ...


class RulesPolicy:
    """Static rules: long prompts, long outputs, tools or JSON mode go large."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.small = str(params.get("small_tier", "small"))
        self.large = str(params.get("large_tier", "large"))
        self.max_prompt_tokens = int(params.get("max_prompt_tokens_small", 1500))
        self.max_output_tokens = int(params.get("max_output_tokens_small", 512))

    def choose(self, f: Features, pool: EnginePool) -> tuple[str, str]:
        if f.has_tools:
            return self.large, "rules:tools"
        if f.json_mode:
            return self.large, "rules:json_mode"
        if f.prompt_tokens > self.max_prompt_tokens:
            return self.large, "rules:long_prompt"
        if f.max_tokens > self.max_output_tokens:
            return self.large, "rules:long_output"
        return self.small, "rules:default_small"


PolicyFactory = Callable[[dict[str, Any]], Policy]

REGISTRY: dict[str, PolicyFactory] = {"rules": RulesPolicy}


def build_policy(name: str, params: dict[str, Any]) -> Policy:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"routing.policy: unknown policy {name!r} (choose from {sorted(REGISTRY)})"
        ) from None
    return factory(params)
