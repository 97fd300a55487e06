"""Router.decide within admission's TierPlan (``auto``): the route never leaves the tiers
the reservation covers (issue 14, item 4)."""

from __future__ import annotations

import random

from gateway.routing.features import Features
from gateway.routing.health import Breakers
from gateway.routing.plan import TierPlan
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from tests.routing.helpers import FakeClock, features, make_settings


def router(**routing: object) -> Router:
    s = make_settings(**routing)
    return Router(
        s, EnginePool(s.engines), Breakers(s.routing.breaker, FakeClock()), rng=random.Random(1)
    )


def plan(tier: str, covered: set[str], *, rescued: bool, f: Features) -> TierPlan:
    return TierPlan(tier, "rules:tools", frozenset(covered), rescued, f)


def test_reach_is_the_tier_and_its_fallback() -> None:
    r = router()
    auto = r.resolve("auto")
    assert r.reach(auto, "large") == ["large", "small"]
    assert r.reach(auto, "small") == ["small", "large"]
    assert router(fallback=False).reach(auto, "large") == ["large"]


def test_a_rescued_plan_keeps_its_tier_and_no_uncovered_fallback() -> None:
    r = router()
    f = features(has_tools=True, budget_remaining_nusd=10)
    rescued = TierPlan("small", "rules:tools;budget:rescue", frozenset({"small"}), True, f)
    d = r.decide(r.resolve("auto"), f, rescued)
    assert (d.tier, d.reason) == ("small", "rules:tools;budget:rescue")
    assert [e.name for e in d.candidates] == ["small-0"]  # large is not reserved for


def test_a_covered_fallback_stays_a_candidate() -> None:
    r = router()
    f = features(has_tools=True)
    d = r.decide(r.resolve("auto"), f, plan("large", {"large", "small"}, rescued=False, f=f))
    assert (d.tier, d.reason) == ("large", "rules:tools")
    assert [e.name for e in d.candidates] == ["large-0", "small-0"]


def test_the_policy_reruns_with_the_budget_but_stays_within_the_cover() -> None:
    r = router(policy="budget", params={"low_usd": 1.0})
    f = features(has_tools=True, budget_remaining_nusd=5)
    covered = plan("large", {"large", "small"}, rescued=False, f=f)
    d = r.decide(r.resolve("auto"), f, covered)
    assert (d.tier, d.reason) == ("small", "rules:tools;budget:low")
    # The same choice outside the cover keeps the plan's own tier.
    narrow = plan("large", {"large"}, rescued=False, f=f)
    d = r.decide(r.resolve("auto"), f, narrow)
    assert (d.tier, d.reason) == ("large", "rules:tools")
    assert [e.name for e in d.candidates] == ["large-0"]
