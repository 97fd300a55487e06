"""The OpenAI API through the gateway, driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from engines.standin.parsing import count_prompt_tokens
from engines.standin.process import StandinProcess
from gateway.config import Settings
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    RunningGateway,
    free_port,
    gateway_config,
    serve_in_thread,
)
from tests.support.standin import set_fault, stats

MSGS = [{"role": "user", "content": "say something nice about the sea"}]


def test_chat_non_streaming(client: openai.OpenAI, standin_pair: dict[str, StandinProcess]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="small", messages=MSGS, max_tokens=5
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == " tok1 tok2 tok3 tok4 tok5"
    assert resp.usage is not None
    expected_prompt = count_prompt_tokens({"messages": MSGS})
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (expected_prompt, 5)
    assert raw.headers["x-tollgate-tier"] == "small"
    assert raw.headers["x-tollgate-route-reason"] == "by_name"
    assert len(raw.headers["x-request-id"]) == 32
    body = stats(standin_pair["small"])["last_request"]["body"]  # type: ignore[index]
    assert body["model"] == "standin-small"  # client name mapped to the engine's


def test_chat_streaming_with_and_without_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="large",
            messages=MSGS,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok1 tok2 tok3 tok4"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    plain = list(
        client.chat.completions.create(model="large", messages=MSGS, max_tokens=4, stream=True)
    )
    assert all(c.choices for c in plain), "usage chunk must not reach a client that did not ask"
    assert all(c.usage is None for c in plain)


def test_gateway_always_asks_engine_for_usage(
    client: openai.OpenAI, standin_pair: dict[str, StandinProcess]
) -> None:
    list(client.chat.completions.create(model="small", messages=MSGS, max_tokens=2, stream=True))
    body = stats(standin_pair["small"])["last_request"]["body"]  # type: ignore[index]
    assert body["stream_options"]["include_usage"] is True


async def test_async_client_streaming_and_not(aclient: openai.AsyncOpenAI) -> None:
    resp = await aclient.chat.completions.create(model="small", messages=MSGS, max_tokens=3)
    assert resp.choices[0].message.content == " tok1 tok2 tok3"
    stream = await aclient.chat.completions.create(
        model="small", messages=MSGS, max_tokens=3, stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == " tok1 tok2 tok3"


async def test_concurrent_async_streams_are_independent(aclient: openai.AsyncOpenAI) -> None:
    async def one(n: int) -> str:
        stream = await aclient.chat.completions.create(
            model="small", messages=MSGS, max_tokens=n, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    results = await asyncio.gather(*(one(n) for n in range(1, 11)))
    assert [r.count("tok") for r in results] == list(range(1, 11))


def test_completions_endpoint(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="small", prompt="once upon a time", max_tokens=3)
    assert resp.choices[0].text == " tok1 tok2 tok3"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    stream = client.completions.create(model="small", prompt="x", max_tokens=2, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == " tok1 tok2"


def test_embeddings_pass_through(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="embed", input=["a", "b c"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) > 0
    assert resp.data[0].embedding != resp.data[1].embedding


def test_sampling_params_and_extras_reach_engine_unchanged(
    client: openai.OpenAI, standin_pair: dict[str, StandinProcess]
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    client.chat.completions.create(
        model="small",
        messages=MSGS,
        max_tokens=3,
        n=2,
        stop=["zzz"],
        logprobs=True,
        top_logprobs=2,
        tools=tools,
        tool_choice="auto",  # type: ignore[arg-type]
        response_format={"type": "text"},
        extra_body={"top_k": 7, "repetition_penalty": 1.05},
    )
    body = stats(standin_pair["small"])["last_request"]["body"]  # type: ignore[index]
    assert body["n"] == 2 and body["stop"] == ["zzz"] and body["logprobs"] is True
    assert body["top_logprobs"] == 2 and body["tools"] == tools and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "text"}
    assert body["top_k"] == 7 and body["repetition_penalty"] == 1.05


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"small", "large", "auto", "embed"} <= ids
    assert client.models.retrieve("large").id == "large"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-99")


def test_request_id_is_honoured_and_forwarded(
    gateway: RunningGateway, standin_pair: dict[str, StandinProcess]
) -> None:
    r = httpx.post(
        gateway.v1 + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "trace-abc-123"},
        json={"model": "small", "messages": MSGS, "max_tokens": 1},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-abc-123"
    headers = stats(standin_pair["small"])["last_request"]["headers"]  # type: ignore[index]
    assert headers["x-request-id"] == "trace-abc-123"
    assert "authorization" not in headers  # the client's key never reaches the engine


# ---------------------------------------------------------------- errors


def test_missing_and_wrong_key_are_401(gateway: RunningGateway) -> None:
    bad = openai.OpenAI(base_url=gateway.v1, api_key="tg-not-a-real-key-000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="small", messages=MSGS)
    assert exc.value.status_code == 401
    assert "tg-not-a-real-key-000" not in str(exc.value)
    r = httpx.post(gateway.v1 + "/chat/completions", json={"model": "small", "messages": MSGS})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-5-turbo", messages=MSGS)
    err = exc.value.body
    assert isinstance(err, dict) and err["code"] == "model_not_found" and err["param"] == "model"


def test_invalid_body_is_400_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="small", messages=MSGS, temperature=7)
    assert exc.value.status_code == 400 and "temperature" in str(exc.value)


def test_client_supplied_upstream_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="api_base"):
        client.chat.completions.create(
            model="small", messages=MSGS, extra_body={"api_base": "http://169.254.169.254"}
        )


def test_body_too_large_is_413(gateway: RunningGateway) -> None:
    big = "x" * (gateway.settings.server.max_body_bytes + 10)
    r = httpx.post(
        gateway.v1 + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "small", "messages": [{"role": "user", "content": big}]},
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_engine_5xx_is_502_without_leaking_url(
    client: openai.OpenAI, standin_pair: dict[str, StandinProcess]
) -> None:
    set_fault(standin_pair["small"], mode="error_5xx", status=500)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="small", messages=MSGS, max_tokens=2)
    assert exc.value.status_code == 502
    assert "127.0.0.1" not in str(exc.value) and str(standin_pair["small"].port) not in str(
        exc.value
    )


@pytest.fixture(scope="module")
def strict_gateway(
    standin_pair: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """Short timeouts, no fallback, and a "down" tier whose engine port is closed."""
    tmp = tmp_path_factory.mktemp("strict")
    specs = [
        EngineSpec("large-0", standin_pair["large"].base_url, "large", "standin-large"),
        EngineSpec("down-0", f"http://127.0.0.1:{free_port()}", "down", "nothing"),
    ]
    cfg = gateway_config(
        tmp,
        specs,
        routing={"fallback": False},
        timeouts={"connect_s": 1, "ttft_s": 0.5, "idle_s": 0.5, "total_s": 1.0},
    )
    with serve_in_thread(Settings(**cfg)) as gw:
        yield gw


def test_engine_down_is_503(strict_gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=strict_gateway.v1, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="down", messages=MSGS, max_tokens=2)
    assert exc.value.status_code == 503
    assert "127.0.0.1" not in str(exc.value)


@pytest.mark.parametrize("stream", [False, True])
def test_engine_timeout_is_504(
    strict_gateway: RunningGateway, standin_pair: dict[str, StandinProcess], stream: bool
) -> None:
    set_fault(standin_pair["large"], mode="hang")
    client = openai.OpenAI(base_url=strict_gateway.v1, api_key=CLIENT_KEY, max_retries=0)
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            out = client.chat.completions.create(
                model="large", messages=MSGS, max_tokens=2, stream=stream
            )
            list(out) if stream else None  # type: ignore[call-overload]
        assert exc.value.status_code == 504
    finally:
        set_fault(standin_pair["large"], mode="none")


def test_failure_mid_stream_is_an_sse_error_then_done(
    gateway: RunningGateway, standin_pair: dict[str, StandinProcess]
) -> None:
    set_fault(standin_pair["small"], mode="error_mid_stream", tokens=3)
    with httpx.stream(
        "POST",
        gateway.v1 + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "small", "messages": MSGS, "max_tokens": 10, "stream": True},
    ) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2]
    assert sum("tok" in e for e in events[:-2]) == 3
    # ...and the openai client raises on the error event.
    set_fault(standin_pair["small"], mode="error_mid_stream", tokens=3)
    client = openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(model="small", messages=MSGS, max_tokens=10, stream=True)
        )


def test_error_before_first_token_of_a_stream_is_a_plain_http_error(
    client: openai.OpenAI, standin_pair: dict[str, StandinProcess]
) -> None:
    set_fault(standin_pair["small"], mode="error_5xx", status=503)
    with pytest.raises(openai.InternalServerError) as exc:
        list(client.chat.completions.create(model="small", messages=MSGS, stream=True))
    assert exc.value.status_code == 503


def test_client_disconnect_aborts_the_upstream(
    gateway: RunningGateway, standin_pair: dict[str, StandinProcess]
) -> None:
    set_fault(standin_pair["large"], mode="stall_after", tokens=2)
    with httpx.stream(
        "POST",
        gateway.v1 + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "large", "messages": MSGS, "max_tokens": 50, "stream": True},
        timeout=10,
    ) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert any("tok1" in line for line in got)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if stats(standin_pair["large"])["aborted"] == 1:
            break
        time.sleep(0.05)
    assert stats(standin_pair["large"])["aborted"] == 1
    assert stats(standin_pair["large"])["in_flight"] == 0
    engine = gateway.services.pool.engines["large-0"]
    assert engine.in_flight == 0


def test_keepalive_comments_on_long_silence(
    gateway: RunningGateway, standin_pair: dict[str, StandinProcess]
) -> None:
    set_fault(standin_pair["small"], mode="slow_first_token", ms=700)
    gateway.services.settings.server.keepalive_seconds = 0.2
    try:
        with httpx.stream(
            "POST",
            gateway.v1 + "/chat/completions",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"model": "small", "messages": MSGS, "max_tokens": 2, "stream": True},
            timeout=10,
        ) as r:
            lines = [line for line in r.iter_lines() if line]
    finally:
        gateway.services.settings.server.keepalive_seconds = 15
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert lines[0] == ": keep-alive" and first_data > 0
    assert lines[-1] == "data: [DONE]"


# ---------------------------------------------------------------- operations


def test_health_ready_and_metrics(client: openai.OpenAI, gateway: RunningGateway) -> None:
    client.chat.completions.create(model="small", messages=MSGS, max_tokens=2)
    assert httpx.get(gateway.base_url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.base_url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = httpx.get(gateway.base_url + "/metrics").text
    assert 'tollgate_requests_total{model="small",status="200",tier="small"}' in text
    assert "tollgate_time_to_first_token_seconds_bucket" in text
    assert 'tollgate_tokens_total{kind="completion",model="small",tier="small"}' in text
    assert "tollgate_in_flight_requests" in text


def test_unknown_path_is_openai_shaped_404(gateway: RunningGateway) -> None:
    r = httpx.get(gateway.base_url + "/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_client_disconnect_aborts_a_non_streaming_request(
    gateway: RunningGateway, standin_pair: dict[str, StandinProcess]
) -> None:
    set_fault(standin_pair["large"], mode="slow_first_token", ms=3000)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.v1 + "/chat/completions",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"model": "large", "messages": MSGS, "max_tokens": 5},
            timeout=httpx.Timeout(5, read=0.3),
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and stats(standin_pair["large"])["aborted"] != 1:
        time.sleep(0.05)
    assert stats(standin_pair["large"])["aborted"] == 1
    assert gateway.services.pipeline.active == 0
    assert gateway.services.pool.engines["large-0"].in_flight == 0
