"""Failure handling end to end: a real gateway, the official ``openai`` client, and stand-in
engines that fail on purpose (``engines.standin``). Each test states the expected outcome.

Four stand-ins (two per tier) are shared by the module and reset before each test; each
test serves its own gateway (uvicorn in a thread) with the config it needs. Waiting is
done by polling state (engine stats, breaker state), never by sleeping a guessed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engines.standin.process import StandinProcess
from gateway.auth import Principal
from gateway.config import Settings
from gateway.errors import QuotaExceededError
from gateway.quotas.base import Demand, Reservation
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    ListRecorder,
    RunningGateway,
    free_port,
    gateway_config,
    serve_in_thread,
)

MSGS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "tell me about tides"}]
FAST = {"health_interval_s": 0.3, "metrics_interval_s": 0.3}

Engines = dict[str, StandinProcess]


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    procs = {
        "small-a": StandinProcess(model="standin-small", tpot_ms=1, max_num_seqs=64),
        "small-b": StandinProcess(model="standin-small", tpot_ms=1, max_num_seqs=64),
        "large-a": StandinProcess(model="standin-large", tpot_ms=1, max_num_seqs=64),
        "large-b": StandinProcess(model="standin-large", tpot_ms=1, max_num_seqs=64),
    }
    for p in procs.values():
        p.start()
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture
def fleet(engines: Engines) -> Engines:
    for p in engines.values():
        if p._proc is None:  # stopped by an earlier test
            p.start()
        httpx.post(p.base_url + "/_standin/reset", timeout=5).raise_for_status()
    return engines


def spec(fleet: Engines, name: str, **extra: Any) -> EngineSpec:
    tier = name.split("-")[0]
    return EngineSpec(name, fleet[name].base_url, tier, f"standin-{tier}", extra)


def dead(name: str, tier: str) -> EngineSpec:
    """An engine whose port nothing listens on: connections are refused."""
    return EngineSpec(name, f"http://127.0.0.1:{free_port()}", tier, f"standin-{tier}")


def settings(tmp: Path, specs: list[EngineSpec], routing: dict[str, Any] | None = None,
             **sections: Any) -> Settings:  # fmt: skip
    r = {"breaker": FAST, **(routing or {})}
    return Settings(**gateway_config(tmp, specs, routing=r, **sections))


def stats(p: StandinProcess) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(p.base_url + "/_standin/stats", timeout=5).json()
    return data


def fault(p: StandinProcess, **f: Any) -> None:
    httpx.post(p.base_url + "/_standin/faults", json=f, timeout=5).raise_for_status()


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def stream_text(c: openai.OpenAI, model: str = "small", **kw: Any) -> str:
    chunks = c.chat.completions.create(model=model, messages=MSGS, stream=True, **kw)
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


# ---------------------------------------------------------------- engine refused


def test_one_engine_of_two_refusing_connections(fleet: Engines, tmp_path: Path) -> None:
    """Expected: every request succeeds on the other replica; the dead one is ejected by
    the health check, and re-admitted when it comes back."""
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "small-b")])
    with serve_in_thread(cfg) as gw:
        fleet["small-a"].stop()
        c = client(gw)
        for i in range(6):
            if i % 2:
                assert stream_text(c, max_tokens=3) == " tok1 tok2 tok3"
            else:
                r = c.chat.completions.create(model="small", messages=MSGS, max_tokens=3)
                assert r.choices[0].message.content == " tok1 tok2 tok3"
        assert stats(fleet["small-b"])["received"] == 6
        a = gw.services.pool.engines["small-a"]
        until(lambda: not a.healthy)
        fleet["small-a"].start()
        until(lambda: a.healthy)


def test_both_tiers_down_is_a_clear_503(tmp_path: Path) -> None:
    """Expected: 503 engine_unavailable with Retry-After, for unary and streaming, and
    for every model name; no hang, no 500."""
    cfg = settings(tmp_path, [dead("small-x", "small"), dead("large-x", "large")])
    with serve_in_thread(cfg) as gw:
        c = client(gw)
        for model in ("small", "large", "auto"):
            with pytest.raises(openai.APIStatusError) as exc:
                c.chat.completions.create(model=model, messages=MSGS, max_tokens=3)
            assert exc.value.status_code == 503
            assert exc.value.response.headers["retry-after"].isdigit()
            assert exc.value.response.json()["error"]["code"] == "engine_unavailable"
        with pytest.raises(openai.APIStatusError) as exc:
            stream_text(c, max_tokens=3)
        assert exc.value.status_code == 503


def test_both_tiers_refusing_before_the_health_check_notices(tmp_path: Path) -> None:
    """Expected: with health checks too slow to have noticed, the request still ends in
    one clear 503 after trying each candidate once (attempts=2)."""
    routing = {"breaker": {"health_interval_s": 3600, "metrics_interval_s": 3600}}
    s = Settings(
        **gateway_config(
            tmp_path, [dead("small-x", "small"), dead("large-x", "large")], routing=routing
        )
    )
    with serve_in_thread(s, monitor=False) as gw:
        with pytest.raises(openai.APIStatusError) as exc:
            client(gw).chat.completions.create(model="small", messages=MSGS, max_tokens=3)
        assert exc.value.status_code == 503
        assert exc.value.response.headers["retry-after"] == "1"
        errors = gw.services.metrics.upstream_errors
        assert errors.labels("small-x", "engine_unavailable")._value.get() == 1
        assert errors.labels("large-x", "engine_unavailable")._value.get() == 1


# ---------------------------------------------------------------- fallback between tiers


def test_fallback_to_the_other_tier_is_recorded(fleet: Engines, tmp_path: Path) -> None:
    """Expected: 'large' served by the small tier, reason 'by_name;fallback_from:large' in
    the headers and the ledger; with fallback off, a 503 instead."""
    recorder = ListRecorder()
    specs = [spec(fleet, "small-a"), dead("large-x", "large")]
    with serve_in_thread(settings(tmp_path, specs), recorder=recorder) as gw:
        raw = client(gw).chat.completions.with_raw_response.create(
            model="large", messages=MSGS, max_tokens=2
        )
        assert raw.parse().choices[0].message.content == " tok1 tok2"
        assert raw.headers["x-tollgate-tier"] == "small"
        assert raw.headers["x-tollgate-route-reason"] == "by_name;fallback_from:large"
        until(lambda: len(recorder.records) == 1)
        assert recorder.records[0].route_reason == "by_name;fallback_from:large"
        assert recorder.records[0].engine == "small-a"
    no_fallback = settings(tmp_path, specs, {"fallback": False})
    with serve_in_thread(no_fallback) as gw:
        with pytest.raises(openai.APIStatusError) as exc:
            client(gw).chat.completions.create(model="large", messages=MSGS, max_tokens=2)
        assert exc.value.status_code == 503
        assert stats(fleet["small-a"])["received"] == 1  # only the first gateway's request


def test_auto_routing_headers(fleet: Engines, tmp_path: Path) -> None:
    """Expected: auto picks small for a plain prompt and large for a tools request, and
    says so in x-tollgate-tier / x-tollgate-route-reason."""
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a")])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with serve_in_thread(cfg) as gw:
        c = client(gw)
        plain = c.chat.completions.with_raw_response.create(
            model="auto", messages=MSGS, max_tokens=2
        )
        assert plain.headers["x-tollgate-tier"] == "small"
        assert plain.headers["x-tollgate-route-reason"] == "rules:default_small"
        tooled = c.chat.completions.with_raw_response.create(
            model="auto",
            messages=MSGS,
            max_tokens=2,
            tools=tools,  # type: ignore[arg-type]
        )
        assert tooled.headers["x-tollgate-tier"] == "large"
        assert tooled.headers["x-tollgate-route-reason"] == "rules:tools"
        assert stats(fleet["large-a"])["received"] == 1


# ---------------------------------------------------------------- slow first token


def test_slow_first_token_times_out_with_504_on_a_lone_engine(
    fleet: Engines, tmp_path: Path
) -> None:
    """Expected: TTFT limit 0.5 s, engine needs 5 s: a 504 upstream_timeout after ~0.5 s
    (not 5), and the gateway aborts the upstream request."""
    cfg = settings(
        tmp_path, [spec(fleet, "small-a")], {"fallback": False},
        timeouts={"connect_s": 1, "ttft_s": 0.5, "idle_s": 5, "total_s": 30},
    )  # fmt: skip
    fault(fleet["small-a"], mode="slow_first_token", ms=5000)
    with serve_in_thread(cfg) as gw:
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as exc:
            stream_text(client(gw), max_tokens=3)
        assert exc.value.status_code == 504
        assert exc.value.response.json()["error"]["code"] == "upstream_timeout"
        assert 0.4 < time.monotonic() - t0 < 3.0
        until(lambda: stats(fleet["small-a"])["aborted"] == 1)


def test_slow_first_token_is_retried_on_another_replica(fleet: Engines, tmp_path: Path) -> None:
    """Expected: nothing was sent to the client yet, so the request moves to the healthy
    replica and succeeds; the slow one saw its request aborted."""
    cfg = settings(
        tmp_path, [spec(fleet, "small-a"), spec(fleet, "small-b")], {"fallback": False},
        timeouts={"connect_s": 1, "ttft_s": 0.5, "idle_s": 5, "total_s": 30},
    )  # fmt: skip
    fault(fleet["small-a"], mode="slow_first_token", ms=5000)
    with serve_in_thread(cfg) as gw:
        c = client(gw)
        for _ in range(2):  # ties take turns, so one of the two starts on small-a
            assert stream_text(c, max_tokens=3) == " tok1 tok2 tok3"
        assert stats(fleet["small-b"])["received"] == 2
        until(lambda: stats(fleet["small-a"])["aborted"] == 1)
        assert gw.services.metrics.retries.labels("small")._value.get() == 1


def test_error_before_the_first_token_is_retried(fleet: Engines, tmp_path: Path) -> None:
    """Expected: an engine that fails inside the stream before any token (status 200 then
    an error frame) is retried elsewhere: the client sees one clean stream."""
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "small-b")])
    fault(fleet["small-a"], mode="error_mid_stream", tokens=0)
    with serve_in_thread(cfg) as gw:
        c = client(gw)
        for _ in range(2):  # ties take turns, so one of the two starts on small-a
            assert stream_text(c, max_tokens=4) == " tok1 tok2 tok3 tok4"
    assert stats(fleet["small-a"])["received"] == 1
    assert stats(fleet["small-b"])["received"] == 2


# ---------------------------------------------------------------- stall mid-stream


def test_stall_mid_stream_ends_with_an_error_event_and_is_not_retried(
    fleet: Engines, tmp_path: Path
) -> None:
    """Expected: 3 tokens reach the client, then silence past idle_s=0.5: an SSE error
    event ends the stream; no retry or fallback (bytes were sent); the partial output is
    recorded (status timeout, estimated completion tokens) and the upstream request aborted."""
    recorder = ListRecorder()
    cfg = settings(
        tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a")],
        timeouts={"connect_s": 1, "ttft_s": 5, "idle_s": 0.5, "total_s": 30},
    )  # fmt: skip
    fault(fleet["small-a"], mode="stall_after", tokens=3)
    with serve_in_thread(cfg, recorder=recorder) as gw:
        got: list[str] = []
        stream = client(gw).chat.completions.create(
            model="small", messages=MSGS, max_tokens=10, stream=True
        )
        with pytest.raises(openai.APIError) as exc:
            for chunk in stream:
                if chunk.choices:
                    got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) == " tok1 tok2 tok3"
        assert "idle time" in exc.value.message
        until(lambda: len(recorder.records) == 1)
        rec = recorder.records[0]
        assert (rec.status, rec.http_status, rec.engine) == ("timeout", 504, "small-a")
        # billed: the gateway counts the 3 relayed tokens itself (its tokenizer may split
        # " tok1" in two), since the engine never sent usage
        assert rec.usage_estimated and rec.completion_tokens >= 3
        until(lambda: stats(fleet["small-a"])["aborted"] == 1)
        assert stats(fleet["large-a"])["received"] == 0


# ---------------------------------------------------------------- 5xx bursts


def test_5xx_burst_is_retried_and_ejects_the_engine_until_a_probe_passes(
    fleet: Engines, tmp_path: Path
) -> None:
    """Expected: every client request succeeds (retried on the other replica); after
    failure_threshold=2 failures the sick replica gets no more traffic; once its open
    period is over and it is fixed, one probe request closes the breaker again."""
    cfg = settings(
        tmp_path, [spec(fleet, "small-a"), spec(fleet, "small-b")],
        {"fallback": False, "breaker": {**FAST, "failure_threshold": 2, "open_seconds": 600}},
    )  # fmt: skip
    fault(fleet["small-a"], mode="error_5xx", status=503)
    with serve_in_thread(cfg) as gw:
        c = client(gw)
        for _ in range(10):
            r = c.chat.completions.create(model="small", messages=MSGS, max_tokens=2)
            assert r.choices[0].message.content == " tok1 tok2"
        assert stats(fleet["small-a"])["received"] == 2
        assert stats(fleet["small-b"])["received"] == 10
        svc = gw.services
        a = svc.pool.engines["small-a"]
        assert not a.healthy  # /health is fine, but the breaker keeps it out
        fault(fleet["small-a"], mode="none")
        svc.breakers.state(a).open_until = 0.0  # the open period is over
        for _ in range(4):
            c.chat.completions.create(model="small", messages=MSGS, max_tokens=2)
        assert a.healthy
        assert stats(fleet["small-a"])["received"] >= 3  # the probe, then regular traffic


def test_5xx_on_a_lone_engine_falls_back_to_the_other_tier(fleet: Engines, tmp_path: Path) -> None:
    """Expected: a 500 from the small tier's only engine is retried on the large tier."""
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a")])
    fault(fleet["small-a"], mode="error_5xx", status=500, count=1)
    with serve_in_thread(cfg) as gw:
        raw = client(gw).chat.completions.with_raw_response.create(
            model="small", messages=MSGS, max_tokens=2
        )
        assert raw.headers["x-tollgate-tier"] == "large"
        assert raw.headers["x-tollgate-route-reason"] == "by_name;fallback_from:small"


