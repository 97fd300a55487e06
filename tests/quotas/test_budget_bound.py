"""A USD budget holds across three gateway processes sharing one Redis, against an engine
that counts more prompt tokens than any local estimate (every byte a token), with no
tokenizer configured: the byte bound is reserved, never the estimate (issue 13, item 2).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from engines.standin.config import BYTES_PROMPT_OVERHEAD, CHAT_MESSAGE_OVERHEAD
from engines.standin.process import StandinProcess
from gateway.prompt_bound import ByteBound
from gateway.protocol import Endpoint, parse_request
from gateway.tokens import TokenCounter
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    GatewayProcess,
    RedisServer,
    free_port,
    gateway_config,
    write_config,
)

pytestmark = pytest.mark.redis

REPLICAS = 3
BUDGET_USD = 0.01
BUDGET_NUSD = int(BUDGET_USD * 1e9)
#: $1 per million prompt tokens, $2 per million completion tokens: 1,000 and 2,000 nUSD.
PRICES = (1.0, 2.0)
MAX_TOKENS = 16
WAVE = 300  # requests sent at once, over the three replicas
TEXTS = [
    "Summarise the main causes of the French Revolution in three short bullet points. " * 2,
    "Переведи на английский: «Сегодня хорошая погода, пойдём гулять в парк».",
    "日本語で短い俳句を一つ書いてください。テーマは秋の月です。",
    "Explain this code: def f(xs): return sorted(set(xs), key=len)[:3]  # 🤔🐍",
    "¿Cuál es la diferencia entre «ser» y «estar»? Da dos ejemplos. 👍🏽🇪🇸",
]


def body(i: int) -> dict[str, object]:
    return {
        "model": "small",
        "messages": [{"role": "user", "content": TEXTS[i % len(TEXTS)]}],
        "max_tokens": MAX_TOKENS,
    }


def engine_prompt_tokens(b: dict[str, object]) -> int:
    """What the stand-in (``--prompt-count bytes``) reports for a body."""
    messages = b["messages"]
    assert isinstance(messages, list)
    return BYTES_PROMPT_OVERHEAD + sum(
        CHAT_MESSAGE_OVERHEAD + len(m["role"].encode()) + len(m["content"].encode())
        for m in messages
    )


@dataclass
class Cluster:
    redis: RedisServer
    gateways: list[GatewayProcess]
    ledgers: list[Path]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp: Path = tmp_path_factory.mktemp("budget")
    redis = RedisServer(tmp / "redis").start()
    engine = StandinProcess(model="standin-small", ttft_ms=30, tpot_ms=1)
    engine.args += ["--prompt-count", "bytes"]  # every byte a token: more than any estimate
    gateways: list[GatewayProcess] = []
    ledgers: list[Path] = []
    try:
        engine.start()
        for i in range(REPLICAS):
            gdir = tmp / f"gw{i}"
            gdir.mkdir()
            port = free_port()
            cfg = gateway_config(
                gdir,
                [EngineSpec("small-0", engine.base_url, "small", "standin-small")],
                port=port,
                prices={"standin-small": PRICES},
                auth={
                    "key_store": False,
                    "static_keys": [
                        {
                            "key": CLIENT_KEY,
                            "name": "budget",
                            "limits": {"budget_total_usd": BUDGET_USD},
                        }
                    ],
                },
                quotas={"backend": "redis", "redis_url": redis.url, "replicas": REPLICAS},
                # One SQLite ledger per replica: this test sums them (the restore is not
                # what it is about).
                ledger={"partial_restore_ok": True, "flush_interval_s": 0.1},
            )
            ledgers.append(gdir / "ledger.db")
            gateways.append(GatewayProcess(write_config(gdir, cfg), port))
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(lambda g: g.start(timeout=60), gateways))
        yield Cluster(redis, gateways, ledgers)
    finally:
        for g in gateways:
            g.stop()
        engine.stop()
        redis.stop()


async def wave(urls: list[str], start: int) -> Counter[int]:
    limits = httpx.Limits(max_connections=WAVE)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    urls[i % len(urls)] + "/v1/chat/completions",
                    json=body(start + i),
                    headers={"authorization": f"Bearer {CLIENT_KEY}"},
                )
                for i in range(WAVE)
            )
        )
    for i, r in enumerate(responses):
        if r.status_code == 200:  # the engine counted every byte
            assert r.json()["usage"]["prompt_tokens"] == engine_prompt_tokens(body(start + i))
        else:
            assert r.status_code == 429, r.text
            assert "budget" in r.json()["error"]["message"].lower(), r.text
    return Counter(r.status_code for r in responses)


def redis_spend(redis: RedisServer) -> tuple[int, int]:
    """(total spend incl. holds, held) of the one key, from Redis itself."""
    c = redis.client()
    try:
        totals = [k for k in c.keys("tg:q:{k:*}:st")]
        assert len(totals) == 1, totals
        key = totals[0].decode()
        held = c.get(key.replace(":st", ":held"))
        return int(c.get(key) or 0), int(held or 0)
    finally:
        c.close()


def settled(redis: RedisServer) -> int:
    deadline = time.monotonic() + 10
    while True:
        total, held = redis_spend(redis)
        if held == 0 or time.monotonic() > deadline:
            assert held == 0, "reservations still held"
            return total
        time.sleep(0.05)


def test_the_engine_counts_more_than_the_local_estimate() -> None:
    """The premise: tiktoken (what was reserved before) is below the engine's count, and
    the byte bound above it."""
    counter = TokenCounter({"standin-small": None})
    for i in range(len(TEXTS)):
        b = body(i)
        req = parse_request(Endpoint.CHAT, orjson.dumps(b), max_messages=10, max_n=1)
        truth = engine_prompt_tokens(b)
        assert counter.count_prompt("standin-small", req) < truth
        assert ByteBound().count(req).upper >= truth


def test_spend_stays_within_the_budget_and_uses_it(cluster: Cluster) -> None:
    urls = [g.base_url for g in cluster.gateways]
    seen: Counter[int] = Counter()
    spends = []
    for n in range(6):  # waves until one is refused whole (the budget is used up)
        statuses = asyncio.run(wave(urls, n * WAVE))
        seen += statuses
        spends.append(settled(cluster.redis))
        assert spends[-1] <= BUDGET_NUSD, spends
        if statuses[200] == 0:
            break
    print(f"waves {seen} spend per wave {spends} of {BUDGET_NUSD} nUSD")
    assert seen[200] > 0 and seen[429] > 0
    assert spends[0] >= 0.7 * BUDGET_NUSD, spends  # the first wave alone: the bound is tight
    for g in cluster.gateways:
        g.stop()  # flushes the ledgers
    rows: list[tuple[int, int, int]] = []
    for path in cluster.ledgers:
        with sqlite3.connect(path) as db:
            rows += db.execute(
                "SELECT cost_nusd, prompt_tokens, usage_estimated FROM ledger_records"
            ).fetchall()
    ledger_spend = sum(r[0] for r in rows)
    assert len(rows) == seen[200]
    assert not any(r[2] for r in rows)  # the engine's usage, not an estimate
    assert ledger_spend == spends[-1]  # Redis and the ledgers agree
    assert 0.7 * BUDGET_NUSD <= ledger_spend <= BUDGET_NUSD
    assert ledger_spend >= 0.9 * BUDGET_NUSD  # once in-flight holds settle, nearly all
