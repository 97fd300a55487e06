"""The vLLM stand-in engine's wire format, over HTTP with the official `openai` client:
models, usage, streams, legacy completions, request ids, vLLM's errors, embeddings.

Servers are real child processes (`fast` and `paced`, see `tests/support/standin.py`);
each test resets the server's stats and fault first.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from engines.standin.parsing import count_prompt_tokens, embedding_for
from engines.standin.process import StandinProcess
from tests.support.standin import (
    CHAT,
    MESSAGES,
    MODEL,
    async_client,
    client,
    sse_events,
    stats,
)

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
