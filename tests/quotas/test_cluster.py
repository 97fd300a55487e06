"""Quotas on a real 3-primary Redis Cluster (``redis-cli --cluster create`` on loopback)."""

from __future__ import annotations

import asyncio
import pathlib
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gateway.auth import Limits
from gateway.config import QuotaSettings
from gateway.errors import QuotaExceededError, QuotaStoreUnavailable, RateLimitError
from gateway.quotas.base import Demand
from gateway.quotas.cluster import ClusterLink, key_slot
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.redis import RedisQuotaStore
from gateway.quotas.redis_calls import make_link
from gateway.quotas.urls import ClusterTarget
from tests.quotas.conftest import FakeClock, principal
from tests.support.redis_cluster import ClusterSetup

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
async def make(cluster: ClusterSetup) -> AsyncIterator[Any]:
    made: list[FailoverQuotaStore] = []

    def factory(**overrides: Any) -> FailoverQuotaStore:
        settings = QuotaSettings.model_validate(
            {"backend": "redis", "redis_url": cluster.url, **overrides}
        )
        store = FailoverQuotaStore(RedisQuotaStore(settings, clock=FakeClock()), settings)
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.aclose()
    for node in cluster.nodes:
        if node.proc is not None and node.client().info("replication")["role"] == "master":
            node.client().flushall()


def on_different_primaries(cluster: ClusterSetup, prefix: str, n: int = 2) -> list[str]:
    """``n`` ids whose scopes (``k:<id>``) live on ``n`` different primaries."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        ident = f"{prefix}{i}"
        port = cluster.owner(f"tg:q:{{k:{ident}}}:st").port
        chosen.setdefault(port, ident)
        if len(chosen) == n:
            return list(chosen.values())
    raise LookupError("no spread found")


def test_cluster_urls_and_slots(cluster: ClusterSetup) -> None:
    t = ClusterTarget.parse("redis+cluster://:pw@n1:7000,n2?wait_replicas=1")
    assert (t.seeds, t.node.password, t.wait_replicas) == (
        (("n1", 7000), ("n2", 6379)), "pw", 1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="only database 0"):
        ClusterTarget.parse("redis+cluster://n1/2")
    settings = QuotaSettings.model_validate({"backend": "redis", "redis_url": cluster.url})
    assert isinstance(make_link(settings), ClusterLink)
    client = cluster.nodes[0].client()
    for key in ("a", "tg:q:{k:1}:rpm", "tg:q:{t:team}:st", "{}x", "x{}{y}", "é{k:é}"):
        assert key_slot(key) == client.execute_command("CLUSTER", "KEYSLOT", key), key


async def test_keys_of_different_api_keys_land_on_different_primaries(
    cluster: ClusterSetup, make: Any
) -> None:
    store = make()
    a, b = on_different_primaries(cluster, "spread")
    for key_id in (a, b):
        res = await store.reserve(
            principal(key_id, rpm=10, budget_total_usd=1.0), "r", Demand(1, 5)
        )
        await store.settle(res, Demand(1, 3))
    await store.drained()
    owner_a, owner_b = (cluster.owner(f"tg:q:{{k:{k}}}:st") for k in (a, b))
    assert owner_a.port != owner_b.port
    # Every key of one API key is on its slot's primary, none elsewhere.
    assert int(owner_a.client().get(f"tg:q:{{k:{a}}}:st") or 0) == 3
    assert int(owner_b.client().get(f"tg:q:{{k:{b}}}:st") or 0) == 3
    for key_id, owner in ((a, owner_a), (b, owner_b)):
        where = {n.port: len(n.client().keys(f"*{{k:{key_id}}}*")) for n in cluster.nodes}
        assert where.pop(owner.port) >= 5  # rpm, tpm, day, month, total, ...
        assert set(where.values()) == {0}


async def test_limits_are_exact_under_concurrency_across_slots(
    cluster: ClusterSetup, make: Any
) -> None:
    """A key and its team in different slots (on different primaries): each limit admits
    exactly its number, whichever scope refuses, and a refusal in one slot leaves no
    trace in the other (the cancelled hold gives back its request too)."""
    store = make()
    key_id, other = on_different_primaries(cluster, "exact")
    team = next(
        f"team{i}" for i in range(1000)
        if cluster.owner(f"tg:q:{{t:team{i}}}:st").port
        != cluster.owner(f"tg:q:{{k:{key_id}}}:st").port
    )  # fmt: skip
    # The team refuses: team rpm 50, key rpm 1000.
    p = principal(key_id, team=team, rpm=1000, team_limits=Limits(rpm=50))
    results = await asyncio.gather(
        *(store.reserve(p, f"t{i}", Demand(1, 0)) for i in range(120)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 50
    assert all(isinstance(r, RateLimitError) for r in results if isinstance(r, BaseException))
    key_owner = cluster.owner(f"tg:q:{{k:{key_id}}}:st").client()
    minute = store.primary.windows().minute
    assert int(key_owner.get(f"tg:q:{{k:{key_id}}}:rpm:{minute}") or 0) == 50
    # The key refuses: key concurrency 7 (in flight), a second key of the team fills it.
    q = principal(other, team=team, concurrency=7, team_limits=Limits(concurrency=100))
    results = await asyncio.gather(
        *(store.reserve(q, f"c{i}", Demand(1, 0)) for i in range(40)), return_exceptions=True
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    assert len(held) == 7
    team_owner = cluster.owner(f"tg:q:{{t:{team}}}:st").client()
    assert team_owner.zcard(f"tg:q:{{t:{team}}}:inf") == 50 + 7  # the refused left nothing
    for res in held:
        await store.settle(res, Demand(1, 0))
    await store.drained()
    assert team_owner.zcard(f"tg:q:{{t:{team}}}:inf") == 50


async def test_a_shared_team_budget_is_never_overrun(cluster: ClusterSetup, make: Any) -> None:
    store = make()
    keys = on_different_primaries(cluster, "budget", 3)
    team_budget, worst = 400_000, 10_000
    ps = [
        principal(k, team="spenders", budget_total_usd=1.0,
                  team_limits=Limits(budget_total_usd=team_budget / 1e9))
        for k in keys
    ]  # fmt: skip
    rng = random.Random(3)
    settled: dict[str, int] = dict.fromkeys(keys, 0)

    async def one(i: int) -> None:
        p = ps[i % len(ps)]
        try:
            res = await store.reserve(p, f"b{i}", Demand(1, worst))
        except QuotaExceededError:
            return
        await asyncio.sleep(rng.random() * 0.002)
        actual = rng.randint(worst // 4, worst)
        await store.settle(res, Demand(1, actual))
        settled[p.key_id] += actual

    for wave in range(10):
        await asyncio.gather(*(one(wave * 30 + i) for i in range(30)))
    await store.drained()
    spent = sum(settled.values())
    team_owner = cluster.owner("tg:q:{t:spenders}:st").client()
    assert int(team_owner.get("tg:q:{t:spenders}:st") or 0) == spent
    assert team_budget - worst < spent <= team_budget
    for k in keys:
        owner = cluster.owner(f"tg:q:{{k:{k}}}:st").client()
        assert int(owner.get(f"tg:q:{{k:{k}}}:st") or 0) == settled[k]
    assert await store.spend_totals("day") == {k: v for k, v in settled.items() if v}


async def test_a_primary_without_the_scripts_does_not_make_others_run_twice(
    cluster: ClusterSetup, make: Any
) -> None:
    """A promoted replica lacks the scripts (SCRIPT LOAD is not replicated): only the
    calls it refused are sent again, not the other slot's reservation."""
    store = make()
    await store.primary.ping()
    key_id, team_key = on_different_primaries(cluster, "noscript")
    team_node = cluster.owner(f"tg:q:{{k:{team_key}}}:st")
    team = next(f"ns{i}" for i in range(1000) if cluster.owner(f"tg:q:{{t:ns{i}}}:st") is team_node)
    team_node.client().script_flush()
    p = principal(key_id, team=team, rpm=10, team_limits=Limits(rpm=10))
    await store.reserve(p, "once", Demand(1, 0))
    minute = store.primary.windows().minute
    key_node = cluster.owner(f"tg:q:{{k:{key_id}}}:st")
    assert int(key_node.client().get(f"tg:q:{{k:{key_id}}}:rpm:{minute}") or 0) == 1
    assert int(team_node.client().get(f"tg:q:{{t:{team}}}:rpm:{minute}") or 0) == 1


