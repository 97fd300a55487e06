"""Overload control: past capacity a request gets 503 at once, before any other work."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway.config import ServerSettings, Settings
from gateway.errors import ServiceUnavailableError
from gateway.metrics import Metrics
from gateway.request.overload import LoopLag, OverloadGuard
from gateway.upstream.mock import MockReply, MockRequest, MockTransport
from tests.support import CLIENT_KEY, EngineSpec, gateway_config, serve_in_thread

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def test_a_saturated_loop_refuses_with_retry_after() -> None:
    metrics = Metrics()
    lag = LoopLag(metrics)
    guard = OverloadGuard(ServerSettings(max_loop_lag_ms=50), lag, metrics)
    guard.check(in_flight=10)  # an idle loop takes work
    lag.lag = 0.2
    with pytest.raises(ServiceUnavailableError) as exc:
        guard.check(in_flight=0)
    assert exc.value.code == "gateway_overloaded" and exc.value.headers["Retry-After"] == "1"
    assert "200 ms behind" in exc.value.message
    assert metrics.overload_refusals.labels("loop_lag")._value.get() == 1


def test_past_max_in_flight_the_excess_is_refused_before_quota_or_engine(
    tmp_path: Path,
) -> None:
    gate = threading.Event()

    async def slow(request: MockRequest) -> MockReply:
        # The gate is a threading.Event: the test thread opens it, the server's loop waits.
        await asyncio.to_thread(gate.wait, 10)
        return MockReply.json(ANSWER)

    cfg = gateway_config(
        tmp_path,
        [EngineSpec("small-0", "http://small-0", "small", "m")],
        server={"max_in_flight": 2},
        ledger={"enabled": False},
    )
    cfg["auth"]["static_keys"][0]["limits"] = {"rpm": 100}
    settings = Settings.model_validate(cfg)
    transport = MockTransport(slow, timeouts=settings.timeouts)
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    with serve_in_thread(settings, transport=transport, monitor=False) as gw:
        url = f"{gw.v1}/chat/completions"
        with ThreadPoolExecutor(2) as pool, httpx.Client(timeout=10) as client:
            held = [pool.submit(httpx.post, url, json=BODY, headers=headers, timeout=10)
                    for _ in range(2)]  # fmt: skip
            while len(transport.requests) < 2:
                time.sleep(0.01)
            t = time.perf_counter()
            refused = client.post(url, json=BODY, headers=headers)
            refusal_s = time.perf_counter() - t
            gate.set()
            answers = [f.result() for f in held]
        after = httpx.post(url, json=BODY, headers=headers)
    assert [a.status_code for a in answers] == [200, 200] and after.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "gateway_overloaded"
    assert refusal_s < 1.0
    assert len(transport.requests) == 3  # the refused request never reached an engine
    # ...nor the quota: three requests were counted against the key's rpm, not four
    assert after.headers["x-ratelimit-remaining-requests"] == "97"


def stall(seconds: float) -> None:
    """Hold the event loop, as CPU-bound work does."""
    time.sleep(seconds)


async def test_one_slow_turn_of_the_loop_is_not_overload_but_a_saturated_loop_is() -> None:
    lag = LoopLag(Metrics())
    lag.start()
    try:
        await asyncio.sleep(0.1)
        stall(0.15)  # one long stall (a collection, a CPU steal)
        await asyncio.sleep(0.05)
        assert lag.lag < 0.05
        for _ in range(30):  # the loop stays busy: every turn is late
            stall(0.06)
            await asyncio.sleep(0)
            if lag.lag > 0.03:
                break
        assert lag.lag > 0.03
    finally:
        await lag.stop()
