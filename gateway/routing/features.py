"""What routing policies see and are: the request's features and the Policy protocol.

Kept apart from :mod:`gateway.routing.policies` so that the learned policy and the rule
policies both import it, and neither imports the other's module (no import circle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gateway.config import ConfigError
from gateway.routing.pool import EnginePool


@dataclass(frozen=True, slots=True)
class Features:
    """What a policy may look at: cheap facts about the request and its key."""

    prompt_tokens: int
    #: The client's max_tokens (times n); 0 when the client did not set one.
    max_tokens: int
    messages: int
    has_tools: bool
    json_mode: bool
    #: The last user message (or the prompt), as sent.
    text: str
    budget_remaining_nusd: int | None = None
    #: The key's routing hints (``Principal.routing``): ``force_tier``, ``prefer_tier``.
    key_defaults: Mapping[str, Any] | None = None
    key_id: str | None = None
    #: Hash of the conversation's beginning (0 = none), for replica affinity.
    prefix_hash: int = 0
    #: Chained hashes of the prompt's blocks, for the ``scored`` balancer (else empty).
    prefix_blocks: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Score:
    """A learned policy's view of one request: P(large needed) and the model's inputs.

    Both go on the ledger record, so ``tollgate routing calibrate`` can re-score recent
    traffic under the current model and ``tollgate routing train`` can fit on it.
    """

    value: float
    #: The model's input vector (``learned.FEATURE_NAMES`` without the bias).
    features: tuple[float, ...]


class Policy(Protocol):
    """Chooses a tier for a request to an auto model."""

    def choose(self, f: Features, pool: EnginePool) -> tuple[str, str]:
        """Return (tier, reason)."""
        ...


@runtime_checkable
class ScoringPolicy(Protocol):
    """A policy that can say how it scored the request (the learned one, or a chain on it)."""

    def choose_scored(self, f: Features, pool: EnginePool) -> tuple[str, str, Score | None]:
        """Return (tier, reason, score)."""
        ...


class Override(Protocol):
    """Adjusts a chosen tier in a chain; returns (new tier, reason) or None to keep it."""

    def override(self, tier: str, f: Features, pool: EnginePool) -> tuple[str, str] | None: ...


def check_params(step: str, params: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"routing.params ({step}): unknown parameter(s) {unknown}; known: {sorted(known)}"
        )


def tier_names(params: Mapping[str, Any]) -> tuple[str, str]:
    return str(params.get("small_tier", "small")), str(params.get("large_tier", "large"))
