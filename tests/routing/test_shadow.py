"""Shadow traffic: mirrored off the request path, bounded, recorded, never billed to a key."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config import ShadowSettings, TimeoutSettings
from gateway.pricing import PriceBook, PriceEntry
from gateway.protocol import Endpoint
from gateway.request.metering import Meter
from gateway.request.shadow import ShadowRunner
from gateway.routing.pool import EnginePool
from gateway.upstream.http import HttpTransport
from tests.fake_upstream import Handler, serve
from tests.routing.helpers import ListRecorder, engine, make_settings

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def handler_for(gate: asyncio.Event, seen: list[Any]) -> Handler:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(orjson.loads(await request.read()))
        await gate.wait()
        return web.json_response({"choices": [], "usage": USAGE})

    return handler


def build(url: str) -> tuple[ShadowRunner, EnginePool, ListRecorder, HttpTransport]:
    port = int(url.rsplit(":", 1)[1])
    s = make_settings(
        [engine("large-0", "large", port), engine("cand", "large", port, max_concurrency=4)],
    )
    client = HttpTransport(TimeoutSettings())
    pool = EnginePool(s.engines)
    recorder = ListRecorder()

    # $1 per million tokens either way: 1,000 nano-USD per token.
    price = PriceEntry(
        model="model-large",
        effective=dt.date(2024, 1, 1),
        prompt_per_mtok=Decimal(1),
        completion_per_mtok=Decimal(1),
    )
    runner = ShadowRunner(
        pool=pool,
        transport=client,
        recorder=recorder,
        registry=CollectorRegistry(),
        meter=Meter(PriceBook([price]), pool.entries_by_tier),
        settings={"large": ShadowSettings(engine="cand", sample=1.0, max_concurrency=1)},
    )
    return runner, pool, recorder, client


async def test_mirror_returns_at_once_and_records_a_shadow_row() -> None:
    gate = asyncio.Event()
    seen: list[Any] = []
    async with serve(handler_for(gate, seen)) as url:
        runner, pool, recorder, client = build(url)
        cand = pool.engines["cand"]
        raw = {"model": "large", "messages": [{"role": "user", "content": "hi"}]}
        assert runner.mirror(cand, Endpoint.CHAT, raw, "req-1", "large")  # the engine hangs
        assert runner.in_flight == 1 and cand.in_flight == 1
        # bounded: a second copy is dropped, not queued
        assert not runner.mirror(cand, Endpoint.CHAT, raw, "req-2", "large")
        gate.set()
        await runner.drain(5)
        await client.aclose()
    assert cand.in_flight == 0 and runner.in_flight == 0
    assert seen[0]["model"] == "model-large"
    (rec,) = recorder.records
    assert (rec.status, rec.key_id, rec.request_id) == ("shadow", "shadow", "req-1:shadow")
    assert (rec.engine, rec.cost_nusd) == ("cand", 15000)
    assert rec.price_version == "model-large@2024-01-01"
    assert rec.prompt_tokens == 10 and rec.completion_tokens == 5
    assert runner.requests.labels("cand", "ok")._value.get() == 1
    assert runner.requests.labels("cand", "dropped")._value.get() == 1
    assert runner.cost.labels("cand")._value.get() == 15000 / 1e9


async def test_drain_cancels_stragglers() -> None:
    gate = asyncio.Event()  # not set until the end: the shadow engine hangs
    async with serve(handler_for(gate, [])) as url:
        runner, pool, _, client = build(url)
        raw = {"model": "large", "messages": [{"role": "user", "content": "hi"}]}
        assert runner.mirror(pool.engines["cand"], Endpoint.CHAT, raw, "r", "large")
        await asyncio.sleep(0)
        await runner.drain(0.01)
        assert runner.in_flight == 0 and pool.engines["cand"].in_flight == 0
        await client.aclose()
        gate.set()  # let the fake engine's handler finish so the server shuts down at once
