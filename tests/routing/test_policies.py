"""Routing policies: rules, load-aware and budget overrides, chains, the registry."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.routing.policies import (
    OVERRIDES,
    REGISTRY,
    BudgetOverride,
    ChainPolicy,
    LoadAwareOverride,
    RulesPolicy,
    build_policy,
)
from gateway.routing.pool import EnginePool
from tests.routing.helpers import engine, features, make_settings


def pool(**large_extra: Any) -> EnginePool:
    s = make_settings(
        [engine("small-0", "small", max_model_len=2048), engine("large-0", "large", **large_extra)]
    )
    return EnginePool(s.engines)


def scraped(p: EnginePool, name: str, waiting: float, kv: float = 0.0) -> None:
    """Pretend the monitor just scraped ``name``'s /metrics."""
    e = p.engines[name]
    e.waiting, e.kv_cache_usage = waiting, kv
    e.scraped_in_flight = e.in_flight
    e.metrics_at = time.monotonic()


@pytest.mark.parametrize(
    ("kwargs", "tier", "reason"),
    [
        ({}, "small", "rules:default_small"),
        ({"has_tools": True}, "large", "rules:tools"),
        ({"json_mode": True}, "large", "rules:json_mode"),
        ({"prompt_tokens": 1501}, "large", "rules:long_prompt"),
        ({"prompt_tokens": 1500}, "small", "rules:default_small"),
        ({"max_tokens": 513}, "large", "rules:long_output"),
        ({"messages": 17}, "large", "rules:long_conversation"),
        ({"key_defaults": {"prefer_tier": "large"}}, "large", "rules:key_default"),
        ({"key_defaults": {"force_tier": "small"}, "has_tools": True}, "small", "rules:key_forced"),
        ({"key_defaults": {"prefer_tier": "nowhere"}}, "small", "rules:default_small"),
    ],
)
def test_rules(kwargs: dict[str, Any], tier: str, reason: str) -> None:
    assert RulesPolicy({}).choose(features(**kwargs), pool()) == (tier, reason)


def test_rules_keyword_and_regex_classes_first_match_wins() -> None:
    rules = RulesPolicy(
        {
            "classes": [
                {"name": "code", "tier": "large", "keywords": ["python", "stack trace"]},
                {"name": "chitchat", "tier": "small", "regex": r"^(hi|hello)\b"},
            ],
            "default_tier": "large",
        }
    )
    p = pool()
    assert rules.choose(features(text="Fix my PYTHON script"), p) == ("large", "rules:class:code")
    assert rules.choose(features(text="see this Stack Trace"), p)[1] == "rules:class:code"
    assert rules.choose(features(text="pythonic"), p) == ("large", "rules:default_large")
    assert rules.choose(features(text="hello there"), p) == ("small", "rules:class:chitchat")
    # structural rules come before text classes
    assert rules.choose(features(text="hello", has_tools=True), p)[1] == "rules:tools"


