"""The vLLM stand-in engine without a server: prompt counting, faults, config, the app in
process (no uvicorn), and the --api-key guard."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from engines.standin.app import create_app
from engines.standin.cli import main
from engines.standin.config import StandinConfig
from engines.standin.engine import StandinEngine
from engines.standin.faults import NO_FAULT, Fault, FaultInjector
from engines.standin.parsing import count_prompt_tokens, embedding_for
from tests.support.standin import (
    CHAT,
    MODEL,
    sse_events,
)

# ---- pure functions ---------------------------------------------------------------


def test_count_prompt_tokens_follows_the_documented_rules() -> None:
    parts = [{"type": "text", "text": "two words"}, {"type": "image_url", "image_url": {}}]
    assert count_prompt_tokens(CHAT) == (4 + 3) + (4 + 6)
    assert count_prompt_tokens({"messages": [{"role": "user", "content": parts}]}) == 4 + 2
    assert count_prompt_tokens({"messages": [{"role": "assistant", "content": None}]}) == 4
    assert count_prompt_tokens({"prompt": "one two three"}) == 1 + 3
    assert count_prompt_tokens({"prompt": ["a b", "c"]}) == (1 + 2) + (1 + 1)
    assert count_prompt_tokens({"prompt": [5, 6, 7]}) == 3
    assert count_prompt_tokens({"input": [[1, 2], [3]]}) == 3
    bad_bodies: list[dict[str, Any]] = [
        {"messages": []},
        {"prompt": 3},
        {"messages": [{"content": "no role"}]},
    ]
    for bad in bad_bodies:
        with pytest.raises(ValueError):
            count_prompt_tokens(bad)


def test_fault_specs_parse_and_reject_nonsense() -> None:
    burst = Fault.from_spec("error_5xx:503,count=3,p=0.5")
    assert burst == Fault(mode="error_5xx", status=503, count=3, probability=0.5)
    assert Fault.from_spec("stall_after:4") == Fault(mode="stall_after", tokens=4)
    assert Fault.from_spec("slow_first_token:250").extra_ttft_ms == 250
    assert Fault.from_json({"mode": "error_mid_stream", "tokens": 2}).tokens_before_failing(9) == 2
    bad_specs = ["bogus", "hang:3", "error_5xx:200", "error_5xx:503,count=0", "stall_after:1.5"]
    for spec in [*bad_specs, "error_5xx:abc", "close,p=2", "hang,count"]:
        with pytest.raises(ValueError):
            Fault.from_spec(spec)
    for data in ({"mode": "hang", "delay": 1}, {"mode": "stall_after", "tokens": True}, [1]):
        with pytest.raises(ValueError):
            Fault.from_json(data)


def test_fault_count_is_spent_only_by_requests_it_hits() -> None:
    injector = FaultInjector(Fault(mode="hang", count=3, probability=0.5), seed=1)
    draws = [injector.draw() for _ in range(100)]
    assert sum(d.mode == "hang" for d in draws) == 3
    assert injector.current is NO_FAULT
    assert draws[0] is NO_FAULT or draws[1] is NO_FAULT or draws[2] is NO_FAULT  # random spots


def test_config_and_cli_fail_fast_on_bad_values() -> None:
    with pytest.raises(ValueError, match="max_num_seqs"):
        StandinConfig(max_num_seqs=0)
    with pytest.raises(SystemExit):
        main(["--fault", "explode"])


def test_embedding_vectors_are_deterministic_unit_vectors() -> None:
    vector = embedding_for("hello", 16)
    assert vector == embedding_for("hello", 16) != embedding_for("hullo", 16)
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-5)
    assert embedding_for([1, 2, 3], 8) != embedding_for([1, 2, 4], 8)


async def test_app_runs_in_process_without_uvicorn() -> None:
    app = create_app(StandinConfig(model=MODEL))
    assert isinstance(app.state.engine, StandinEngine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://standin") as http:
        response = await http.post("/v1/chat/completions", json=CHAT | {"max_tokens": 2})
        streamed = await http.post("/v1/completions", json={"prompt": "x", "stream": True})
    assert response.json()["choices"][0]["message"]["content"] == " tok1 tok2"
    assert len(sse_events(streamed.text)) == 16 + 1
    assert app.state.engine.hooks.stats.completed == 2


async def test_api_key_guards_v1_like_vllm() -> None:
    app = create_app(StandinConfig(model=MODEL, api_key="sekrit"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://standin") as http:
        refused = await http.post("/v1/chat/completions", json=CHAT)
        wrong = await http.get("/v1/models", headers={"authorization": "Bearer nope"})
        ok = await http.get("/v1/models", headers={"authorization": "Bearer sekrit"})
        health = await http.get("/health")
        metrics = await http.get("/metrics")
    assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
    assert wrong.status_code == 401 and ok.status_code == 200
    assert health.status_code == 200 and metrics.status_code == 200  # open, as in vLLM
