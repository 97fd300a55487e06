"""The gateway in front of real vLLM (CPU) engines serving real SmolLM2, via `openai`."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.support import CLIENT_KEY, RunningGateway

pytestmark = pytest.mark.real_engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(real_running: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_running.v1, api_key=CLIENT_KEY, max_retries=0, timeout=120)


@pytest.mark.parametrize("model", ["small", "large"])
def test_chat_answers_for_real(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, max_tokens=20, temperature=0
    )
    resp = raw.parse()
    assert "Paris" in (resp.choices[0].message.content or "")
    # Served by the tier asked for, by its own engine: a fallback can't pass for it.
    assert raw.headers["x-tollgate-tier"] == model
    assert raw.headers["x-tollgate-engine"] == f"{model}-0"
    assert "fallback" not in raw.headers["x-tollgate-route-reason"]
    assert resp.usage is not None and resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 20


def test_streaming_matches_non_streaming_and_reports_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(
        model="large", messages=QUESTION, max_tokens=16, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="large",
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and full.usage is not None
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens


async def test_async_streaming_against_both_tiers(real_running: RunningGateway) -> None:
    client = openai.AsyncOpenAI(base_url=real_running.v1, api_key=CLIENT_KEY, max_retries=0)
    for model in ("small", "large"):
        stream = await client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=12, temperature=0, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert len(parts) >= 2 and "".join(parts).strip()


def test_completions_endpoint_for_real(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="small", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert resp.choices[0].text.strip()
    assert resp.usage is not None and resp.usage.completion_tokens <= 5


def test_engine_validation_error_becomes_400(client: openai.OpenAI) -> None:
    # The prompt alone exceeds the 2048-token context: vLLM refuses, the client learns why.
    long_prompt = "word " * 3000
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="large", messages=[{"role": "user", "content": long_prompt}], max_tokens=1000
        )
    assert "maximum context length" in str(exc.value)
    assert "127.0.0.1" not in str(exc.value)


def test_disconnect_aborts_the_real_engine_request(real_running: RunningGateway) -> None:
    engine = real_running.services.pool.engines["large-0"]
    with httpx.stream(
        "POST",
        real_running.v1 + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={
            "model": "large",
            "messages": [{"role": "user", "content": "Count to one thousand."}],
            "max_tokens": 1500,
            "stream": True,
            "ignore_eos": True,
        },
        timeout=120,
    ) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data:"):
                got += 1
            if got >= 3:
                break
    # vLLM reports the aborted request gone from its running queue.
    url = engine.url + "/metrics"
    deadline = time.monotonic() + 30
    running = None
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=5).text
        running = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:num_requests_running")
        )
        if running == 0:
            break
        time.sleep(0.2)
    assert running == 0
    assert engine.in_flight == 0