def test_a_4xx_from_the_engine_is_not_retried(fleet: Engines, tmp_path: Path) -> None:
    """Expected: the engine's 400 reaches the client as a 400; no other engine is tried."""
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a")])
    fault(fleet["small-a"], mode="error_5xx", status=400, count=1)
    with serve_in_thread(cfg) as gw:
        with pytest.raises(openai.BadRequestError):
            client(gw).chat.completions.create(model="small", messages=MSGS, max_tokens=2)
        assert stats(fleet["large-a"])["received"] == 0


# ---------------------------------------------------------------- queue build-up


async def test_queue_build_up_sheds_with_503_and_retry_after(
    fleet: Engines, tmp_path: Path
) -> None:
    """Expected: cap 1 + queue 1 on the only engine: the first request runs, the second
    waits, the third is shed at once with 503 engine_overloaded + Retry-After; when the
    first leaves, the waiting one is served."""
    cfg = settings(
        tmp_path, [spec(fleet, "small-a", max_concurrency=1, max_queue=1, queue_timeout_s=30)],
        {"fallback": False},
    )  # fmt: skip
    fault(fleet["small-a"], mode="hang", count=1)
    with serve_in_thread(cfg) as gw:
        ac = openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        engine = gw.services.pool.engines["small-a"]
        pool = gw.services.pool

        async def consume() -> str:
            s = await ac.chat.completions.create(
                model="small", messages=MSGS, max_tokens=2, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

        async def until_async(check: Callable[[], bool]) -> None:
            for _ in range(1000):
                if check():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("condition not reached in time")

        first = asyncio.create_task(consume())  # hangs on the engine, holding the slot
        await until_async(lambda: engine.in_flight == 1)
        second = asyncio.create_task(consume())
        await until_async(lambda: pool.queue_depth(engine) == 1)
        with pytest.raises(openai.APIStatusError) as exc:
            await ac.chat.completions.create(model="small", messages=MSGS, max_tokens=2)
        assert exc.value.status_code == 503
        assert exc.value.response.headers["retry-after"] == "1"
        assert exc.value.response.json()["error"]["code"] == "engine_overloaded"
        first.cancel()  # the client leaves: its slot passes to the waiting request
        assert await second == " tok1 tok2"
        await until_async(lambda: engine.in_flight == 0)
        await ac.close()


# ---------------------------------------------------------------- budget refusals


class RefusingQuotas:
    """A quota store whose every key is out of budget."""

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        raise QuotaExceededError("Budget exhausted for this key.")

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        return None

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        return 0

    async def aclose(self) -> None:
        return None


def test_budget_refusal_is_never_retried_or_fallen_back(fleet: Engines, tmp_path: Path) -> None:
    """Expected: 429 insufficient_quota, and no engine of either tier sees the request."""
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a")])
    with serve_in_thread(cfg, quotas=RefusingQuotas()) as gw:
        c = client(gw)
        for model, stream in (("small", False), ("auto", False), ("large", True)):
            with pytest.raises(openai.RateLimitError) as exc:
                c.chat.completions.create(model=model, messages=MSGS, max_tokens=2, stream=stream)
            assert exc.value.response.json()["error"]["code"] == "insufficient_quota"
    assert stats(fleet["small-a"])["received"] == 0
    assert stats(fleet["large-a"])["received"] == 0


# ---------------------------------------------------------------- rollouts


def test_shadow_copy_is_recorded_apart_and_not_billed_to_the_key(
    fleet: Engines, tmp_path: Path
) -> None:
    """Expected: the client is answered by large-a; large-b gets a copy whose answer is
    dropped and whose cost is recorded under the pseudo key 'shadow'."""
    recorder = ListRecorder()
    routing = {"rollouts": {"large": {"shadow": {"engine": "large-b", "sample": 1.0}}}}
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a"),
                              spec(fleet, "large-b", version="v2")], routing)  # fmt: skip
    with serve_in_thread(cfg, recorder=recorder) as gw:
        raw = client(gw).chat.completions.with_raw_response.create(
            model="large", messages=MSGS, max_tokens=3
        )
        assert raw.parse().choices[0].message.content == " tok1 tok2 tok3"
        until(lambda: len(recorder.records) == 2)
    by_status = {r.status: r for r in recorder.records}
    assert by_status["ok"].engine == "large-a" and by_status["ok"].key_id == "static-0"
    shadow = by_status["shadow"]
    assert (shadow.engine, shadow.key_id, shadow.completion_tokens) == ("large-b", "shadow", 3)
    assert shadow.cost_nusd > 0 and shadow.request_id.endswith(":shadow")
    assert stats(fleet["large-a"])["received"] == 1 == stats(fleet["large-b"])["received"]