class _Ledger:
    """Spend as a ledger would report it: 7000 nano-USD for key ``seedme``, team ``st``."""

    async def spend_since(self, since: Any) -> list[tuple[str, str | None, int]]:
        return [("seedme", "st", 7000)]


async def test_spend_is_seeded_per_scope_under_its_own_marker(cluster: ClusterSetup) -> None:
    settings = QuotaSettings.model_validate({"backend": "redis", "redis_url": cluster.url})
    primary = RedisQuotaStore(settings, clock=FakeClock())
    store = FailoverQuotaStore(primary, settings, spend_source=_Ledger())
    try:
        assert await primary.is_seeded()  # nothing known to be missing yet
        p = principal("seedme", team="st", budget_total_usd=1.0)
        await store.reserve(p, "first", Demand(1, 100))
        assert primary.needs_seed  # a scope without its marker: a new or emptied slot
        assert not await primary.is_seeded()
        await store.seed()
        assert not primary.needs_seed and await primary.is_seeded()
        for scope in ("k:seedme", "t:st"):
            owner = cluster.owner(f"tg:q:{{{scope}}}:st").client()
            assert int(owner.get(f"tg:q:{{{scope}}}:st") or 0) == 7000 + 100  # ledger + hold
            assert owner.exists(f"tg:q:{{{scope}}}:seeded")
        # Another replica that also saw the marker missing seeds too late: no-op.
        late = RedisQuotaStore(settings, clock=FakeClock())
        late._unseeded.update({"k:seedme", "t:st"})
        assert not await late.seed(_Ledger())
        await late.aclose()
        owner = cluster.owner("tg:q:{k:seedme}:st").client()
        assert int(owner.get("tg:q:{k:seedme}:st") or 0) == 7100
    finally:
        await store.aclose()