def test_rules_scan_only_the_first_characters() -> None:
    rules = RulesPolicy({"scan_chars": 10, "classes": [{"name": "x", "keywords": ["needle"]}]})
    assert rules.choose(features(text="needle" + " " * 100), pool())[1] == "rules:class:x"
    assert rules.choose(features(text=" " * 100 + "needle"), pool())[1] == "rules:default_small"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_prompt_token_small": 3}, "unknown parameter"),
        ({"classes": [{"name": "bad name!", "keywords": ["x"]}]}, r"classes\[0\]\.name"),
        ({"classes": [{"name": "x"}]}, "needs keywords or regex"),
        ({"classes": [{"name": "x", "regex": "("}]}, "invalid regular expression"),
        ({"classes": [{"name": "x", "keywords": "notalist"}]}, "list of non-empty strings"),
    ],
)
def test_rules_config_errors_name_the_field(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RulesPolicy(params)


def test_load_aware_moves_off_a_busy_large_tier_only_when_small_has_room() -> None:
    p = pool()
    load = LoadAwareOverride({"queue_high": 4, "margin": 2})
    f = features()
    assert load.override("large", f, p) is None  # no metrics yet: nothing known
    scraped(p, "large-0", waiting=6)
    scraped(p, "small-0", waiting=0)
    assert load.override("large", f, p) == ("small", "load:large_busy")
    scraped(p, "small-0", waiting=5)  # 5 + 2 > 6: not roomier
    assert load.override("large", f, p) is None
    scraped(p, "small-0", waiting=0)
    scraped(p, "large-0", waiting=3)
    assert load.override("large", f, p) is None  # below queue_high


def test_load_aware_vice_versa_and_kv_cache() -> None:
    p = pool()
    load = LoadAwareOverride({})
    scraped(p, "small-0", waiting=0, kv=0.99)
    scraped(p, "large-0", waiting=0, kv=0.2)
    assert load.override("small", features(), p) == ("large", "load:small_busy")
    assert LoadAwareOverride({"to_large": False}).override("small", features(), p) is None


def test_load_aware_counts_requests_sent_since_the_last_scrape() -> None:
    p = pool()
    load = LoadAwareOverride({"queue_high": 4})
    scraped(p, "large-0", waiting=2)
    scraped(p, "small-0", waiting=0)
    assert load.override("large", features(), p) is None
    p.engines["large-0"].in_flight += 3  # a burst the metrics have not seen yet
    assert p.waiting(p.engines["large-0"]) == 5
    assert load.override("large", features(), p) == ("small", "load:large_busy")


def test_load_aware_ignores_stale_metrics_and_unhealthy_engines() -> None:
    p = EnginePool(make_settings().engines, metrics_stale_s=1.0)
    scraped(p, "large-0", waiting=50)
    scraped(p, "small-0", waiting=0)
    load = LoadAwareOverride({})
    assert load.override("large", features(), p) is not None
    p.engines["large-0"].metrics_at -= 5  # stale
    assert load.override("large", features(), p) is None
    scraped(p, "large-0", waiting=50)
    p.engines["small-0"].healthy = False
    assert load.override("large", features(), p) is None


def test_overrides_never_move_a_request_where_its_context_does_not_fit() -> None:
    p = pool()
    scraped(p, "large-0", waiting=50)
    scraped(p, "small-0", waiting=0)
    big = features(prompt_tokens=1900, max_tokens=400)  # 2300 > small's 2048
    assert LoadAwareOverride({}).override("large", big, p) is None
    assert BudgetOverride({}).override("large", features(budget_remaining_nusd=0), p) == (
        "small",
        "budget:low",
    )
    big_broke = features(prompt_tokens=1900, max_tokens=400, budget_remaining_nusd=0)
    assert BudgetOverride({}).override("large", big_broke, p) is None


def test_budget_override() -> None:
    p = pool()
    budget = BudgetOverride({"low_usd": 0.10})
    assert budget.override("large", features(budget_remaining_nusd=None), p) is None
    assert budget.override("large", features(budget_remaining_nusd=int(0.2e9)), p) is None
    assert budget.override("large", features(budget_remaining_nusd=int(0.05e9)), p) == (
        "small",
        "budget:low",
    )
    assert budget.override("small", features(budget_remaining_nusd=0), p) is None


def test_chain_composes_in_order_and_joins_reasons() -> None:
    p = pool()
    chain = build_policy(
        "chain",
        {
            "steps": [
                {"use": "rules", "max_prompt_tokens_small": 100},
                {"use": "load_aware", "queue_high": 2},
                {"use": "budget", "low_usd": 1},
            ]
        },
    )
    assert isinstance(chain, ChainPolicy)
    assert chain.choose(features(prompt_tokens=500), p) == ("large", "rules:long_prompt")
    scraped(p, "large-0", waiting=9)
    scraped(p, "small-0", waiting=0)
    assert chain.choose(features(prompt_tokens=500), p) == (
        "small",
        "rules:long_prompt;load:large_busy",
    )
    scraped(p, "large-0", waiting=0)
    assert chain.choose(features(prompt_tokens=500, budget_remaining_nusd=5), p) == (
        "small",
        "rules:long_prompt;budget:low",
    )


def test_chain_shares_top_level_params_with_every_step() -> None:
    s = make_settings([engine("a", "mini"), engine("b", "maxi")])
    p = EnginePool(s.engines)
    chain = build_policy(
        "chain",
        {
            "small_tier": "mini",
            "large_tier": "maxi",
            "steps": [{"use": "rules"}, {"use": "budget"}],
        },
    )
    assert chain.choose(features(has_tools=True), p) == ("maxi", "rules:tools")
    assert chain.choose(features(has_tools=True, budget_remaining_nusd=0), p) == (
        "mini",
        "rules:tools;budget:low",
    )


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown policy 'nope'"),
        ("chain", {}, "non-empty list of steps"),
        ("chain", {"steps": [{"use": "nope"}]}, r"steps\[0\].use: unknown policy"),
        ("chain", {"steps": [{"use": "rules"}, {"use": "rules"}]}, "unknown override 'rules'"),
        ("chain", {"steps": [{"name": "rules"}]}, "needs 'use: NAME'"),
        ("chain", {"steps": [{"use": "rules"}, {"use": "budget", "low": 1}]}, r"\(budget\)"),
        ("load_aware", {"queue_hihg": 3}, "unknown parameter"),
    ],
)
def test_registry_config_errors(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_policy(name, params)


def test_standalone_overrides_run_rules_first() -> None:
    p = pool()
    policy = build_policy("budget", {"low_usd": 1, "max_prompt_tokens_small": 10})
    assert policy.choose(features(prompt_tokens=50, budget_remaining_nusd=0), p) == (
        "small",
        "rules:long_prompt;budget:low",
    )
    assert set(REGISTRY) >= {"rules", "load_aware", "budget", "learned", "chain"}
    assert set(OVERRIDES) == {"load_aware", "budget"}
