"""Quotas behind Sentinel: real redis-server primary and replicas, three real sentinels."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.auth import Limits
from gateway.config import QuotaSettings
from gateway.errors import QuotaExceededError, QuotaStoreUnavailable
from gateway.quotas.base import Demand
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.link import LinkError, RedisLink, ReplyError
from gateway.quotas.redis import RedisQuotaStore
from gateway.quotas.redis_calls import make_link
from gateway.quotas.sentinel import SentinelLink
from gateway.quotas.urls import RedisTarget, SentinelTarget, parse_url
from tests.quotas.conftest import FakeClock, principal
from tests.support.redis_sentinel import SentinelSetup

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A setup the tests here do not break (the failover test makes its own)."""
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel"), replicas=1).start()
    try:
        yield setup
    finally:
        setup.stop()


def test_sentinel_urls_parse() -> None:
    t = SentinelTarget.parse(
        "redis+sentinel://:p%40ss@s1:26380,[::1],s3/tollgate/2?sentinel_password=x&wait_replicas=1"
    )
    assert t.sentinels == (("s1", 26380), ("::1", 26379), ("s3", 26379))
    assert (t.service, t.primary.db, t.primary.password, t.primary.username) == (
        "tollgate", 2, "p@ss", None,
    )  # fmt: skip
    assert (t.sentinel_password, t.wait_replicas) == ("x", 1)
    assert isinstance(parse_url("redis://h:1/0"), RedisTarget)
    with pytest.raises(ValueError, match="service_name"):
        SentinelTarget.parse("redis+sentinel://s1:26379")
    with pytest.raises(ValueError, match="port must be a number"):
        SentinelTarget.parse("redis+sentinel://s1:x/svc")
    with pytest.raises(ValueError, match="starts with"):
        parse_url("http://h")
    settings = QuotaSettings.model_validate(
        {"backend": "redis", "redis_url": "redis+sentinel://s1,s2/svc"}
    )
    assert isinstance(make_link(settings), SentinelLink)
    with pytest.raises(ValueError, match="redis_url: the Redis database must be a number"):
        QuotaSettings.model_validate({"backend": "redis", "redis_url": "redis+sentinel://s/v/x"})


async def test_the_link_connects_to_the_primary_the_sentinels_name(
    sentinels: SentinelSetup,
) -> None:
    link = SentinelLink(sentinels.url(), timeout_s=0.5, connect_timeout_s=2.0)
    try:
        assert await link.call("SET", "where", "primary") == b"OK"
        assert link.primary_address == ("127.0.0.1", sentinels.primary.port)
        assert sentinels.primary.client().get("where") == b"primary"
    finally:
        await link.aclose()


async def test_a_node_that_is_not_the_primary_is_refused(sentinels: SentinelSetup) -> None:
    replica = sentinels.replicas[0]

    class Misled(SentinelLink):
        async def ask_sentinels(self) -> tuple[str, int]:
            return "127.0.0.1", replica.port  # a sentinel that has not seen a failover

    link = Misled(sentinels.url(), timeout_s=0.5, connect_timeout_s=2.0)
    try:
        with pytest.raises(LinkError, match="not the primary"):
            await link.call("PING")
        assert not link.connected
    finally:
        await link.aclose()


async def test_a_readonly_reply_drops_the_connection(sentinels: SentinelSetup) -> None:
    # What a demoted primary answers a write script with; the next call reconnects.
    link = RedisLink(sentinels.replicas[0].url, timeout_s=0.5, connect_timeout_s=2.0)
    try:
        (reply,) = await link.call_many([("EVAL", "return redis.call('SET', 'a', 1)", 0)])
        assert isinstance(reply, ReplyError) and reply.code == "READONLY"
        assert link.connected
        link.note_errors([reply])
        assert not link.connected
        assert await link.call("PING") == b"PONG"
    finally:
        await link.aclose()


async def test_no_sentinel_answering_is_a_link_error(tmp_path: Path) -> None:
    link = SentinelLink("redis+sentinel://127.0.0.1:1/svc", timeout_s=0.2, connect_timeout_s=1.0)
    with pytest.raises(LinkError, match="No sentinel named the primary"):
        await link.call("PING")
    await link.aclose()


# ---------------------------------------------------------------------- failover

