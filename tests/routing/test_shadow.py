"""Shadow traffic: mirrored off the request path, bounded, recorded, never billed to a key."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry

from gateway.config import ShadowSettings, TimeoutSettings
from gateway.engines import Engine, EngineClient
from gateway.protocol import Endpoint
from gateway.routing.pool import EnginePool
from gateway.routing.rollout import ShadowRunner
from tests.routing.helpers import ListRecorder, engine, make_settings

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def build(gate: asyncio.Event) -> tuple[ShadowRunner, EnginePool, ListRecorder, list[Any]]:
    s = make_settings(
        [engine("large-0", "large"), engine("cand", "large", max_concurrency=4)],
    )
    seen: list[Any] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(orjson.loads(request.content))
        await gate.wait()
        return httpx.Response(200, json={"choices": [], "usage": USAGE})

    client = EngineClient(s.engines, TimeoutSettings(), lambda _: httpx.MockTransport(handler))
    pool = EnginePool(s.engines)
    recorder = ListRecorder()

    def cost_of(e: Engine, usage: dict[str, Any]) -> tuple[int, str]:
        return 1000 * int(usage["total_tokens"]), "cand@test"

    runner = ShadowRunner(
        pool=pool,
        client=client,
        recorder=recorder,
        registry=CollectorRegistry(),
        cost_of=cost_of,
        settings={"large": ShadowSettings(engine="cand", sample=1.0, max_concurrency=1)},
    )
    return runner, pool, recorder, seen


async def test_mirror_returns_at_once_and_records_a_shadow_row() -> None:
    gate = asyncio.Event()
    runner, pool, recorder, seen = build(gate)
    cand = pool.engines["cand"]
    raw = {"model": "large", "messages": [{"role": "user", "content": "hi"}]}
    assert runner.mirror(cand, Endpoint.CHAT, raw, "req-1", "large")  # the engine still hangs
    assert runner.in_flight == 1 and cand.in_flight == 1
    # bounded: a second copy is dropped, not queued
    assert not runner.mirror(cand, Endpoint.CHAT, raw, "req-2", "large")
    gate.set()
    await runner.drain(5)
    assert cand.in_flight == 0 and runner.in_flight == 0
    assert seen[0]["model"] == "model-large"
    (rec,) = recorder.records
    assert (rec.status, rec.key_id, rec.request_id) == ("shadow", "shadow", "req-1:shadow")
    assert (rec.engine, rec.cost_nusd, rec.price_version) == ("cand", 15000, "cand@test")
    assert rec.prompt_tokens == 10 and rec.completion_tokens == 5
    assert runner.requests.labels("cand", "ok")._value.get() == 1
    assert runner.requests.labels("cand", "dropped")._value.get() == 1
    assert runner.cost.labels("cand")._value.get() == 15000 / 1e9


async def test_drain_cancels_stragglers() -> None:
    gate = asyncio.Event()  # never set: the shadow engine hangs
    runner, pool, _, _ = build(gate)
    raw = {"model": "large", "messages": [{"role": "user", "content": "hi"}]}
    assert runner.mirror(pool.engines["cand"], Endpoint.CHAT, raw, "r", "large")
    await asyncio.sleep(0)
    await runner.drain(0.01)
    assert runner.in_flight == 0 and pool.engines["cand"].in_flight == 0
