"""Routing policies for "auto" models, chosen by name from a registry.

A *policy* picks a tier from the request alone; an *override* may then move the request
to another tier because of the system's state (queue lengths, the key's budget). A
``chain`` composes one policy and any overrides, in order::

    routing:
      policy: chain
      params:
        small_tier: small          # defaults for every step
        large_tier: large
        steps:
          - {use: rules, max_prompt_tokens_small: 1500}
          - {use: load_aware, queue_high: 4}
          - {use: budget, low_usd: 0.05}      # last, so it has the final word

Reasons accumulate: ``rules:long_prompt;load:large_busy``. Every reason comes from a
fixed vocabulary or from config (class names), so it is safe as a metrics label.
Unknown parameters are configuration errors, reported with the step they belong to.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

from gateway.config import ConfigError
from gateway.routing.features import (
    Features,
    Override,
    Policy,
    Score,
    ScoringPolicy,
    check_params,
    tier_names,
)
from gateway.routing.learned import LearnedPolicy
from gateway.routing.pool import EnginePool


def _fits(pool: EnginePool, tier: str, tokens: int) -> bool:
    """Whether some engine of ``tier`` has a context long enough for ``tokens``."""
    for e in pool.entries_by_tier.get(tier, ()):
        limit = e.max_model_len
        if limit is None or tokens <= limit:
            return True
    return False


_TIER_KEYS = frozenset({"small_tier", "large_tier"})


@dataclass(frozen=True, slots=True)
class _TextClass:
    name: str
    tier: str
    pattern: re.Pattern[str]


class RulesPolicy:
    """Static rules over the request's shape and text, plus the key's defaults.

    In order: the key's ``force_tier``; tools, JSON mode, a long prompt, a long output or
    a long conversation send it to the large tier; then keyword/regex classes (first
    match wins, each names its tier); then the key's ``prefer_tier``; then ``default_tier``.
    """

    PARAMS: ClassVar[frozenset[str]] = _TIER_KEYS | {
        "max_prompt_tokens_small",
        "max_output_tokens_small",
        "max_messages_small",
        "tools_large",
        "json_large",
        "classes",
        "scan_chars",
        "default_tier",
    }

    def __init__(self, params: Mapping[str, Any]) -> None:
        check_params("rules", params, self.PARAMS)
        self.small, self.large = tier_names(params)
        self.max_prompt_tokens = int(params.get("max_prompt_tokens_small", 1500))
        self.max_output_tokens = int(params.get("max_output_tokens_small", 512))
        self.max_messages = int(params.get("max_messages_small", 16))
        self.tools_large = bool(params.get("tools_large", True))
        self.json_large = bool(params.get("json_large", True))
        #: Only the first characters of the text are scanned (bounds the cost).
        self.scan_chars = int(params.get("scan_chars", 4096))
        self.default = str(params.get("default_tier", self.small))
        self._default_reason = f"rules:default_{self.default}"
        self.classes = tuple(
            _text_class(i, c, self.large) for i, c in enumerate(params.get("classes") or ())
        )

    def choose(self, f: Features, pool: EnginePool) -> tuple[str, str]:
        kd = f.key_defaults
        if kd:
            forced = kd.get("force_tier")
            if forced in pool.by_tier:
                return str(forced), "rules:key_forced"
        if f.has_tools and self.tools_large:
            return self.large, "rules:tools"
        if f.json_mode and self.json_large:
            return self.large, "rules:json_mode"
        if f.prompt_tokens > self.max_prompt_tokens:
            return self.large, "rules:long_prompt"
        if f.max_tokens > self.max_output_tokens:
            return self.large, "rules:long_output"
        if f.messages > self.max_messages:
            return self.large, "rules:long_conversation"
        if self.classes and f.text:
            text = f.text[: self.scan_chars]
            for c in self.classes:
                if c.pattern.search(text) is not None:
                    return c.tier, f"rules:class:{c.name}"
        if kd:
            preferred = kd.get("prefer_tier")
            if preferred in pool.by_tier:
                return str(preferred), "rules:key_default"
        return self.default, self._default_reason


def _text_class(i: int, raw: object, large: str) -> _TextClass:
    where = f"routing.params.classes[{i}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with name, tier, keywords and/or regex")
    check_params(where, raw, frozenset({"name", "tier", "keywords", "regex"}))
    name = str(raw.get("name") or f"class{i}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
        raise ConfigError(f"{where}.name: {name!r} must be 1-32 characters of [A-Za-z0-9_.-]")
    parts: list[str] = []
    keywords = raw.get("keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
        raise ConfigError(f"{where}.keywords: must be a list of non-empty strings")
    if keywords:
        parts.append(r"\b(?:" + "|".join(re.escape(k) for k in keywords) + r")\b")
    regex = raw.get("regex")
    if regex is not None:
        parts.append(f"(?:{regex})")
    if not parts:
        raise ConfigError(f"{where}: needs keywords or regex")
    try:
        pattern = re.compile("|".join(parts), re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{where}.regex: invalid regular expression ({exc})") from None
    return _TextClass(name, str(raw.get("tier", large)), pattern)


class LoadAwareOverride:
    """Moves a request off a tier whose queue is long, when the other tier has room.

    A tier's queue is the shortest one among its healthy engines, as read by
    :meth:`EnginePool.waiting` (scraped ``vllm:num_requests_waiting`` corrected by our
    own in-flight drift, plus our wait queue). KV-cache usage above ``kv_high`` counts as
    busy too. A request only moves to a tier whose engines can hold its context.
    """

    PARAMS: ClassVar[frozenset[str]] = _TIER_KEYS | {
        "queue_high",
        "margin",
        "kv_high",
        "to_small",
        "to_large",
    }

    def __init__(self, params: Mapping[str, Any]) -> None:
        check_params("load_aware", params, self.PARAMS)
        self.small, self.large = tier_names(params)
        self.queue_high = float(params.get("queue_high", 4))
        self.margin = float(params.get("margin", 2))
        self.kv_high = float(params.get("kv_high", 0.95))
        self._allowed = {
            self.large: bool(params.get("to_small", True)),
            self.small: bool(params.get("to_large", True)),
        }
        self._reasons = {t: f"load:{t}_busy" for t in (self.small, self.large)}

    def _pressure(self, pool: EnginePool, tier: str, now: float) -> tuple[float, float]:
        best_q, best_kv = math.inf, math.inf
        for e in pool.by_tier.get(tier, ()):
            if not e.healthy:
                continue
            q = pool.waiting(e, now)
            if q < best_q:
                best_q = q
            if e.kv_cache_usage < best_kv:
                best_kv = e.kv_cache_usage
        return best_q, best_kv

    def override(self, tier: str, f: Features, pool: EnginePool) -> tuple[str, str] | None:
        if not self._allowed.get(tier, False):
            return None
        other = self.small if tier == self.large else self.large
        now = time.monotonic()
        q, kv = self._pressure(pool, tier, now)
        if q < self.queue_high and kv < self.kv_high:
            return None
        oq, okv = self._pressure(pool, other, now)
        roomier = oq + self.margin <= q if q >= self.queue_high else oq < self.queue_high
        if not roomier or okv >= self.kv_high:
            return None
        if not _fits(pool, other, f.prompt_tokens + f.max_tokens):
            return None
        return other, self._reasons[tier]


class BudgetOverride:
    """Steers a key near the end of its budget to the small tier instead of refusing it."""

    PARAMS: ClassVar[frozenset[str]] = _TIER_KEYS | {"low_usd"}

    def __init__(self, params: Mapping[str, Any]) -> None:
        check_params("budget", params, self.PARAMS)
        self.small, _ = tier_names(params)
        self.low_nusd = int(float(params.get("low_usd", 0.05)) * 1e9)

    def override(self, tier: str, f: Features, pool: EnginePool) -> tuple[str, str] | None:
        remaining = f.budget_remaining_nusd
        if remaining is None or remaining >= self.low_nusd or tier == self.small:
            return None
        if not _fits(pool, self.small, f.prompt_tokens + f.max_tokens):
            return None
        return self.small, "budget:low"


class ChainPolicy:
    """One policy, then each override in order; reasons are joined with ``;``."""

    def __init__(self, base: Policy, overrides: list[Override]) -> None:
        self.base = base
        self.overrides = tuple(overrides)

    def choose(self, f: Features, pool: EnginePool) -> tuple[str, str]:
        tier, reason, _ = self.choose_scored(f, pool)
        return tier, reason

    def choose_scored(self, f: Features, pool: EnginePool) -> tuple[str, str, Score | None]:
        """The base's choice (and its score, when the base scores), then the overrides."""
        base = self.base
        score: Score | None = None
        if isinstance(base, LearnedPolicy):
            tier, reason, score = base.choose_scored(f, pool)
        else:
            tier, reason = base.choose(f, pool)
        for o in self.overrides:
            changed = o.override(tier, f, pool)
            if changed is not None:
                tier, why = changed
                reason = f"{reason};{why}"
        return tier, reason, score


