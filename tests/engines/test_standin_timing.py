"""The vLLM stand-in engine's timing: TTFT and TPOT pacing, the running/waiting split in
`/metrics`, and client disconnects aborting generation.

Servers are real child processes (`fast` and `paced`, see `tests/support/standin.py`);
each test resets the server's stats and fault first.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from engines.standin.parsing import count_prompt_tokens
from engines.standin.process import StandinProcess
from tests.support.standin import (
    CHAT,
    MESSAGES,
    MODEL,
    TPOT,
    TTFT,
    async_client,
    client,
    eventually,
    metrics,
    stats,
)

# ---- timing, batching, metrics ----------------------------------------------------


def test_ttft_and_tpot_pace_the_stream(paced: StandinProcess) -> None:
    with client(paced) as oai:
        start = time.monotonic()
        stream = oai.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=6, stream=True
        )
        arrivals = [time.monotonic() - start for chunk in stream if chunk.choices[0].delta.content]
        start = time.monotonic()
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
        whole = time.monotonic() - start
    # The server emits token k no earlier than TTFT + (k - 1) * TPOT after admission; a
    # busy client may read late, so only lower bounds are stable.
    assert len(arrivals) == 6
    assert all(t >= TTFT + k * TPOT - 0.002 for k, t in enumerate(arrivals))
    assert whole >= TTFT + 5 * TPOT - 0.002


async def test_metrics_show_running_and_waiting_and_queue_delays_first_token(
    paced: StandinProcess,
) -> None:
    before = await asyncio.to_thread(metrics, paced)
    first_token: list[float] = []

    async def one(oai: openai.AsyncOpenAI, start: float) -> None:
        stream = await oai.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=20, stream=True
        )
        async for chunk in stream:
            if chunk.choices[0].delta.content == " tok1":
                first_token.append(time.monotonic() - start)

    async with async_client(paced) as oai:
        start = time.monotonic()
        requests = [asyncio.create_task(one(oai, start)) for _ in range(5)]
        load = ("vllm:num_requests_running", "vllm:num_requests_waiting")
        during = await asyncio.to_thread(metrics, paced)
        while [during[name] for name in load] != [2, 3] and time.monotonic() - start < 0.25:
            during = await asyncio.to_thread(metrics, paced)  # until all five have arrived
        await asyncio.gather(*requests)

    assert during["vllm:num_requests_running"] == 2
    assert during["vllm:num_requests_waiting"] == 3
    assert during["vllm:kv_cache_usage_perc"] == 1.0
    generation = TTFT + 19 * TPOT
    first_token.sort()
    assert first_token[1] < generation <= first_token[2]  # the third waited for a slot
    assert first_token[4] >= 2 * generation
    after = await asyncio.to_thread(metrics, paced)
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
    grew = {name: after[name] - before[name] for name in after}
    assert grew["vllm:prompt_tokens_total"] == 5 * count_prompt_tokens(CHAT)
    assert grew["vllm:generation_tokens_total"] == 5 * 20
    assert grew['vllm:request_success_total{finished_reason="length"}'] == 5
    assert stats(paced)["peak_in_flight"] == 5


def test_client_disconnect_aborts_generation(paced: StandinProcess) -> None:
    before = metrics(paced)["vllm:generation_tokens_total"]
    url = paced.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=CHAT | {"stream": True, "max_tokens": 200}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # generation has begun
    eventually(lambda: stats(paced)["aborted"] == 1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=CHAT | {"max_tokens": 200}, timeout=0.2)
    eventually(lambda: stats(paced)["aborted"] == 2 and stats(paced)["in_flight"] == 0)
    assert metrics(paced)["vllm:num_requests_running"] == 0
    assert metrics(paced)["vllm:generation_tokens_total"] - before < 20  # generation stopped
