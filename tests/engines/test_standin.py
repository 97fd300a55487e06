"""The vLLM stand-in engine, driven over HTTP with the official `openai` client.

Servers are real child processes (`StandinProcess`): `fast` (no delays, embeddings on)
and `paced` (TTFT 60 ms, TPOT 15 ms, two sequences at a time). Each test resets the
server's stats and fault first.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engines.standin.app import create_app
from engines.standin.cli import main
from engines.standin.config import StandinConfig
from engines.standin.engine import StandinEngine
from engines.standin.faults import NO_FAULT, Fault, FaultInjector
from engines.standin.parsing import count_prompt_tokens, embedding_for
from engines.standin.process import StandinProcess, run_standin

MODEL = "standin-test"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the nice people"},
]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
TTFT, TPOT = 0.060, 0.015  # the paced server's timing, in seconds


@pytest.fixture(scope="module")
def fast_server() -> Iterator[StandinProcess]:
    with StandinProcess(model=MODEL, embeddings=True, seed=7) as process:
        yield process


@pytest.fixture(scope="module")
def paced_server() -> Iterator[StandinProcess]:
    with StandinProcess(model=MODEL, ttft_ms=60, tpot_ms=15, max_num_seqs=2) as process:
        yield process


def _reset(process: StandinProcess) -> StandinProcess:
    httpx.post(process.base_url + "/_standin/reset", timeout=5).raise_for_status()
    return process


@pytest.fixture
def fast(fast_server: StandinProcess) -> StandinProcess:
    return _reset(fast_server)


@pytest.fixture
def paced(paced_server: StandinProcess) -> StandinProcess:
    return _reset(paced_server)


def client(process: StandinProcess, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=process.base_url + "/v1", api_key="unused", max_retries=0, timeout=timeout
    )


def async_client(process: StandinProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=process.base_url + "/v1", api_key="unused", max_retries=0, timeout=10
    )


def stats(process: StandinProcess) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(process.base_url + "/_standin/stats", timeout=5).json()
    return data


def set_fault(process: StandinProcess, **fault: object) -> None:
    httpx.post(process.base_url + "/_standin/faults", json=fault, timeout=5).raise_for_status()


def metrics(process: StandinProcess) -> dict[str, float]:
    """Samples of `/metrics` by name, with labels other than model_name kept in the key."""
    text = httpx.get(process.base_url + "/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            name = name.replace(f',model_name="{MODEL}"', "")
            samples[name.replace(f'{{model_name="{MODEL}"}}', "")] = float(value)
    return samples


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def sse_events(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


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


# ---- wire format ------------------------------------------------------------------


def test_models_and_health_look_like_vllm(fast: StandinProcess) -> None:
    with client(fast) as oai:
        assert [m.id for m in oai.models.list()] == [MODEL]
    card = httpx.get(fast.base_url + "/v1/models").json()["data"][0]
    assert (card["owned_by"], card["root"], card["parent"]) == ("vllm", MODEL, None)
    assert card["max_model_len"] == 2048
    assert card["permission"][0]["object"] == "model_permission"
    health = httpx.get(fast.base_url + "/health")
    assert (health.status_code, health.content) == (200, b"")


def test_chat_usage_matches_the_accounting(fast: StandinProcess) -> None:
    with client(fast) as oai:
        reply = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.choices[0].message.content == " tok1 tok2 tok3 tok4 tok5"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == count_prompt_tokens(CHAT)
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == count_prompt_tokens(CHAT) + 5
    raw = httpx.post(fast.base_url + "/v1/chat/completions", json=CHAT | {"max_tokens": 1}).json()
    assert raw["usage"]["prompt_tokens_details"] is None
    assert raw["choices"][0]["stop_reason"] is None


def test_without_max_tokens_the_model_stops_after_16(fast: StandinProcess) -> None:
    with client(fast) as oai:
        reply = oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_n_choices_and_stop_strings(fast: StandinProcess) -> None:
    body = CHAT | {"max_tokens": 10, "n": 3, "stop": [" tok3", "never"]}
    raw = httpx.post(fast.base_url + "/v1/chat/completions", json=body).json()
    assert [c["index"] for c in raw["choices"]] == [0, 1, 2]
    for choice in raw["choices"]:
        assert choice["message"]["content"] == " tok1 tok2"
        assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", " tok3")
    assert raw["usage"]["completion_tokens"] == 3 * 3  # the stop string's token counts


async def test_async_chat_stream_with_usage(fast: StandinProcess) -> None:
    async with async_client(fast) as oai:
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    first, *tokens, usage_chunk = chunks
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    assert [c.choices[0].delta.content for c in tokens] == [" tok1", " tok2", " tok3", " tok4"]
    assert [c.choices[0].finish_reason for c in tokens] == [None, None, None, "length"]
    assert all(c.usage is None for c in [first, *tokens])
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == count_prompt_tokens(CHAT)
    assert usage_chunk.usage.completion_tokens == 4
    assert len({c.id for c in chunks}) == 1 and first.id.startswith("chatcmpl-")


def test_raw_stream_framing(fast: StandinProcess) -> None:
    url = fast.base_url + "/v1/chat/completions"
    with_usage = httpx.post(
        url, json=CHAT | {"stream": True, "max_tokens": 2, "stream_options": {}}
    )
    assert with_usage.headers["content-type"].startswith("text/event-stream")
    events = sse_events(with_usage.text)
    assert events[-1] == "[DONE]"
    assert all('"usage":null' in e for e in events[:-2])  # every chunk before the usage chunk
    assert '"choices":[]' in events[-2] and '"completion_tokens":2' in events[-2]
    plain = sse_events(httpx.post(url, json=CHAT | {"stream": True, "max_tokens": 2}).text)
    assert len(plain) == 1 + 2 + 1 and not any('"usage"' in e for e in plain)


def test_legacy_completions(fast: StandinProcess) -> None:
    prompt = ["first prompt here", "second"]
    with client(fast) as oai:
        reply = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
        streamed = list(oai.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True))
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    assert [(c.index, c.text) for c in reply.choices] == [(0, " tok1 tok2"), (1, " tok1 tok2")]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == count_prompt_tokens({"prompt": prompt})
    assert reply.usage.completion_tokens == 2 * 2
    assert "".join(c.choices[0].text for c in streamed) == " tok1 tok2 tok3"
    assert streamed[-1].choices[0].finish_reason == "length"


def test_request_id_is_echoed_and_used(fast: StandinProcess) -> None:
    with client(fast) as oai:
        raw = oai.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=1,
            extra_headers={"X-Request-ID": "req-42"},
        )
    assert raw.headers["x-request-id"] == "req-42"
    assert raw.parse().id == "chatcmpl-req-42"
    assert stats(fast)["last_request"]["headers"]["x-request-id"] == "req-42"


def _error(param: str | None, kind: str, code: int = 400) -> Callable[[dict[str, Any]], bool]:
    def matches(error: dict[str, Any]) -> bool:
        return (error["type"], error["param"], error["code"]) == (kind, param, code)

    return matches


@pytest.mark.parametrize(
    ("body", "check"),
    [
        (CHAT | {"max_tokens": 5000}, _error("max_tokens", "BadRequestError")),
        (CHAT | {"max_completion_tokens": 0}, _error("max_tokens", "BadRequestError")),
        (CHAT | {"n": 0}, _error("n", "BadRequestError")),
        (CHAT | {"stream_options": {"include_usage": True}}, _error(None, "Bad Request")),
        (CHAT | {"messages": []}, _error(None, "Bad Request")),
        (CHAT | {"max_tokens": "many"}, _error(None, "Bad Request")),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x " * 3000}]},
            _error("input_tokens", "BadRequestError"),
        ),
        (b"{not json", _error(None, "Bad Request")),
        ([1, 2], _error(None, "Bad Request")),
    ],
)
def test_invalid_requests_get_vllm_400s(
    fast: StandinProcess, body: Any, check: Callable[[dict[str, Any]], bool]
) -> None:
    url = fast.base_url + "/v1/chat/completions"
    sent = httpx.post(url, content=body) if isinstance(body, bytes) else httpx.post(url, json=body)
    assert sent.status_code == 400
    error = sent.json()["error"]
    assert check(error) and isinstance(error["message"], str) and error["message"]


def test_unknown_model_is_vllm_404(fast: StandinProcess) -> None:
    with client(fast) as oai, pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert caught.value.response.json() == {
        "error": {
            "message": "The model `gpt-nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def test_embeddings_in_both_encodings(fast: StandinProcess, paced: StandinProcess) -> None:
    inputs = ["alpha beta", "gamma"]
    with client(fast) as oai:
        result = oai.embeddings.create(model=MODEL, input=inputs)  # base64 by default
    assert [d.embedding for d in result.data] == [embedding_for(i, 32) for i in inputs]
    assert result.usage.prompt_tokens == count_prompt_tokens({"input": inputs})
    body = {"model": MODEL, "input": "alpha beta", "encoding_format": "float"}
    floats = httpx.post(fast.base_url + "/v1/embeddings", json=body).json()
    assert floats["id"].startswith("embd-")
    assert floats["data"][0]["embedding"] == embedding_for("alpha beta", 32)
    packed = base64.b64decode(
        httpx.post(
            fast.base_url + "/v1/embeddings", json=body | {"encoding_format": "base64"}
        ).json()["data"][0]["embedding"]
    )
    assert list(struct.unpack("<32f", packed)) == embedding_for("alpha beta", 32)
    off = httpx.post(paced.base_url + "/v1/embeddings", json=body)  # started without --embeddings
    assert (off.status_code, off.json()) == (404, {"detail": "Not Found"})


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


# ---- faults -----------------------------------------------------------------------


def test_5xx_burst_then_recovery(fast: StandinProcess) -> None:
    set_fault(fast, mode="error_5xx", status=503, count=2)
    with client(fast) as oai:
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as caught:
                oai.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert caught.value.status_code == 503
            assert caught.value.response.json()["error"]["type"] == "ServiceUnavailableError"
        oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert httpx.get(fast.base_url + "/_standin/faults").json()["mode"] == "none"
    assert stats(fast)["faults_injected"] == 2


def test_5xx_with_probability_fails_some_requests(fast: StandinProcess) -> None:
    set_fault(fast, mode="error_5xx", probability=0.5)
    url = fast.base_url + "/v1/chat/completions"
    with httpx.Client() as http:
        codes = [http.post(url, json=CHAT | {"max_tokens": 1}).status_code for _ in range(40)]
    assert 0 < codes.count(500) < 40 and set(codes) == {200, 500}


def test_stall_after_streams_n_tokens_then_hangs(fast: StandinProcess) -> None:
    set_fault(fast, mode="stall_after", tokens=2)
    contents: list[str | None] = []
    with client(fast, timeout=0.6) as oai:
        with pytest.raises(openai.APITimeoutError):
            for chunk in oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                contents.append(chunk.choices[0].delta.content)
        with pytest.raises(openai.APITimeoutError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert contents == ["", " tok1", " tok2"]
    eventually(lambda: stats(fast)["aborted"] == 2 and stats(fast)["in_flight"] == 0)


def test_error_mid_stream_sends_an_error_frame(fast: StandinProcess) -> None:
    set_fault(fast, mode="error_mid_stream", tokens=3)
    contents: list[str | None] = []
    with client(fast) as oai:
        with pytest.raises(openai.APIError, match="Internal server error") as caught:
            for chunk in oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                contents.append(chunk.choices[0].delta.content)
        assert caught.value.body == {
            "message": "Internal server error",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert contents == ["", " tok1", " tok2", " tok3"]
    raw = httpx.post(fast.base_url + "/v1/completions", json={"prompt": "x", "stream": True})
    events = sse_events(raw.text)
    assert events[-1] == "[DONE]" and '"error"' in events[-2] and len(events) == 3 + 2


def test_slow_first_token_delays_only_the_first_token(fast: StandinProcess) -> None:
    set_fault(fast, mode="slow_first_token", ms=250)
    with client(fast) as oai:
        start = time.monotonic()
        stream = oai.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, stream=True
        )
        next(iter(stream))
        first = time.monotonic() - start
        rest = list(stream)
    assert first >= 0.245
    assert len(rest) == 2


def test_hang_never_answers(fast: StandinProcess) -> None:
    set_fault(fast, mode="hang")
    with client(fast, timeout=0.3) as oai:
        with pytest.raises(openai.APITimeoutError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.APITimeoutError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    eventually(lambda: stats(fast)["aborted"] == 2 and stats(fast)["in_flight"] == 0)


def test_close_drops_the_connection(fast: StandinProcess) -> None:
    set_fault(fast, mode="close", count=1)
    with client(fast) as oai:
        with pytest.raises(openai.APIConnectionError) as caught:
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
        # openai may bundle its own httpx fork, so match the transport error by name
        assert type(caught.value.__cause__).__name__ == "RemoteProtocolError"
        oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert (stats(fast)["dropped"], stats(fast)["completed"]) == (1, 1)


def test_fault_endpoint_rejects_bad_faults(fast: StandinProcess) -> None:
    url = fast.base_url + "/_standin/faults"
    for bad in ({"mode": "explode"}, {"mode": "error_5xx", "status": "x"}, {"tokens": -1}):
        response = httpx.post(url, json=bad)
        assert response.status_code == 400 and response.json()["error"]["code"] == 400
    assert httpx.get(url).json()["mode"] == "none"
    set_fault(fast, mode="none")  # clearing a fault explicitly injects nothing
    httpx.post(fast.base_url + "/v1/chat/completions", json=CHAT).raise_for_status()
    assert stats(fast)["faults_injected"] == 0


def test_stopped_engine_refuses_and_restarts_on_the_same_port() -> None:
    process = StandinProcess(model=MODEL, fault="error_5xx:502,count=1")
    base_url = process.start()
    try:
        url = base_url + "/v1/chat/completions"
        assert httpx.post(url, json=CHAT).status_code == 502  # the CLI fault is armed
        assert httpx.post(url, json=CHAT).status_code == 200
        process.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.post(url, json=CHAT)
        assert process.start() == base_url
        assert httpx.post(url, json=CHAT).status_code == 502  # a fresh process, re-armed
    finally:
        process.stop()


def test_run_standin_yields_a_base_url_that_refuses_after_exit() -> None:
    with run_standin(model="other", max_model_len=64) as base_url:
        assert httpx.get(base_url + "/v1/models").json()["data"][0]["max_model_len"] == 64
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/health")
