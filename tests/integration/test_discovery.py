"""Several engine replicas behind one name (reliability item 22).

One ``discover: dns`` entry names a headless Service; the test resolver answers with
several stand-in engines (127.0.0.1, distinct ports), as DNS would with one A record per
pod. Each replica is balanced, health-checked and broken individually, replicas come
and go with the records, and every engine request carries the engine API key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    engines_health,
    gateway_config,
    serve_in_thread,
    wait_for,
)

ENGINE_KEY = "engine-key-for-tests-0001"
HEADLESS = "engine-small-headless"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


class Records:
    """A resolver whose answer the test edits, like a headless Service's A records."""

    def __init__(self) -> None:
        self.addresses: dict[str, list[tuple[str, int]]] = {}

    async def __call__(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        return list(self.addresses[host])


def received(p: StandinProcess) -> int:
    return int(httpx.get(p.base_url + "/_standin/stats", timeout=5).json()["received"])


def replica(p: StandinProcess) -> str:
    return f"small-127.0.0.1-{p.port}"


@pytest.fixture
def replicas() -> Iterator[list[StandinProcess]]:
    procs = [StandinProcess(model="standin-small", tpot_ms=1, api_key=ENGINE_KEY) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def test_replicas_behind_one_name(
    replicas: list[StandinProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TG_TEST_ENGINE_KEY", ENGINE_KEY)
    first, second, third, later = replicas
    records = Records()
    records.addresses[HEADLESS] = [("127.0.0.1", p.port) for p in (first, second, third)]
    options = {"discover": "dns", "discover_interval_s": 0.2, "api_key_env": "TG_TEST_ENGINE_KEY"}
    spec = EngineSpec("small", f"http://{HEADLESS}:8000", "small", "standin-small", options)
    cfg = gateway_config(tmp_path, [spec])
    with serve_in_thread(Settings(**cfg), resolver=records) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        assert set(engines_health(gw)) == {replica(p) for p in (first, second, third)}
        for _ in range(30):
            client.chat.completions.create(model="small", messages=MESSAGES, max_tokens=2)
        counts = [received(p) for p in (first, second, third)]
        assert sum(counts) == 30 and min(counts) >= 5, counts  # spread over the replicas
        seen = httpx.get(first.base_url + "/_standin/stats", timeout=5).json()["last_request"]
        assert seen["headers"]["authorization"] == f"Bearer {ENGINE_KEY}"
        unauthorized = httpx.post(first.base_url + "/v1/chat/completions", json={}, timeout=5)
        assert unauthorized.status_code == 401  # the stand-in checks the key, as vLLM does

        text = httpx.get(gw.base_url + "/metrics", timeout=5).text
        for p in (first, second, third):
            assert f'tollgate_engine_up{{engine="{replica(p)}",tier="small"}} 1.0' in text

        # One pod dies: its own breaker opens, the others keep serving everything.
        second.stop()
        for _ in range(20):
            client.chat.completions.create(model="small", messages=MESSAGES, max_tokens=2)
        wait_for(lambda: engines_health(gw)[replica(second)]["healthy"] is False)
        rows = engines_health(gw)
        assert rows[replica(second)]["breaker"] in ("open", "ejected")
        assert rows[replica(first)]["healthy"] is True and rows[replica(third)]["healthy"]
        before = [received(p) for p in (first, third)]
        for _ in range(10):
            client.chat.completions.create(model="small", messages=MESSAGES, max_tokens=2)
        assert sum(received(p) for p in (first, third)) - sum(before) == 10
        assert httpx.get(gw.base_url + "/health/ready", timeout=5).status_code == 200

        # The records change: the dead pod leaves, a new one joins and takes traffic.
        records.addresses[HEADLESS] = [("127.0.0.1", p.port) for p in (first, third, later)]
        wait_for(lambda: set(engines_health(gw)) == {replica(p) for p in (first, third, later)})
        wait_for(lambda: engines_health(gw)[replica(later)]["healthy"] is True)
        for _ in range(15):
            client.chat.completions.create(model="small", messages=MESSAGES, max_tokens=2)
        assert received(later) >= 3
        text = httpx.get(gw.base_url + "/metrics", timeout=5).text
        gauges = [ln for ln in text.splitlines() if ln.startswith("tollgate_engine_")]
        assert not [ln for ln in gauges if replica(second) in ln]  # its gauges left with it
        assert any(replica(later) in ln for ln in gauges)
