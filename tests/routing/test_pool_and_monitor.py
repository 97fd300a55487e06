"""Pool slot hand-over races, load estimates, and the background engine monitor."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from gateway.config import BreakerSettings, EngineSettings, TimeoutSettings
from gateway.errors import OverloadedError
from gateway.routing.health import Breakers
from gateway.routing.monitor import EngineMonitor, parse_vllm_metrics
from gateway.routing.pool import EnginePool
from gateway.upstream.http import HttpTransport
from tests.fake_upstream import serve
from tests.routing.helpers import engine, make_settings

METRICS = """# HELP vllm:num_requests_waiting waiting
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 7.0
vllm:num_requests_running{model_name="m"} 4.0
vllm:kv_cache_usage_perc{model_name="m"} 0.5
vllm:prompt_tokens_total{model_name="m"} 123.0
"""


def one_engine_pool(cap: int = 1, queue: int = 2, timeout: float = 5.0) -> EnginePool:
    es = EngineSettings(
        name="e0", url="http://127.0.0.1:9", tier="small", model="m",
        max_concurrency=cap, max_queue=queue, queue_timeout_s=timeout,
    )  # fmt: skip
    return EnginePool([es])


async def test_slot_handed_over_as_the_wait_times_out_is_not_leaked() -> None:
    p = one_engine_pool(cap=1, timeout=0.05)
    e = p.engines["e0"]
    held = await p.acquire(e)
    waiter = asyncio.create_task(p.acquire(e))
    await asyncio.sleep(0)  # the waiter is queued and its timer armed
    # Block the loop on purpose: the timer is now overdue, so it fires in the same loop
    # pass as...
    time.sleep(0.06)  # noqa: ASYNC251
    await asyncio.sleep(0)
    held.release()  # ...this hand-over, before the waiter gets to run
    with pytest.raises(OverloadedError):
        await waiter
    assert e.in_flight == 0 and p.queue_depth(e) == 0


async def test_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    p = one_engine_pool(cap=1)
    e = p.engines["e0"]
    held = await p.acquire(e)
    waiter = asyncio.create_task(p.acquire(e))
    await asyncio.sleep(0)
    held.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert e.in_flight == 0 and p.queue_depth(e) == 0


async def test_try_acquire_never_waits() -> None:
    p = one_engine_pool(cap=1)
    e = p.engines["e0"]
    slot = p.try_acquire(e)
    assert slot is not None and p.try_acquire(e) is None
    slot.release()
    assert e.in_flight == 0


async def test_zero_queue_sheds_at_once_with_retry_after() -> None:
    p = one_engine_pool(cap=1, queue=0)
    e = p.engines["e0"]
    held = await p.acquire(e)
    with pytest.raises(OverloadedError) as exc:
        await p.acquire(e)
    assert exc.value.status_code == 503 and exc.value.headers["Retry-After"] == "1"
    held.release()


def test_load_estimates_blend_scraped_metrics_with_our_counts() -> None:
    p = one_engine_pool(cap=8)
    e = p.engines["e0"]
    e.in_flight = 3
    assert p.load(e) == 3 and p.waiting(e) == 0  # no metrics: only our own view
    e.running, e.waiting, e.scraped_in_flight, e.metrics_at = 4, 6, 3, time.monotonic()
    assert p.load(e) == 10  # other replicas' requests show in the engine's gauges
    assert p.waiting(e) == 6
    e.in_flight = 1  # two of ours finished since the scrape
    assert p.waiting(e) == 4


def test_parse_vllm_metrics_sums_label_sets() -> None:
    values = parse_vllm_metrics(METRICS + 'vllm:num_requests_waiting{model_name="n"} 1\n')
    assert values == {"waiting": 8.0, "running": 4.0, "kv_cache_usage": 0.5}


async def test_monitor_scrapes_ejects_and_readmits() -> None:
    state = {"healthy": True}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/health":
            return web.Response(status=200 if state["healthy"] else 503)
        if request.path == "/metrics":
            return web.Response(text=METRICS)
        return web.Response(status=404)

    async with serve(handler) as url:
        port = int(url.rsplit(":", 1)[1])
        s = make_settings([engine("small-0", "small", port), engine("large-0", "large", port)])
        pool = EnginePool(s.engines)
        client = HttpTransport(TimeoutSettings())
        breakers = Breakers(BreakerSettings())
        monitor = EngineMonitor(pool, client, breakers, BreakerSettings())
        e = pool.engines["large-0"]
        await monitor.check_once()
        assert (e.waiting, e.running, e.kv_cache_usage) == (7.0, 4.0, 0.5) and e.metrics_at > 0
        state["healthy"] = False
        await monitor.check_once()
        assert e.healthy  # one inconclusive answer (503) is not enough
        await monitor.check_once()
        assert not e.healthy and not breakers.available(e) and e.metrics_at == 0.0
        state["healthy"] = True
        await monitor.check_once()
        assert e.healthy and e.metrics_at > 0
        await client.aclose()
