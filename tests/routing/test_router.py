"""Router.decide: tiers by name or policy, fallback, rollouts (canary, sticky A/B, shadow)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gateway.config import ConfigError, Settings
from gateway.errors import EngineUnavailableError, InvalidRequestError
from gateway.routing.health import Breakers
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from tests.routing.helpers import FakeClock, engine, features, make_settings


def router(settings: Settings | None = None, seed: int = 3) -> tuple[Router, EnginePool, Breakers]:
    s = settings or make_settings()
    pool = EnginePool(s.engines)
    breakers = Breakers(s.routing.breaker, FakeClock())
    return Router(s, pool, breakers, rng=random.Random(seed)), pool, breakers


def names(decision: Any) -> list[str]:
    return [e.name for e in decision.candidates]


def test_by_name_with_fallback_candidates_after_the_tier() -> None:
    r, _, _ = router()
    d = r.decide(r.resolve("small"), features())
    assert (d.tier, d.reason, names(d)) == ("small", "by_name", ["small-0", "large-0"])
    assert r.reachable_tiers(r.resolve("small")) == ["small", "large"]


def test_no_fallback_when_disabled() -> None:
    r, _, _ = router(make_settings(fallback=False))
    d = r.decide(r.resolve("large"), features())
    assert names(d) == ["large-0"]
    assert r.reachable_tiers(r.resolve("large")) == ["large"]


def test_auto_uses_the_policy() -> None:
    r, _, _ = router()
    d = r.decide(r.resolve("auto"), features(has_tools=True))
    assert (d.tier, d.reason) == ("large", "rules:tools")
    assert names(d)[0] == "large-0"


def test_fallback_when_the_tier_is_down_and_clear_503_when_both_are() -> None:
    r, pool, breakers = router()
    breakers.health_failed(pool.engines["large-0"])
    d = r.decide(r.resolve("large"), features())
    assert d.tier == "large" and names(d) == ["small-0"]
    breakers.health_failed(pool.engines["small-0"])
    with pytest.raises(EngineUnavailableError) as exc:
        r.decide(r.resolve("auto"), features())
    assert exc.value.status_code == 503
    assert exc.value.headers["Retry-After"] == "10"
    assert "small or large" in exc.value.message


def test_embedding_tier_is_not_a_fallback_for_generation() -> None:
    s = make_settings(
        [engine("s", "small"), engine("l", "large"), engine("e", "embed", embeddings=True)]
    )
    r, _, _ = router(s)
    assert names(r.decide(r.resolve("small"), features())) == ["s", "l"]
    assert names(r.decide(r.resolve("embed"), features())) == ["e"]
    assert r.reachable_tiers(r.resolve("auto")) == ["small", "large"]


def test_a_request_of_the_wrong_kind_is_a_400_before_any_engine() -> None:
    s = make_settings(
        [engine("s", "small"), engine("l", "large"), engine("e", "embed", embeddings=True)]
    )
    r, _, _ = router(s)
    for name, embeddings in (("small", True), ("auto", True), ("embed", False)):
        with pytest.raises(InvalidRequestError, match="does not serve") as refused:
            r.check_kind(r.resolve(name), embeddings)
        assert refused.value.param == "model"
    r.check_kind(r.resolve("small"), False)
    r.check_kind(r.resolve("embed"), True)


def canary_settings(**rollout: Any) -> Settings:
    return make_settings(
        [
            engine("small-0", "small"),
            engine("large-v1a", "large", version="v1", weight=4.5),
            engine("large-v1b", "large", version="v1", weight=4.5),
            engine("large-v2", "large", version="v2", weight=1.0),
        ],
        rollouts={"large": rollout} if rollout else {},
    )


def test_weighted_canary_splits_by_version_weight() -> None:
    r, _, _ = router(canary_settings())
    firsts = Counter(names(r.decide(r.resolve("large"), features()))[0] for _ in range(2000))
    v2 = firsts["large-v2"] / 2000
    assert 0.07 < v2 < 0.13  # 10 % canary
    assert firsts["large-v1a"] > 0 and firsts["large-v1b"] > 0
    # the other version's replicas follow as failover, then the fallback tier
    d = r.decide(r.resolve("large"), features())
    assert sorted(names(d)[:3]) == ["large-v1a", "large-v1b", "large-v2"]
    assert names(d)[3] == "small-0"


def test_sticky_ab_assigns_each_key_one_version() -> None:
    r, _, _ = router(canary_settings(split="sticky"))
    by_key = {}
    for k in range(300):
        key = f"key-{k}"
        seen = {
            names(r.decide(r.resolve("large"), features(key_id=key)))[0].startswith("large-v2")
            for _ in range(5)
        }
        assert len(seen) == 1, "a key must always see the same version"
        by_key[key] = seen.pop()
    share = sum(by_key.values()) / len(by_key)
    assert 0.04 < share < 0.18
    # a different salt reshuffles the assignment
    r2, _, _ = router(canary_settings(split="sticky", salt="round-2"))
    moved = sum(
        names(r2.decide(r2.resolve("large"), features(key_id=k)))[0].startswith("large-v2") != v
        for k, v in by_key.items()
    )
    assert moved > 0


def test_shadow_engine_is_sampled_and_takes_no_regular_traffic() -> None:
    s = make_settings(
        [
            engine("small-0", "small"),
            engine("large-0", "large"),
            engine("large-cand", "large", version="v2"),
        ],
        rollouts={"large": {"shadow": {"engine": "large-cand", "sample": 0.25}}},
    )
    r, _, _ = router(s)
    decisions = [r.decide(r.resolve("large"), features()) for _ in range(1000)]
    assert all("large-cand" not in names(d) for d in decisions)
    shadowed = sum(d.shadow is not None for d in decisions)
    assert 200 < shadowed < 300
    assert all(d.shadow is None for d in (r.decide(r.resolve("small"), features()),))


def test_rollout_config_is_validated_at_load() -> None:
    with pytest.raises(ValueError, match=r"routing\.rollouts\.medium"):
        make_settings(rollouts={"medium": {}})
    with pytest.raises(ValueError, match=r"shadow\.engine: unknown engine 'ghost'"):
        make_settings(rollouts={"large": {"shadow": {"engine": "ghost", "sample": 0.1}}})


def test_unknown_policy_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="unknown policy"):
        router(make_settings(policy="magic"))


def test_prefix_hash_only_when_affinity_is_on() -> None:
    raw = {"messages": [{"role": "user", "content": "hi"}]}
    off, _, _ = router()
    on, _, _ = router(make_settings(prefix_affinity=True))
    assert off.prefix_hash(raw) == 0 and on.prefix_hash(raw) != 0