WORKERS = 40
WORST = 10_000  # nano-USD reserved per request
BUDGET = 3_000_000  # about 400 requests at the actual cost below
TEAM_RPM = 100_000  # never reached: counted, to check nothing is counted twice
KILL_AFTER = 120  # settled requests before the primary dies


@pytest.fixture
async def failing_over(tmp_path: Path) -> AsyncIterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path, replicas=2)
    await asyncio.to_thread(setup.start)
    try:
        yield setup
    finally:
        await asyncio.to_thread(setup.stop)


async def test_killing_the_primary_mid_load_keeps_limits_exact(
    failing_over: SentinelSetup,
) -> None:
    """Hundreds of requests, 40 at a time; the primary is SIGKILLed after 120. The
    sentinels promote a replica and the store follows. With ``wait_replicas=1`` no
    confirmed write is lost: spend equals what was settled, exactly, and the budget
    holds; the rate counter errs only on the refusing side, by at most the
    reservations whose outcome was unknown."""
    setup = failing_over
    settings = QuotaSettings.model_validate(
        {
            "backend": "redis",
            "redis_url": setup.url(wait_replicas=1),
            "redis_timeout_s": 0.25,
            "breaker_failures": 2,
            "breaker_open_s": 0.2,
        }
    )
    store = FailoverQuotaStore(RedisQuotaStore(settings, clock=FakeClock()), settings)
    await store.primary.ping()
    await store.seed()
    p = principal(
        "sentinel-key", team="sentinel-team", budget_total_usd=BUDGET / 1e9,
        team_limits=Limits(rpm=TEAM_RPM),
    )  # fmt: skip
    rng = random.Random(7)
    settled: list[int] = []
    admitted = unavailable = 0
    killed, enough = asyncio.Event(), asyncio.Event()
    old_port = setup.primary.port

    async def worker(w: int) -> None:
        nonlocal admitted, unavailable
        for i in range(10_000):
            try:
                res = await store.reserve(p, f"w{w}-{i}", Demand(1, WORST))
            except QuotaStoreUnavailable:
                unavailable += 1
                await asyncio.sleep(0.01)  # pacing while Redis is out, not synchronisation
                continue
            except QuotaExceededError:
                if killed.is_set():
                    return
                raise
            admitted += 1
            await asyncio.sleep(rng.random() * 0.002)
            actual = rng.randint(WORST // 2, WORST)
            await store.settle(res, Demand(1, actual))
            settled.append(actual)
            if len(settled) == KILL_AFTER:
                enough.set()

    async def killer() -> None:
        await enough.wait()
        await asyncio.to_thread(setup.kill_primary)
        killed.set()

    started = time.monotonic()
    kill = asyncio.create_task(killer())
    async with asyncio.timeout(60):
        await asyncio.gather(*(worker(w) for w in range(WORKERS)))
        await kill
        while True:  # one at a time to the end: refused only when nothing is held
            try:
                res = await store.reserve(p, f"last-{len(settled)}", Demand(1, WORST))
            except QuotaExceededError:
                break
            admitted += 1
            await store.settle(res, Demand(1, WORST // 2))
            settled.append(WORST // 2)
        await store.drained()
    new = await asyncio.to_thread(setup.wait_failover, old_port)
    elapsed = time.monotonic() - started
    link = store.primary.link
    assert isinstance(link, SentinelLink)
    assert link.primary_address == ("127.0.0.1", new.port) != ("127.0.0.1", old_port)
    assert unavailable > 0  # the outage was seen...
    assert len(settled) > KILL_AFTER + 100  # ...and traffic went on after it
    assert status_ok(store)
    await store.aclose()

    c = new.client()
    spent = sum(settled)
    for scope in ("k:sentinel-key", "t:sentinel-team"):
        assert int(c.get(f"tg:q:{{{scope}}}:st") or 0) == spent, scope  # not lost, not twice
        assert int(c.get(f"tg:q:{{{scope}}}:held") or 0) == 0
        assert c.zcard(f"tg:q:{{{scope}}}:inf") == 0
    assert BUDGET - WORST < spent <= BUDGET  # the budget was used up, never overrun
    minute = store.primary.windows().minute
    rpm = int(c.get(f"tg:q:{{t:sentinel-team}}:rpm:{minute}") or 0)
    assert admitted <= rpm <= admitted + unavailable
    assert elapsed < 60


def status_ok(store: FailoverQuotaStore) -> bool:
    s = store.status()
    return s["pending_settlements"] == 0 and s["dropped_settlements"] == 0
