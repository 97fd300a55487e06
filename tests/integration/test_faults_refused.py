"""Engines down or refusing, end to end: ejection, a clear 503, fallback between tiers.

A real gateway, the official ``openai`` client, and stand-in engines that fail on
purpose (``engines.standin``; the fleet is ``tests/support/fleet.py``). Each test states
the expected outcome.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from gateway.config import Settings
from tests.support import ListRecorder, gateway_config, serve_in_thread
from tests.support.fleet import (
    MSGS,
    Engines,
    client,
    dead,
    settings,
    spec,
    stream_text,
    until,
)
from tests.support.standin import stats

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