def learned_of(policy: Policy) -> LearnedPolicy | None:
    """The learned policy that decides first in ``policy`` (itself or a chain's base)."""
    if isinstance(policy, ChainPolicy):
        policy = policy.base
    return policy if isinstance(policy, LearnedPolicy) else None


def scores(policy: Policy) -> TypeGuard[ScoringPolicy]:
    """Whether ``policy`` reports a score (so the router asks it for one)."""
    return isinstance(policy, ScoringPolicy) and learned_of(policy) is not None


PolicyFactory = Callable[[Mapping[str, Any]], Policy]
OverrideFactory = Callable[[Mapping[str, Any]], Override]


def _learned(params: Mapping[str, Any]) -> Policy:
    return LearnedPolicy(params)


def _standalone(
    override: type[LoadAwareOverride] | type[BudgetOverride],
) -> PolicyFactory:
    """``load_aware`` or ``budget`` alone: rules first, then that override."""

    def build(params: Mapping[str, Any]) -> Policy:
        known = RulesPolicy.PARAMS | override.PARAMS
        check_params(override.__name__, params, known)
        rules = {k: v for k, v in params.items() if k in RulesPolicy.PARAMS}
        own = {k: v for k, v in params.items() if k in override.PARAMS}
        return ChainPolicy(RulesPolicy(rules), [override(own)])

    return build


