"""Readiness follows what the gateway can serve, fallback included (reliability item 21).

A tier going down must not take the gateway out of its Service while fallback still
serves every model; readiness drops only when some model has no engine left, or while
the gateway shuts down. Per-engine health is on /health/engines and in
``tollgate_engine_up``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engines.standin.process import StandinProcess
from gateway.config import Settings
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    GatewayProcess,
    RunningGateway,
    engines_health,
    free_port,
    gateway_config,
    serve_in_thread,
    wait_for,
    write_config,
)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def engine_up(gw: RunningGateway, name: str, tier: str) -> float:
    text = httpx.get(gw.base_url + "/metrics", timeout=5).text
    prefix = f'tollgate_engine_up{{engine="{name}",tier="{tier}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"{prefix!r} not exported"
    return float(lines[0].removeprefix(prefix))


@pytest.fixture
def pair() -> Iterator[dict[str, StandinProcess]]:
    small = StandinProcess(model="standin-small", tpot_ms=1)
    large = StandinProcess(model="standin-large", tpot_ms=1)
    small.start()
    large.start()
    try:
        yield {"small": small, "large": large}
    finally:
        small.stop()
        large.stop()


def test_ready_while_fallback_serves_and_not_when_the_last_engine_dies(
    pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    specs = [
        EngineSpec("small-0", pair["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", pair["large"].base_url, "large", "standin-large"),
    ]
    cfg = gateway_config(tmp_path, specs)
    with serve_in_thread(Settings(**cfg)) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        ready = httpx.get(gw.base_url + "/health/ready", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["models"] == {"small": True, "large": True, "auto": True}
        health = engines_health(gw)
        assert health["large-0"]["healthy"] is True and health["large-0"]["breaker"] == "closed"
        assert health["large-0"]["tier"] == "large" and health["large-0"]["in_flight"] == 0
        assert engine_up(gw, "large-0", "large") == 1.0

        # The large tier dies: still ready, and `large` is served by the small tier.
        pair["large"].stop()
        wait_for(lambda: engines_health(gw)["large-0"]["healthy"] is False)
        assert engines_health(gw)["large-0"]["breaker"] == "ejected"
        assert engine_up(gw, "large-0", "large") == 0.0
        ready = httpx.get(gw.base_url + "/health/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model="large", messages=MESSAGES, max_tokens=3
            )
            assert raw.headers["x-tollgate-tier"] == "small"
            assert raw.parse().choices[0].message.content
        with client.chat.completions.with_streaming_response.create(
            model="large",
            messages=MESSAGES,
            max_tokens=3,
            stream=True,
        ) as streamed:
            assert streamed.headers["x-tollgate-tier"] == "small"
            assert any(chunk.choices for chunk in streamed.parse())

        # The last engine dies: no model can be served, readiness drops.
        pair["small"].stop()
        wait_for(lambda: httpx.get(gw.base_url + "/health/ready", timeout=5).status_code == 503)
        body = httpx.get(gw.base_url + "/health/ready", timeout=5).json()
        assert body["unservable"] == ["auto", "large", "small"]
        assert httpx.get(gw.base_url + "/health", timeout=5).status_code == 200  # alive

        # One comes back: ready again, every model served through it.
        pair["large"].start()
        wait_for(lambda: httpx.get(gw.base_url + "/health/ready", timeout=5).status_code == 200)
        raw = client.chat.completions.with_raw_response.create(
            model="small", messages=MESSAGES, max_tokens=3
        )
        assert raw.headers["x-tollgate-tier"] == "large"


def test_sigterm_turns_readiness_503_before_the_stream_ends(tmp_path: Path) -> None:
    with StandinProcess(model="slow", tpot_ms=100) as engine:
        port = free_port()
        cfg = gateway_config(
            tmp_path,
            [EngineSpec("e0", engine.base_url, "small", "slow")],
            port=port,
            server={"drain_seconds": 20, "unready_seconds": 1.0},
        )
        gw = GatewayProcess(write_config(tmp_path, cfg), port).start()
        try:
            assert httpx.get(gw.base_url + "/health/ready", timeout=5).status_code == 200
            lines: list[str] = []
            first = threading.Event()

            def stream() -> None:
                with httpx.stream(
                    "POST",
                    gw.base_url + "/v1/chat/completions",
                    headers={"authorization": f"Bearer {CLIENT_KEY}"},
                    json={"model": "small", "messages": MESSAGES, "max_tokens": 30, "stream": True},
                    timeout=30,
                ) as r:
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            lines.append(line)
                            first.set()

            t = threading.Thread(target=stream)
            t.start()
            assert first.wait(10)
            gw.terminate()
            wait_for(
                lambda: httpx.get(gw.base_url + "/health/ready", timeout=5).status_code == 503,
                timeout=2,
            )
            assert lines[-1] != "data: [DONE]"  # the stream is still running
            t.join(30)
            assert gw.wait(30) == 0
            assert lines[-1] == "data: [DONE]"
            assert sum("tok" in line for line in lines) == 30  # finished in full
        finally:
            gw.stop()