def test_sticky_ab_by_key(fleet: Engines, tmp_path: Path) -> None:
    """Expected: with a 50/50 sticky split, one key is always served by the same version."""
    routing = {"rollouts": {"large": {"split": "sticky"}}}
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a", version="v1"),
                              spec(fleet, "large-b", version="v2")], routing)  # fmt: skip
    with serve_in_thread(cfg) as gw:
        c = client(gw)
        for _ in range(6):
            c.chat.completions.create(model="large", messages=MSGS, max_tokens=1)
    counts = sorted([stats(fleet["large-a"])["received"], stats(fleet["large-b"])["received"]])
    assert counts == [0, 6]


def test_retries_stop_when_the_retry_budget_is_spent(fleet: Engines, tmp_path: Path) -> None:
    """Expected: both replicas answer 503. With a retry budget, a request tries both
    (attempts=2); with an empty budget it tries one and the client gets the 503."""
    specs = [spec(fleet, "small-a"), spec(fleet, "small-b")]
    for name in ("small-a", "small-b"):
        fault(fleet[name], mode="error_5xx", status=503)
    breaker = {**FAST, "failure_threshold": 100}
    with serve_in_thread(settings(tmp_path, specs, {"fallback": False, "breaker": breaker})) as gw:
        with pytest.raises(openai.APIStatusError) as exc:
            client(gw).chat.completions.create(model="small", messages=MSGS, max_tokens=2)
        assert exc.value.status_code == 503
    tried = stats(fleet["small-a"])["received"] + stats(fleet["small-b"])["received"]
    assert tried == 2
    no_budget = {"budget_ratio": 0, "budget_min_per_s": 0}
    routing = {"fallback": False, "breaker": breaker, "retries": no_budget}
    with serve_in_thread(settings(tmp_path, specs, routing)) as gw:
        with pytest.raises(openai.APIStatusError) as exc:
            client(gw).chat.completions.create(model="small", messages=MSGS, max_tokens=2)
        assert exc.value.status_code == 503
    tried_after = stats(fleet["small-a"])["received"] + stats(fleet["small-b"])["received"]
    assert tried_after - tried == 1
