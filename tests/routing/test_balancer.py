"""Replica choice: least outstanding, power of two choices, bounded prefix affinity."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from gateway.routing.balancer import Balancer, prefix_hash
from gateway.routing.pool import EnginePool
from tests.routing.helpers import engine, make_settings


def setup(n: int = 3, **routing: Any) -> tuple[Balancer, EnginePool]:
    s = make_settings([engine(f"s{i}", "small") for i in range(n)], **routing)
    p = EnginePool(s.engines)
    return Balancer(s.routing, p, random.Random(1)), p


def test_least_outstanding_orders_by_in_flight_plus_queue_over_weight() -> None:
    s = make_settings(
        [engine("a", "small"), engine("b", "small"), engine("c", "small", weight=4.0)]
    )
    p = EnginePool(s.engines)
    b = Balancer(s.routing, p)
    a_, b_, c_ = (p.engines[n] for n in "abc")
    a_.in_flight, b_.in_flight, c_.in_flight = 3, 1, 6  # c: 6 / 4 = 1.5
    assert [e.name for e in b.order([a_, b_, c_])] == ["b", "c", "a"]


def test_p2c_takes_the_less_loaded_of_two_using_scraped_queues() -> None:
    b, p = setup(2, balancer="p2c")
    x, y = p.engines["s0"], p.engines["s1"]
    # Equal in this gateway's view, but the engine reports a queue from other replicas.
    y.waiting, y.running, y.metrics_at = 10, 4, time.monotonic()
    firsts = Counter(b.order([x, y])[0].name for _ in range(50))
    assert firsts == {"s0": 50}


def test_p2c_spreads_when_loads_are_equal() -> None:
    b, p = setup(4, balancer="p2c")
    engines = list(p.engines.values())
    firsts = Counter(b.order(engines)[0].name for _ in range(400))
    assert set(firsts) == {"s0", "s1", "s2", "s3"}
    assert min(firsts.values()) > 50  # roughly uniform, seeded


def test_order_always_lists_every_engine_once() -> None:
    for routing in ({}, {"balancer": "p2c"}, {"prefix_affinity": True}):
        b, p = setup(4, **routing)
        engines = list(p.engines.values())
        assert sorted(e.name for e in b.order(engines, prefix=12345)) == ["s0", "s1", "s2", "s3"]


def test_prefix_affinity_is_consistent_and_spreads_prefixes() -> None:
    b, p = setup(4, prefix_affinity=True)
    engines = list(p.engines.values())
    choices = {h: b.order(engines, prefix=h)[0].name for h in range(1, 200)}
    assert all(b.order(engines, prefix=h)[0].name == name for h, name in choices.items())
    assert set(choices.values()) == {"s0", "s1", "s2", "s3"}


def test_prefix_affinity_falls_back_to_least_loaded_above_the_load_bound() -> None:
    b, p = setup(2, prefix_affinity=True, affinity_load_factor=1.5)
    engines = list(p.engines.values())
    preferred = b.order(engines, prefix=777)[0]
    other = next(e for e in engines if e is not preferred)
    preferred.in_flight = 2  # bound: ceil(1.5 * (2 + 1) / 2) = 3 -> 2 + 1 <= 3, still preferred
    assert b.order(engines, prefix=777)[0] is preferred
    preferred.in_flight = 4  # ceil(1.5 * 5 / 2) = 4 < 5 -> least loaded instead
    assert b.order(engines, prefix=777)[0] is other


def test_prefix_hash_is_stable_across_turns_of_a_conversation() -> None:
    sys = {"role": "system", "content": "You are terse."}
    turn1 = {"messages": [sys, {"role": "user", "content": "plan a trip"}]}
    turn2 = {
        "messages": [
            sys,
            {"role": "user", "content": "plan a trip"},
            {"role": "assistant", "content": "where to?"},
            {"role": "user", "content": "Lisbon"},
        ]
    }
    other = {"messages": [sys, {"role": "user", "content": "write a poem"}]}
    h1 = prefix_hash(turn1, 1024)
    assert h1 != 0 and h1 == prefix_hash(turn2, 1024)
    assert prefix_hash(other, 1024) != h1
    # A long system prompt alone decides once it fills the window.
    long_sys = {"role": "system", "content": "x" * 2000}
    a = {"messages": [long_sys, {"role": "user", "content": "a"}]}
    b = {"messages": [long_sys, {"role": "user", "content": "b"}]}
    assert prefix_hash(a, 1024) == prefix_hash(b, 1024)
    assert prefix_hash({"prompt": "abc"}, 16) == prefix_hash({"prompt": "abc"}, 16) != 0
    assert prefix_hash({"messages": []}, 16) == 0


def test_least_outstanding_ties_take_turns() -> None:
    b, p = setup(3)
    engines = list(p.engines.values())
    firsts = Counter(b.order(engines)[0].name for _ in range(30))
    assert firsts == {"s0": 10, "s1": 10, "s2": 10}
