"""Budget rescue on real Redis (issue 14, item 4): two gateway replicas share one Redis,
two stand-in engines play the tiers, and a key's USD budget covers a small-tier worst
case but not a large-tier one. A long prompt to ``auto`` (the rules send it large) is
served small, with the rescue in its route reason; 50 at once through the ``openai``
client keep the spend within the budget; once even small is unaffordable, 429.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from engines.standin.process import StandinProcess
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    GatewayProcess,
    RedisServer,
    free_port,
    gateway_config,
    write_config,
)
from tests.support.standin import stats

pytestmark = pytest.mark.redis

REPLICAS = 2
#: USD per million prompt / completion tokens: large is ten times small.
PRICES = {"standin-small": (1.0, 2.0), "standin-large": (10.0, 20.0)}
#: ~2,000 bytes: a long prompt for the rules (over 100 tokens), counted byte by byte by
#: the engines, so a small-tier worst case is ~$0.0022 and a large-tier one ~$0.022.
LONG = "Summarise the following notes in two lines. " + "note " * 390
MAX_TOKENS = 32
BUDGET_USD = 0.02
BUDGET_NUSD = int(BUDGET_USD * 1e9)
CONCURRENT = 50
RESCUED = "rules:long_prompt;budget:rescue"


@dataclass
class Rig:
    redis: RedisServer
    small: StandinProcess
    large: StandinProcess
    gateways: list[GatewayProcess]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("rescue")
    redis = RedisServer(tmp / "redis").start()
    small = StandinProcess(model="standin-small", ttft_ms=20, tpot_ms=1, max_model_len=8192)
    large = StandinProcess(model="standin-large", ttft_ms=20, tpot_ms=1, max_model_len=8192)
    for engine in (small, large):
        engine.args += ["--prompt-count", "bytes"]  # every byte a token: a tight bound
    gateways: list[GatewayProcess] = []
    try:
        small.start()
        large.start()
        for i in range(REPLICAS):
            gdir = tmp / f"gw{i}"
            gdir.mkdir()
            port = free_port()
            cfg = gateway_config(
                gdir,
                [
                    EngineSpec("small-0", small.base_url, "small", "standin-small"),
                    EngineSpec("large-0", large.base_url, "large", "standin-large"),
                ],
                port=port,
                prices=PRICES,
                auth={
                    "key_store": False,
                    "static_keys": [
                        {"key": CLIENT_KEY, "limits": {"budget_total_usd": BUDGET_USD}}
                    ],
                },
                routing={"policy": "rules", "params": {"max_prompt_tokens_small": 100}},
                quotas={"backend": "redis", "redis_url": redis.url, "replicas": REPLICAS},
                ledger={"partial_restore_ok": True, "flush_interval_s": 0.1},
            )
            gateways.append(GatewayProcess(write_config(gdir, cfg), port))
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(lambda g: g.start(timeout=60), gateways))
        yield Rig(redis, small, large, gateways)
    finally:
        for g in gateways:
            g.stop()
        small.stop()
        large.stop()
        redis.stop()


def client(gw: GatewayProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gw.base_url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60
    )


@dataclass
class Outcome:
    status: int
    tier: str | None = None
    reason: str | None = None
    message: str = ""


async def ask(c: openai.AsyncOpenAI, model: str = "auto") -> Outcome:
    try:
        raw = await c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": LONG}], max_tokens=MAX_TOKENS
        )
    except openai.APIStatusError as err:
        body = err.body if isinstance(err.body, dict) else {}
        return Outcome(err.status_code, message=str(body.get("message", "")))
    raw.parse()
    h = raw.headers
    return Outcome(raw.status_code, h.get("x-tollgate-tier"), h.get("x-tollgate-route-reason"))


async def burst(gateways: list[GatewayProcess], n: int) -> list[Outcome]:
    clients = [client(g) for g in gateways]
    try:
        return await asyncio.gather(*(ask(clients[i % len(clients)]) for i in range(n)))
    finally:
        for c in clients:
            await c.close()


async def one(gw: GatewayProcess, model: str = "auto") -> Outcome:
    async with client(gw) as c:
        return await ask(c, model)


def settled_spend(redis: RedisServer) -> int:
    """The key's total spend in Redis once no reservation is held."""
    c = redis.client()
    try:
        deadline = time.monotonic() + 10
        while True:
            (key,) = [k.decode() for k in c.keys("tg:q:{k:*}:st")]
            total, held = int(c.get(key) or 0), int(c.get(key.replace(":st", ":held")) or 0)
            if held == 0:
                return total
            assert time.monotonic() < deadline, "reservations still held"
            time.sleep(0.05)
    finally:
        c.close()


def test_budget_rescue_on_real_redis(rig: Rig) -> None:
    gw = rig.gateways[0]
    # An explicit large request is refused as before: its worst case is over the budget.
    explicit = asyncio.run(one(gw, "large"))
    assert explicit.status == 429 and "budget" in explicit.message.lower()
    assert "cheapest" not in explicit.message

    first = asyncio.run(one(gw))
    assert (first.status, first.tier, first.reason) == (200, "small", RESCUED)
    after_first = settled_spend(rig.redis)
    assert 0 < after_first < BUDGET_NUSD

    outcomes = asyncio.run(burst(rig.gateways, CONCURRENT))
    statuses = Counter(o.status for o in outcomes)
    spend = settled_spend(rig.redis)
    print(f"burst of {CONCURRENT}: {dict(statuses)}; spend {spend} of {BUDGET_NUSD} nUSD")
    assert set(statuses) <= {200, 429}, outcomes
    assert statuses[200] > 0 and statuses[429] > 0
    assert all((o.tier, o.reason) == ("small", RESCUED) for o in outcomes if o.status == 200)
    assert all("budget" in o.message.lower() for o in outcomes if o.status == 429)
    assert spend <= BUDGET_NUSD
    # Every success cost the same: the spend is exactly what they were billed.
    assert spend == after_first * (1 + statuses[200])

    # Keep asking until even the small tier is out of reach: a clear 429, never large.
    last = asyncio.run(one(gw))
    for _ in range(20):
        if last.status == 429:
            break
        last = asyncio.run(one(gw))
    assert last.status == 429
    assert last.message.startswith("Even the cheapest tier (small) is over budget.")
    assert settled_spend(rig.redis) <= BUDGET_NUSD
    assert stats(rig.large)["received"] == 0  # nothing reached the large tier
    assert stats(rig.small)["received"] >= 1 + statuses[200]
