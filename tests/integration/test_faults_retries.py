"""Slow, stalled and failing engines, end to end: timeouts, retries and their budget.

A real gateway, the official ``openai`` client, and stand-in engines that fail on
purpose (``engines.standin``; the fleet is ``tests/support/fleet.py``). Each test states
the expected outcome.
"""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.support import ListRecorder, serve_in_thread
from tests.support.fleet import (
    FAST,
    MSGS,
    Engines,
    client,
    settings,
    spec,
    stream_text,
    until,
)
from tests.support.standin import set_fault as fault
from tests.support.standin import stats

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


# ---------------------------------------------------------------- retry budget


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
