"""Engines that hang rather than die: each ends at its time limit with the documented
error, bills what the engine did, and counts against the engine's breaker.

Limits here: first token 0.5 s (from the request's start), 0.4 s between events, 1.5 s
in all. The stand-in misbehaves on purpose (``engines.standin.faults``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.ledger.record import LedgerRecord
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    ListRecorder,
    RunningGateway,
    gateway_config,
    serve_in_thread,
    wait_for,
)
from tests.support.standin import reset
from tests.support.standin import set_fault as fault

TTFT_S, IDLE_S, TOTAL_S = 0.5, 0.4, 1.5
BODY = {"model": "small", "messages": [{"role": "user", "content": "tell me about tides"}]}


@pytest.fixture(scope="module")
def engine() -> Iterator[StandinProcess]:
    p = StandinProcess(model="standin-small", tpot_ms=5, max_num_seqs=64)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def gw(engine: StandinProcess, tmp_path: Path) -> Iterator[tuple[RunningGateway, ListRecorder]]:
    reset(engine)
    cfg = gateway_config(
        tmp_path,
        [EngineSpec("small-0", engine.base_url, "small", "standin-small")],
        timeouts={"connect_s": 1, "ttft_s": TTFT_S, "idle_s": IDLE_S, "total_s": TOTAL_S},
        routing={
            "fallback": False,
            "retries": {"attempts": 1},
            "breaker": {"failure_threshold": 5, "health_interval_s": 30},
        },
    )
    recorder = ListRecorder()
    with serve_in_thread(Settings(**cfg), recorder=recorder) as running:
        yield running, recorder
    reset(engine)


def call(gw: RunningGateway, stream: bool) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    resp = httpx.post(
        gw.v1 + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={**BODY, "stream": stream, "max_tokens": 20},
        timeout=10,
    )
    return resp, time.monotonic() - t


def the_record(recorder: ListRecorder) -> LedgerRecord:
    wait_for(lambda: len(recorder.records) == 1, timeout=5)
    return recorder.records[0]


def breaker_failures(gw: RunningGateway) -> int:
    svc = gw.services
    return svc.breakers.state(svc.pool.engines["small-0"]).failures  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("spec", "stream", "limit", "within"),
    [
        pytest.param({"mode": "hang"}, False, "total time", TOTAL_S, id="silent-unary"),
        pytest.param({"mode": "hang"}, True, "time to first token", TTFT_S, id="silent-stream"),
        pytest.param(
            {"mode": "stall_after", "tokens": 0},
            True,
            "time to first token",
            TTFT_S,
            id="headers-then-stall",
        ),
        pytest.param(
            {"mode": "trickle", "ms": 1000}, False, "total time", TOTAL_S, id="trickle-unary"
        ),
        pytest.param(
            {"mode": "trickle", "ms": 1000},
            True,
            "time to first token",
            TTFT_S,
            id="trickle-stream",
        ),
    ],
)
def test_an_engine_that_never_finishes_its_first_answer_times_out(
    gw: tuple[RunningGateway, ListRecorder],
    engine: StandinProcess,
    spec: dict[str, object],
    stream: bool,
    limit: str,
    within: float,
) -> None:
    running, recorder = gw
    fault(engine, **spec)
    resp, took = call(running, stream)
    # Nothing had reached the client: a plain HTTP error, not an event stream.
    assert resp.status_code == 504, resp.text
    error = resp.json()["error"]
    assert limit in error["message"] and "127.0.0.1" not in error["message"]
    assert within <= took < within + 1.0
    rec = the_record(recorder)
    assert (rec.status, rec.http_status, rec.usage_estimated) == ("timeout", 504, True)
    assert rec.prompt_tokens > 0 and rec.cost_nusd > 0  # the engine had the prompt
    assert breaker_failures(running) == 1


def test_a_stream_that_stalls_midway_ends_with_an_error_event(
    gw: tuple[RunningGateway, ListRecorder], engine: StandinProcess
) -> None:
    running, recorder = gw
    fault(engine, mode="stall_after", tokens=3)
    resp, took = call(running, stream=True)
    assert resp.status_code == 200
    events = [ln[6:] for ln in resp.text.split("\n\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]" and "idle time between chunks" in events[-2]
    assert IDLE_S <= took < TTFT_S + IDLE_S + 1.0
    rec = the_record(recorder)
    assert (rec.status, rec.http_status) == ("timeout", 504)
    assert rec.usage_estimated and rec.completion_tokens >= 3 and rec.cost_nusd > 0
    assert breaker_failures(running) == 1
