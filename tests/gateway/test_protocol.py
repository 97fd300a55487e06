from __future__ import annotations

import orjson
import pytest

from gateway.errors import ForbiddenFieldError, InvalidRequestError
from gateway.protocol import Endpoint, parse_request


def parse(body: object, endpoint: Endpoint = Endpoint.CHAT) -> object:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_request(endpoint, raw, max_messages=4, max_n=2)


CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


def test_unknown_fields_are_kept_for_the_engine() -> None:
    req = parse({**CHAT, "top_k": 5, "repetition_penalty": 1.1})
    assert req.raw["top_k"] == 5  # type: ignore[attr-defined]
    assert req.raw["repetition_penalty"] == 1.1  # type: ignore[attr-defined]


def test_invalid_json_and_utf8() -> None:
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        parse(b"{nope")
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        parse(b'{"model": "\xff\xfe"}')
    with pytest.raises(InvalidRequestError, match="JSON object"):
        parse(b"[1, 2]")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "small", "messages": []}, "messages"),
        ({"model": "small"}, "messages"),
        ({**CHAT, "temperature": 9}, "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({"model": "small", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ],
)
def test_validation_names_the_param(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse(body)
    assert exc.value.param == param
    assert param in exc.value.message


@pytest.mark.parametrize(
    "body",
    [
        {**CHAT, "api_base": "http://evil"},
        {**CHAT, "metadata": {"x": [{"base_url": "http://169.254.169.254"}]}},
        {**CHAT, "extra_body": {"api_key": "sk-steal"}},
    ],
)
def test_client_supplied_upstream_is_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ForbiddenFieldError) as exc:
        parse(body)
    assert exc.value.status_code == 400
    assert "not allowed" in exc.value.message


def test_tool_schema_property_names_are_data() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"base_url": {"type": "string"}}},
        },
    }
    req = parse({**CHAT, "tools": [tool]})
    assert req.raw["tools"][0]["function"]["name"] == "f"  # type: ignore[attr-defined]


def test_message_and_n_caps() -> None:
    with pytest.raises(InvalidRequestError, match="Too many messages"):
        parse({"model": "small", "messages": [{"role": "user", "content": "x"}] * 5})
    with pytest.raises(InvalidRequestError, match="n=3"):
        parse({**CHAT, "n": 3})


def test_completions_and_embeddings_shapes() -> None:
    req = parse({"model": "small", "prompt": "hello", "max_tokens": 5}, Endpoint.COMPLETIONS)
    assert req.requested_max_tokens == 5  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequestError):
        parse({"model": "small", "prompt": []}, Endpoint.COMPLETIONS)
    emb = parse({"model": "small", "input": ["a", "b"]}, Endpoint.EMBEDDINGS)
    assert emb.stream is False  # type: ignore[attr-defined]


def test_stream_flags() -> None:
    req = parse({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert req.stream and req.client_wants_usage  # type: ignore[attr-defined]
    req = parse({**CHAT, "stream": True})
    assert req.stream and not req.client_wants_usage  # type: ignore[attr-defined]
    req = parse({**CHAT, "max_completion_tokens": 7})
    assert req.requested_max_tokens == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (Endpoint.CHAT, {"n": "2"}, "n"),
        (Endpoint.CHAT, {"n": True}, "n"),
        (Endpoint.CHAT, {"max_tokens": "16"}, "max_tokens"),
        (Endpoint.CHAT, {"max_completion_tokens": 1.5}, "max_completion_tokens"),
        (Endpoint.CHAT, {"seed": "7"}, "seed"),
        (Endpoint.COMPLETIONS, {"best_of": "2"}, "best_of"),
        (Endpoint.EMBEDDINGS, {"n": "2"}, "n"),
    ],
)
def test_integers_given_as_strings_are_a_400_naming_the_field(
    endpoint: Endpoint, body: dict[str, object], param: str
) -> None:
    # They used to pass validation by coercion and then fail a comparison: a 500.
    base: dict[str, object] = {
        Endpoint.CHAT: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        Endpoint.COMPLETIONS: {"model": "m", "prompt": "hi"},
        Endpoint.EMBEDDINGS: {"model": "m", "input": "hi"},
    }[endpoint]
    with pytest.raises(InvalidRequestError) as info:
        parse_request(endpoint, orjson.dumps({**base, **body}), max_messages=10, max_n=4)
    assert info.value.param == param


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"api\\u005fbase":"http://x"}',
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"extra":{"base_url":"h"}}',
    ],
)
def test_forbidden_keys_are_found_escaped_or_nested(body: bytes) -> None:
    with pytest.raises(ForbiddenFieldError):
        parse_request(Endpoint.CHAT, body, max_messages=10, max_n=4)


def test_nesting_past_the_limit_is_refused_without_any_forbidden_key() -> None:
    deep = b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":' + b"[" * 40
    body = deep + b"]" * 40 + b"}"
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(Endpoint.CHAT, body, max_messages=10, max_n=4)
    assert "nested too deeply" in exc.value.message