async def test_moved_and_ask_are_followed(cluster: ClusterSetup) -> None:
    link = ClusterLink(cluster.url, timeout_s=0.5, connect_timeout_s=2.0)
    try:
        await link.refresh()
        key = "{moved}k"
        right = link.slot_owner(key_slot(key))
        wrong = next(n for n in cluster.nodes if ("127.0.0.1", n.port) != right)
        # A stale map: every slot on one node. MOVED is followed, and the map refreshed.
        link._slots = [("127.0.0.1", wrong.port)] * len(link._slots)
        before = link.refreshes
        assert await link.call("SET", key, "v") == b"OK"
        assert await link.call("GET", key) == b"v"
        assert link.refreshes == before + 1
        assert link.slot_owner(key_slot(key)) == right
        # A slot being migrated: a key the source no longer has is asked of the target.
        key = "{asked}k"
        slot = key_slot(key)
        src = next(n for n in cluster.nodes if ("127.0.0.1", n.port) == link.slot_owner(slot))
        dst = next(n for n in cluster.nodes if n is not src)
        dst.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(src))
        src.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(dst))
        try:
            assert await link.call("SET", key, "there") == b"OK"
            assert dst.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
            assert src.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        finally:
            for node in (src, dst):
                node.client().execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    finally:
        await link.aclose()


async def test_a_primary_killed_mid_load_fails_over_with_spend_exact(
    tmp_path: pathlib.Path,
) -> None:
    """3 primaries with 2 replicas each; the primary of a team's slot is SIGKILLed after
    100 settled requests (40 at a time). The cluster promotes a replica, the link
    refreshes its map, and with ``wait_replicas=1`` nothing confirmed is lost: every
    scope's spend equals what was settled, the team budget holds and is used up."""
    setup = ClusterSetup(tmp_path, replicas=2)
    await asyncio.to_thread(setup.start)
    try:
        settings = QuotaSettings.model_validate(
            {
                "backend": "redis",
                "redis_url": setup.url + "?wait_replicas=1",
                "redis_timeout_s": 0.25,
                "breaker_failures": 2,
                "breaker_open_s": 0.2,
            }
        )
        store = FailoverQuotaStore(RedisQuotaStore(settings, clock=FakeClock()), settings)
        keys = on_different_primaries(setup, "fo", 3)
        worst, budget = 10_000, 3_000_000
        ps = [
            principal(k, team="fo-team", budget_total_usd=1.0,
                      team_limits=Limits(budget_total_usd=budget / 1e9))
            for k in keys
        ]  # fmt: skip
        victim = setup.owner("tg:q:{t:fo-team}:st")
        rng = random.Random(11)
        settled: dict[str, int] = dict.fromkeys(keys, 0)
        count = 0
        unavailable = 0
        enough, killed = asyncio.Event(), asyncio.Event()

        async def worker(w: int) -> None:
            nonlocal count, unavailable
            for i in range(10_000):
                p = ps[(w + i) % len(ps)]
                try:
                    res = await store.reserve(p, f"w{w}-{i}", Demand(1, worst))
                except QuotaStoreUnavailable:
                    unavailable += 1
                    await asyncio.sleep(0.01)  # pacing while a shard is out
                    continue
                except QuotaExceededError:
                    if killed.is_set():
                        return
                    raise
                await asyncio.sleep(rng.random() * 0.002)
                actual = rng.randint(worst // 2, worst)
                await store.settle(res, Demand(1, actual))
                settled[p.key_id] += actual
                count += 1
                if count == 100:
                    enough.set()

        async def killer() -> None:
            await enough.wait()
            await asyncio.to_thread(victim.kill)
            killed.set()

        async with asyncio.timeout(60):
            kill = asyncio.create_task(killer())
            await asyncio.gather(*(worker(w) for w in range(40)))
            await kill
            for i in range(10_000):  # one at a time to the end: refused with nothing held
                try:
                    res = await store.reserve(ps[0], f"last{i}", Demand(1, worst))
                except QuotaExceededError:
                    break
                await store.settle(res, Demand(1, worst // 2))
                settled[keys[0]] += worst // 2
            await store.drained()
        await store.aclose()
        new = setup.owner("tg:q:{t:fo-team}:st")
        assert new.port != victim.port and unavailable > 0
        spent = sum(settled.values())
        assert int(new.client().get("tg:q:{t:fo-team}:st") or 0) == spent
        assert budget - worst < spent <= budget
        for k in keys:
            owner = setup.owner(f"tg:q:{{k:{k}}}:st").client()
            assert int(owner.get(f"tg:q:{{k:{k}}}:st") or 0) == settled[k], k
            assert int(owner.get(f"tg:q:{{k:{k}}}:held") or 0) == 0
    finally:
        await asyncio.to_thread(setup.stop)
