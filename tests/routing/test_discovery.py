"""Engine replicas: static URL lists, DNS discovery, retirement, and readiness per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from gateway.config import BreakerSettings, TimeoutSettings
from gateway.routing.discovery import EngineDiscovery, replica_settings, resolve_dns
from gateway.routing.health import Breakers
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.upstream.http import HttpTransport
from tests.routing.helpers import FakeClock, engine, features, make_settings


class FakeResolver:
    """Answers what the test says a name resolves to; an OSError stands for a failed lookup."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        self.calls.append((host, port))
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


def dns_entry(name: str, tier: str, host: str = "engine-small-headless") -> dict[str, Any]:
    return {
        "name": name,
        "url": f"http://{host}:8000",
        "discover": "dns",
        "tier": tier,
        "model": f"model-{tier}",
        "max_concurrency": 3,
    }


def build(resolver: FakeResolver, entries: list[dict[str, Any]]) -> tuple[Any, ...]:
    s = make_settings(entries)
    pool = EnginePool(s.engines)
    breakers = Breakers(BreakerSettings())
    client = HttpTransport(TimeoutSettings())
    discovery = EngineDiscovery(pool, client, breakers, s.engines, resolver)
    return s, pool, breakers, discovery


def test_urls_make_one_replica_each() -> None:
    s = make_settings(
        [
            {
                "name": "small",
                "urls": ["http://10.0.0.1:8000", "http://10.0.0.2:8000/"],
                "tier": "small",
                "model": "m",
                "max_concurrency": 7,
            },
            engine("large-0", "large"),
        ]
    )
    pool = EnginePool(s.engines)
    assert [e.name for e in pool.by_tier["small"]] == ["small-0", "small-1"]
    assert [e.url for e in pool.by_tier["small"]] == [
        "http://10.0.0.1:8000",
        "http://10.0.0.2:8000",
    ]
    assert all(e.settings.max_concurrency == 7 for e in pool.by_tier["small"])


def test_replica_settings_names_and_urls() -> None:
    s = make_settings([dns_entry("small", "small"), engine("large-0", "large")])
    r = replica_settings(s.engines[0], "10.1.2.3", 8000)
    assert (r.name, r.url, r.tier, r.max_concurrency) == (
        "small-10.1.2.3-8000",
        "http://10.1.2.3:8000",
        "small",
        3,
    )
    v6 = replica_settings(s.engines[0], "fd00::1", 8000)
    assert (v6.name, v6.url) == ("small-fd00__1-8000", "http://[fd00::1]:8000")


async def test_dns_replicas_follow_the_records() -> None:
    resolver = FakeResolver({"engine-small-headless": [("10.0.0.1", 8000), ("10.0.0.2", 8000)]})
    s, pool, breakers, discovery = build(
        resolver, [dns_entry("small", "small"), engine("large-0", "large")]
    )
    assert pool.by_tier["small"] == []  # nothing until the first lookup
    router = Router(s, pool, breakers)
    await discovery.refresh_once()
    assert resolver.calls == [("engine-small-headless", 8000)]
    assert sorted(e.name for e in pool.by_tier["small"]) == [
        "small-10.0.0.1-8000",
        "small-10.0.0.2-8000",
    ]
    decision = router.decide(router.resolve("small"), features())
    assert {e.name for e in decision.candidates[:2]} == {
        "small-10.0.0.1-8000",
        "small-10.0.0.2-8000",
    }

    # One pod goes, one comes; the one that left still has a request in flight.
    gone = pool.engines["small-10.0.0.1-8000"]
    slot = await pool.acquire(gone)
    resolver.answers["engine-small-headless"] = [("10.0.0.2", 8000), ("10.0.0.3", 8000)]
    await discovery.refresh_once()
    assert sorted(e.name for e in pool.by_tier["small"]) == [
        "small-10.0.0.2-8000",
        "small-10.0.0.3-8000",
    ]
    assert gone.retired and "small-10.0.0.1-8000" in pool.retired  # draining
    decision = router.decide(router.resolve("small"), features())
    assert gone not in decision.candidates
    slot.release()
    await discovery.sweep()
    assert pool.retired == {}

    # A failed lookup keeps what is known; an answer with no records empties the tier.
    resolver.answers["engine-small-headless"] = OSError("SERVFAIL")
    await discovery.refresh_once()
    assert len(pool.by_tier["small"]) == 2
    resolver.answers["engine-small-headless"] = []
    await discovery.refresh_once()
    assert pool.by_tier["small"] == []
    decision = router.decide(router.resolve("small"), features())
    assert [e.name for e in decision.candidates] == ["large-0"]  # fallback


