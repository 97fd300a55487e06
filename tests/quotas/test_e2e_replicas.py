"""Three ``tollgate serve`` processes share one Redis: one key's limits hold across them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.db import make_engine
from gateway.keys import CreatedKey, KeyCreate, KeyStore, LimitsIn
from tests.quotas.redis_server import RedisServer
from tests.support import EngineSpec, GatewayProcess, free_port, gateway_config, write_config

REPLICAS = 3
RPM = 30
MSGS = [{"role": "user", "content": "hi"}]


def fresh_minute(margin: float = 15.0) -> None:
    """rpm windows are UTC minutes: do not straddle one."""
    into = time.time() % 60
    if into > 60 - margin:
        time.sleep(60 - into + 0.05)


class Cluster:
    def __init__(self, redis: RedisServer, gateways: list[GatewayProcess], keys: dict[str, str]):
        self.redis = redis
        self.gateways = gateways
        self.keys = keys


@pytest.fixture(scope="module")
def cluster(
    standin_pair: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Started once for the module (three gateways take a while on a shared machine)."""
    tmp_path: Path = tmp_path_factory.mktemp("replicas")
    redis = RedisServer(tmp_path / "redis").start()
    procs: list[GatewayProcess] = []
    try:
        specs = [EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small")]
        cfg = gateway_config(
            tmp_path,
            specs,
            quotas={
                "backend": "redis",
                "redis_url": redis.url,
                "replicas": REPLICAS,
                "breaker_open_s": 0.5,
            },
            ledger={"enabled": False},
        )
        keys = make_keys(Settings(**cfg))
        for _ in range(REPLICAS):
            port = free_port()
            (tmp_path / f"gw{port}").mkdir()
            path = write_config(
                tmp_path / f"gw{port}", {**cfg, "server": {**cfg["server"], "port": port}}
            )
            procs.append(GatewayProcess(path, port))
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(lambda g: g.start(timeout=60), procs))
        yield Cluster(redis, procs, keys)
    finally:
        for g in procs:
            g.stop()
        redis.stop()


def make_keys(settings: Settings) -> dict[str, str]:
    """The managed keys the gateways will see, in their shared database."""
    engine = make_engine(settings.ledger.url)
    try:
        store = KeyStore(engine)
        store.create_tables()

        def make(name: str, **limits: Any) -> CreatedKey:
            return store.create_key(KeyCreate(name=name, limits=LimitsIn.model_validate(limits)))

        return {
            "rpm": make("rpm", rpm=RPM).key,
            "budget": make("budget", budget_daily_usd="100").key,
            "one_at_a_time": make("one_at_a_time", concurrency=1).key,
        }
    finally:
        engine.dispose()


async def fire(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    urls[i % len(urls)] + "/v1/chat/completions",
                    json={"model": "small", "messages": MSGS, "max_tokens": 2},
                    headers={"authorization": f"Bearer {key}"},
                )
                for i in range(n)
            )
        )


def test_rpm_is_exact_across_gateway_processes(cluster: Cluster) -> None:
    tmp = cluster.gateways[0].config_path.parent
    urls = [g.base_url for g in cluster.gateways]
    fresh_minute()
    responses = asyncio.run(fire(urls, cluster.keys["rpm"], 4 * RPM))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: RPM, 429: 3 * RPM}, (tmp, statuses)
    refusal = next(r for r in responses if r.status_code == 429)
    assert refusal.json()["error"]["code"] == "rate_limit_exceeded"
    assert "requests per minute" in refusal.json()["error"]["message"]
    assert int(refusal.headers["retry-after"]) >= 1
    remaining = sorted(
        int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200
    )
    assert remaining == list(range(RPM))  # every admission saw the shared counter


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_sequential_client_with_concurrency_one_is_never_refused(
    cluster: Cluster, stream: bool
) -> None:
    """A slot freed on one replica is free on the next at once: a client that waits for
    each answer never meets its own finished request (settlements do not linger, and a
    stream settles before its [DONE]: CI once saw 1 refusal in 45 when it settled after;
    tests/quotas/test_pipeline_quotas.py pins the order deterministically)."""
    urls = [g.base_url for g in cluster.gateways]

    async def one_by_one() -> list[int]:
        statuses = []
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(45):
                r = await client.post(
                    urls[i % len(urls)] + "/v1/chat/completions",
                    json={"model": "small", "messages": MSGS, "max_tokens": 2, "stream": stream},
                    headers={"authorization": f"Bearer {cluster.keys['one_at_a_time']}"},
                )
                assert r.status_code != 200 or not stream or r.text.endswith("[DONE]\n\n")
                statuses.append(r.status_code)
        return statuses

    assert Counter(asyncio.run(one_by_one())) == {200: 45}


def test_redis_outage_then_recovery(cluster: Cluster) -> None:
    urls = [g.base_url for g in cluster.gateways]
    fresh_minute()
    before = asyncio.run(fire(urls, cluster.keys["budget"], 6))
    assert {r.status_code for r in before} == {200}
    cluster.redis.kill()
    down_budget = asyncio.run(fire(urls, cluster.keys["budget"], 6))
    assert {r.status_code for r in down_budget} == {503}  # budgets fail closed
    assert all(int(r.headers["retry-after"]) >= 1 for r in down_budget)
    assert down_budget[0].json()["error"]["code"] == "quota_store_unavailable"
    # Rate limits fall back to each replica's share: rpm 30 / 3 replicas = 10 each.
    down_rpm = asyncio.run(fire(urls[:1], cluster.keys["rpm"], 15))
    assert Counter(r.status_code for r in down_rpm) == {200: RPM // REPLICAS, 429: 5}
    cluster.redis.start()
    time.sleep(0.6)  # breaker_open_s: the next request probes Redis and closes it
    deadline = time.monotonic() + 10
    while True:
        after = asyncio.run(fire(urls, cluster.keys["budget"], 3))
        if {r.status_code for r in after} == {200} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {r.status_code for r in after} == {200}


def test_keys_never_reach_the_logs(cluster: Cluster) -> None:
    urls = [g.base_url for g in cluster.gateways]
    asyncio.run(fire(urls, cluster.keys["rpm"], 3))
    asyncio.run(fire(urls, "tg-" + "x" * 40, 3))  # unknown key: 401 path
    for g in cluster.gateways:
        text = g.log.read_text()
        assert "request" in text  # the access log is there...
        for secret in cluster.keys.values():
            assert secret not in text  # ...without a key in it
        assert "x" * 40 not in text
