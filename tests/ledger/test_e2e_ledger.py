"""End to end: the gateway in front of stand-in engines, a real ledger database, mixed load.

Whatever a request's fate (answered, streamed, cut by the client, failed by the engine
after tokens went out), it leaves exactly one ledger row, and the rows' costs are the
engine-reported usage times the prices, to the nano-dollar. The PostgreSQL variant stops
the server in the middle of the load and brings it back: nothing is lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.ledger.record import LedgerRecord
from gateway.ledger.store import LedgerStore
from gateway.pricing import PriceBook
from tests.ledger.pg import PostgresCluster
from tests.support import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    EngineSpec,
    RunningGateway,
    gateway_config,
    serve_in_thread,
)

MSGS = [{"role": "user", "content": "tell me about tides and the moon"}]
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, StandinProcess]]:
    procs = {
        "small": StandinProcess(model="e2e-small", tpot_ms=1, max_num_seqs=64),
        "large": StandinProcess(model="e2e-large", tpot_ms=2, max_num_seqs=64),
        # every stream fails after 3 tokens, every unary request with a 500
        "flaky": StandinProcess(model="e2e-flaky", tpot_ms=1, fault="error_mid_stream:3"),
    }
    for p in procs.values():
        p.start()
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def settings_for(engines: dict[str, StandinProcess], tmp: Path, ledger_url: str) -> Settings:
    specs = [
        EngineSpec("small-0", engines["small"].base_url, "small", "e2e-small"),
        EngineSpec("large-0", engines["large"].base_url, "large", "e2e-large"),
        EngineSpec("flaky-0", engines["flaky"].base_url, "flaky", "e2e-flaky"),
    ]
    cfg = gateway_config(
        tmp,
        specs,
        ledger={
            "url": ledger_url,
            "spill_dir": str(tmp / "spill"),
            "flush_interval_s": 0.1,
            "batch_size": 20,
            "retry_max_s": 0.5,
        },
        routing={"fallback": False, "retries": {"attempts": 1}},
    )
    return Settings(**cfg)


@dataclass
class Sent:
    """What the client saw of one request."""

    rid: str
    kind: str
    usage: dict[str, int] | None = None
    chunks: int = 0
    status: int = 0
    events: list[bytes] = field(default_factory=list)


async def unary(c: httpx.AsyncClient, rid: str, model: str, max_tokens: int) -> Sent:
    body = {"model": model, "messages": MSGS, "max_tokens": max_tokens}
    r = await c.post("/v1/chat/completions", json=body, headers={**AUTH, "x-request-id": rid})
    usage = r.json().get("usage") if r.status_code == 200 else None
    return Sent(rid, "unary", usage, status=r.status_code)


async def stream(
    c: httpx.AsyncClient, rid: str, model: str, max_tokens: int, cut_after: int | None = None
) -> Sent:
    body = {
        "model": model,
        "messages": MSGS,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = Sent(rid, "stream" if cut_after is None else "cut")
    headers = {**AUTH, "x-request-id": rid}
    async with c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        sent.status = r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = orjson.loads(line[6:])
            if data.get("usage"):
                sent.usage = data["usage"]
            if any((ch.get("delta") or {}).get("content") for ch in data.get("choices") or ()):
                sent.chunks += 1  # a chunk carrying a token (not the role-only first one)
            if "error" in data:
                sent.kind = "error"
            if cut_after is not None and sent.chunks >= cut_after:
                break  # leaving the block closes the connection mid-stream
    return sent


async def mixed_load(base_url: str, waves: int, pause: float = 0.0, phase: str = "a") -> list[Sent]:
    ids = (f"e2e-{phase}-{i:05d}" for i in itertools.count())
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as c:
        out: list[Sent] = []
        for w in range(waves):
            jobs = [
                unary(c, next(ids), "small", 3 + w % 5),
                unary(c, next(ids), "large", 4),
                unary(c, next(ids), "small", 1),
                stream(c, next(ids), "small", 6),
                stream(c, next(ids), "large", 5 + w % 3),
                stream(c, next(ids), "large", 400, cut_after=3),
                stream(c, next(ids), "flaky", 10),
                unary(c, next(ids), "flaky", 5),
            ]
            out += await asyncio.gather(*jobs)
            if pause:
                await asyncio.sleep(pause)
        return out


def wait_written(gw: RunningGateway, store: LedgerStore, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while store.count() < n:
        assert time.monotonic() < deadline, (
            store.count(),
            n,
            gw.services.ledger.writer.stats(),
        )
        time.sleep(0.1)


def check_ledger(sent: list[Sent], rows: list[LedgerRecord], prices: PriceBook) -> None:
    by_id = {r.request_id: r for r in rows}
    assert len(rows) == len(by_id) == len(sent)  # one row per request, none twice
    assert set(by_id) == {s.rid for s in sent}
    ref = prices.price(prices.reference_model or "")
    engine_reported_cost = 0
    for s in sent:
        rec = by_id[s.rid]
        price = prices.price(rec.upstream_model)
        assert rec.price_version == price.version
        assert rec.cost_nusd == price.cost_nusd(rec.prompt_tokens, rec.completion_tokens)
        if rec.route_reason == "by_name":  # the client chose the tier: nothing saved
            assert rec.counterfactual_nusd == rec.cost_nusd
        else:
            assert rec.counterfactual_nusd == ref.cost_nusd(
                rec.prompt_tokens, rec.completion_tokens
            )
        if s.kind in ("unary", "stream") and s.status == 200:
            assert s.usage is not None
            assert (rec.prompt_tokens, rec.completion_tokens) == (
                s.usage["prompt_tokens"],
                s.usage["completion_tokens"],
            )
            assert rec.status == "ok" and not rec.usage_estimated
            engine_reported_cost += price.cost_nusd(
                s.usage["prompt_tokens"], s.usage["completion_tokens"]
            )
        elif s.kind == "cut":
            assert rec.status == "client_disconnect" and rec.usage_estimated
            assert rec.completion_tokens >= s.chunks > 0 and rec.prompt_tokens > 0
        elif s.kind == "error":  # the engine failed after 3 tokens reached the client
            assert rec.status == "error" and rec.usage_estimated
            assert rec.completion_tokens >= s.chunks == 3
        else:  # unary request the engine answered with a 500: nothing was generated
            assert s.status == 502 and rec.status == "error"
            assert rec.completion_tokens == 0 and rec.cost_nusd == 0
    ok_rows = [r for r in rows if r.status == "ok"]
    assert sum(r.cost_nusd for r in ok_rows) == engine_reported_cost
    kinds = {s.kind for s in sent}
    assert kinds == {"unary", "stream", "cut", "error"}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_mixed_load_ledger_equals_engine_usage_times_prices(
    backend: str,
    engines: dict[str, StandinProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.create_database())
    settings = settings_for(engines, tmp_path, url)
    store = LedgerStore.from_url(url)
    try:
        with serve_in_thread(settings) as gw:
            sent = asyncio.run(mixed_load(gw.base_url, waves=8))
            wait_written(gw, store, len(sent))
            recon = httpx.get(
                gw.base_url + "/admin/reconcile",
                headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            ).json()
            assert recon["ok"], recon  # the quota counters settled the same costs
        check_ledger(sent, store.all_records(), PriceBook.load(settings.pricing.file))
    finally:
        store.dispose()


@pytest.mark.postgres
def test_postgres_going_away_mid_load_loses_nothing(
    engines: dict[str, StandinProcess], tmp_path: Path
) -> None:
    cluster = PostgresCluster()
    cluster.start()
    url = cluster.url(cluster.create_database())
    settings = settings_for(engines, tmp_path, url)
    store = LedgerStore.from_url(url)
    try:
        with serve_in_thread(settings) as gw:
            writer = gw.services.ledger.writer

            async def scenario() -> list[Sent]:
                before = await mixed_load(gw.base_url, waves=3, phase="before")
                await asyncio.to_thread(cluster.stop, "immediate")  # the database dies
                during = await mixed_load(gw.base_url, waves=4, pause=0.15, phase="during")
                await asyncio.sleep(0.5)
                stats = writer.stats()
                assert not stats.database_up and stats.spilled > 0, stats
                await asyncio.to_thread(cluster.start)
                after = await mixed_load(gw.base_url, waves=3, phase="after")
                return before + during + after

            sent = asyncio.run(scenario())
            wait_written(gw, store, len(sent))
            stats = writer.stats()
            assert stats.failures > 0 and stats.replayed > 0 and stats.dropped == 0
        check_ledger(sent, store.all_records(), PriceBook.load(settings.pricing.file))
        assert not list((tmp_path / "spill").glob("sealed-*")), "spill fully replayed"
    finally:
        store.dispose()
        cluster.destroy()