async def test_a_returning_replica_keeps_its_engine() -> None:
    resolver = FakeResolver({"engine-small-headless": [("10.0.0.1", 8000)]})
    _, pool, _, discovery = build(resolver, [dns_entry("small", "small")])
    await discovery.refresh_once()
    e = pool.engines["small-10.0.0.1-8000"]
    slot = await pool.acquire(e)
    resolver.answers["engine-small-headless"] = []
    await discovery.refresh_once()
    assert e.retired
    resolver.answers["engine-small-headless"] = [("10.0.0.1", 8000)]
    await discovery.refresh_once()
    assert pool.engines["small-10.0.0.1-8000"] is e and not e.retired and e.in_flight == 1
    slot.release()
    assert e.in_flight == 0


async def test_subscribers_hear_every_change() -> None:
    resolver = FakeResolver({"engine-small-headless": [("10.0.0.1", 8000)]})
    _, pool, _, discovery = build(resolver, [dns_entry("small", "small"), engine("l", "large")])
    seen: list[tuple[str, bool]] = []
    pool.subscribe(lambda e, added: seen.append((e.name, added)))
    assert seen == [("l", True)]
    await discovery.refresh_once()
    resolver.answers["engine-small-headless"] = []
    await discovery.refresh_once()
    assert seen[1:] == [("small-10.0.0.1-8000", True), ("small-10.0.0.1-8000", False)]


async def test_default_resolver_is_getaddrinfo() -> None:
    assert await resolve_dns("127.0.0.1", 8123) == [("127.0.0.1", 8123)]
    with pytest.raises(OSError):
        await resolve_dns("no-such-host.invalid", 80)


def test_servable_counts_fallback() -> None:
    clock = FakeClock()
    s = make_settings([engine("small-0", "small"), engine("large-0", "large")])
    pool = EnginePool(s.engines)
    breakers = Breakers(BreakerSettings(), clock=clock)
    router = Router(s, pool, breakers)
    models = {m.name: m for m in s.models}
    assert all(router.servable(m) for m in s.models)
    breakers.health_failed(pool.engines["large-0"])
    assert breakers.describe(pool.engines["large-0"]) == "ejected"
    assert all(router.servable(m) for m in s.models)  # large falls back to small
    breakers.health_failed(pool.engines["small-0"])
    assert not any(router.servable(m) for m in s.models)
    breakers.health_passed(pool.engines["small-0"])
    assert router.servable(models["large"])

    no_fallback = make_settings(
        [engine("small-0", "small"), engine("large-0", "large")], fallback=False
    )
    pool = EnginePool(no_fallback.engines)
    breakers = Breakers(BreakerSettings(), clock=clock)
    router = Router(no_fallback, pool, breakers)
    breakers.health_failed(pool.engines["large-0"])
    servable = {m.name: router.servable(m) for m in no_fallback.models}
    assert servable == {"small": True, "large": False, "auto": False}


def test_breaker_describe() -> None:
    clock = FakeClock()
    s = make_settings()
    pool = EnginePool(s.engines)
    breakers = Breakers(BreakerSettings(failure_threshold=1, open_seconds=5), clock=clock)
    e = pool.engines["small-0"]
    assert breakers.describe(e) == "closed"
    breakers.failure(e)
    assert breakers.describe(e) == "open"
    clock.advance(6)
    assert breakers.describe(e) == "half_open"