def _chain(params: Mapping[str, Any]) -> Policy:
    steps = params.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ConfigError("routing.params.steps: a chain needs a non-empty list of steps")
    shared = {k: v for k, v in params.items() if k != "steps"}
    built: list[Any] = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or not isinstance(step.get("use"), str):
            raise ConfigError(f"routing.params.steps[{i}]: needs 'use: NAME'")
        name = step["use"]
        step_params = {**shared, **{k: v for k, v in step.items() if k != "use"}}
        table: Mapping[str, Any] = REGISTRY if i == 0 else OVERRIDES
        if name not in table:
            kind = "policy" if i == 0 else "override"
            raise ConfigError(
                f"routing.params.steps[{i}].use: unknown {kind} {name!r} "
                f"(choose from {sorted(table)})"
            )
        built.append(table[name](step_params))
    return ChainPolicy(built[0], built[1:])


#: Policies by name (``routing.policy``); the first step of a chain comes from here.
REGISTRY: Mapping[str, PolicyFactory] = {
    "rules": RulesPolicy,
    "load_aware": _standalone(LoadAwareOverride),
    "budget": _standalone(BudgetOverride),
    "learned": _learned,
    "chain": _chain,
}

#: Overrides by name: the later steps of a chain.
OVERRIDES: Mapping[str, OverrideFactory] = {
    "load_aware": LoadAwareOverride,
    "budget": BudgetOverride,
}


def build_policy(name: str, params: Mapping[str, Any]) -> Policy:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"routing.policy: unknown policy {name!r} (choose from {sorted(REGISTRY)})"
        ) from None
    return factory(params)
