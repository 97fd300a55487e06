"""The ``scored`` balancer: prefix hits bounded by queue, KV usage and in-flight load."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, Settings
from gateway.routing.health import Breakers
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.routing.scorer import ReplicaScorer
from tests.routing.helpers import engine, features, make_settings

BLOCKS = tuple(range(100, 110))


def setup(n: int = 2, **scorer: Any) -> tuple[ReplicaScorer, EnginePool]:
    replicas = [engine(f"s{i}", "small") for i in range(n)]
    s = make_settings(replicas, balancer="scored", scorer=scorer)
    p = EnginePool(s.engines)
    return ReplicaScorer(s.routing.scorer, p), p


def test_a_prefix_returns_to_the_replica_it_was_sent_to() -> None:
    sc, p = setup(4)
    engines = list(p.engines.values())
    first = sc.order(engines, BLOCKS).engines[0]
    for _ in range(10):
        assert sc.order(engines, BLOCKS).engines[0] is first
    # a longer turn of the same conversation too
    assert sc.order(engines, (*BLOCKS, 111, 112)).engines[0] is first


def test_without_prefixes_requests_spread_like_least_outstanding() -> None:
    sc, p = setup(4)
    engines = list(p.engines.values())
    firsts = Counter(sc.order(engines, ()).engines[0].name for _ in range(40))
    assert firsts == {"s0": 10, "s1": 10, "s2": 10, "s3": 10}
    engines[2].in_flight = 0
    engines[0].in_flight = engines[1].in_flight = engines[3].in_flight = 2
    assert all(sc.order(engines, ()).engines[0].name == "s2" for _ in range(8))


def test_load_bounds_the_prefix_advantage() -> None:
    # w_prefix 1, w_inflight 0.5, scale 4: a full match is worth 8 outstanding requests
    sc, p = setup(2, w_prefix=1.0, w_inflight=0.5, inflight_scale=4, w_queue=0, w_kv=0)
    engines = list(p.engines.values())
    home = sc.order(engines, BLOCKS).engines[0]
    other = next(e for e in engines if e is not home)
    home.in_flight = 3
    assert sc.order(engines, BLOCKS).engines[0] is home  # 1 - 0.375 > 0
    home.in_flight = 20  # capped at 1 -> 1 - 0.5 = 0.5 > 0: still home
    assert sc.order(engines, BLOCKS).engines[0] is home
    sc2, p2 = setup(2, w_prefix=1.0, w_inflight=2.0, w_queue=0, w_kv=0)
    e2 = list(p2.engines.values())
    home2 = sc2.order(e2, BLOCKS).engines[0]
    home2.in_flight = 4  # 1 - 2 * 1 < 0: the idle replica wins
    assert sc2.order(e2, BLOCKS).engines[0] is not home2
    assert other is not home


def test_scraped_queue_and_kv_usage_count_when_fresh() -> None:
    sc, p = setup(2, w_prefix=0, w_inflight=0, w_queue=1.0, w_kv=1.0)
    a, b = p.engines["s0"], p.engines["s1"]
    now = time.monotonic()
    a.kv_cache_usage, a.metrics_at = 0.9, now
    b.kv_cache_usage, b.metrics_at = 0.1, now
    assert all(sc.order([a, b], ()).engines[0] is b for _ in range(4))
    b.waiting = 4  # a full queue (scale 4) outweighs the KV difference
    assert all(sc.order([a, b], ()).engines[0] is a for _ in range(4))
    a.metrics_at = b.metrics_at = now - 60  # stale: ignored, ties take turns
    assert {sc.order([a, b], ()).engines[0].name for _ in range(4)} == {"s0", "s1"}


def test_note_names_score_and_weights_and_debug_log_has_every_replica(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sc, p = setup(3, w_prefix=2.0)
    engines = list(p.engines.values())
    sc.order(engines, BLOCKS)
    with caplog.at_level(logging.DEBUG, logger="gateway.routing.scorer"):
        scored = sc.order(engines, BLOCKS)
    assert scored.note == "replica=score:2.00,w:2/0.5/0.25/0.5"
    rec = next(r for r in caplog.records if r.message == "replica scores")
    assert rec.weights == {"prefix": 2.0, "queue": 0.5, "kv": 0.25, "inflight": 0.5}
    assert set(rec.scores) == {"s0", "s1", "s2"} and rec.chosen == scored.engines[0].name


def test_router_uses_the_scorer_and_keeps_every_engine_for_retries() -> None:
    s = make_settings([engine(f"s{i}", "small") for i in range(8)], balancer="scored")
    p = EnginePool(s.engines)
    r = Router(s, p, Breakers(s.routing.breaker))
    system = {"role": "system", "content": "z" * 3000}
    raw = {"messages": [system, {"role": "user", "content": "hi"}]}
    f = dataclasses.replace(features(), prefix_blocks=r.prefix_blocks(raw))
    d1 = r.decide(s.models[0], f)
    d2 = r.decide(s.models[0], f)
    assert len(f.prefix_blocks) == 11
    assert d1.candidates[0] is d2.candidates[0]
    assert sorted(e.name for e in d2.candidates if e.tier == "small") == [f"s{i}" for i in range(8)]
    assert d2.replica_note.startswith("replica=score:1.00") and d2.reason == "by_name"
    assert r.describe()["scorer"]["w_prefix"] == 1.0


def test_weights_are_validated_through_settings(tmp_path: Path) -> None:
    def load(routing: dict[str, Any]) -> Settings:
        cfg = {
            "engines": [engine("s0", "small"), engine("s1", "small")],
            "models": [{"name": "small", "tier": "small"}],
            "routing": routing,
        }
        path = tmp_path / "tollgate.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return Settings.load(path)

    ok = load({"balancer": "scored", "scorer": {"w_prefix": 3, "block_chars": 128}})
    assert ok.routing.scorer.w_prefix == 3.0 and ok.routing.scorer.block_chars == 128
    bad_cases = [
        ({"w_prefix": -1}, "routing.scorer.w_prefix"),
        ({"queue_scale": 0}, "routing.scorer.queue_scale"),
        ({"typo": 1}, "routing.scorer.typo"),
        ({"block_chars": 4}, "routing.scorer.block_chars"),
        ({"w_prefix": 0, "w_queue": 0, "w_kv": 0, "w_inflight": 0}, "at least one weight"),
    ]
    for bad, where in bad_cases:
        with pytest.raises(ConfigError, match=re.escape(where)):
            load({"balancer": "scored", "scorer": bad})
    with pytest.raises(ConfigError, match=r"routing\.balancer"):
        load({"balancer": "best"})
