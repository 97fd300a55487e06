"""Request bodies as vLLM reads them: validation, prompt counting, the planned output.

Token accounting is deterministic (see the package docstring), so tests can compute the
expected usage with :func:`count_prompt_tokens`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from engines.standin.config import (
    BYTES_PROMPT_OVERHEAD,
    CHAT_MESSAGE_OVERHEAD,
    DEFAULT_MAX_TOKENS,
    PROMPT_BOS,
    StandinConfig,
)
from engines.standin.wire import ApiError, Gen, ParamError, Wire, token_text


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The prompt tokens the stand-in reports for a request body.

    Chat (`messages`): per message, CHAT_MESSAGE_OVERHEAD plus the words of its content
    (a string, or the `text` of its text parts). Completions (`prompt`) and embeddings
    (`input`): per prompt, PROMPT_BOS plus its words, or the length of a token-id list;
    a list of prompts is summed. Words are `str.split()` pieces. Raises ValueError.
    """
    key = next((k for k in ("messages", "prompt") if k in body), "input")
    return sum(prompt_lengths(body, key))


def prompt_lengths(body: Mapping[str, Any], key: str, per_byte: bool = False) -> list[int]:
    if per_byte:
        return _byte_lengths(body, key)
    if key != "messages":
        return [prompt_length(item) for item in batch(key, body.get(key))]
    messages = body.get(key)
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages: Input should be a non-empty list")
    total = 0
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError("messages: each message must be an object with a string role")
        total += CHAT_MESSAGE_OVERHEAD + _content_words(message.get("content"))
    return [total]


def _byte_lengths(body: Mapping[str, Any], key: str) -> list[int]:
    """``prompt_count: bytes``: every byte of the roles and texts is a token."""
    if key != "messages":
        items = batch(key, body.get(key))
        return [PROMPT_BOS + len(i.encode()) if isinstance(i, str) else len(i) for i in items]
    prompt_lengths(body, key)  # the same validation
    total = BYTES_PROMPT_OVERHEAD
    for message in body[key]:
        content = message.get("content")
        texts: list[object] = [content]
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict)]
        total += CHAT_MESSAGE_OVERHEAD + len(message["role"].encode())
        total += sum(len(t.encode()) for t in texts if isinstance(t, str))
    return [total]


def _content_words(content: object) -> int:
    if content is None or isinstance(content, str):
        return len(content.split()) if content else 0
    if not isinstance(content, list):
        raise ApiError("messages: content must be a string, a list of parts, or null")
    texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return sum(len(text.split()) for text in texts if isinstance(text, str))


def batch(key: str, value: Any) -> list[str | list[int]]:
    if isinstance(value, str) or _is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) or _is_ids(v) for v in value):
        return value
    raise ApiError(f"{key}: Input should be a string, a list of strings, or token ids")


def _is_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def prompt_length(item: str | list[int]) -> int:
    return PROMPT_BOS + len(item.split()) if isinstance(item, str) else len(item)


def field_value(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    wrong = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if value is not None and wrong:
        raise ApiError(f"{key}: Input has the wrong type ({type(value).__name__})")
    return value


def check_model(body: Mapping[str, Any], served: str) -> None:
    model = field_value(body, "model", str)
    if model not in (None, served):
        raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError", "model")


def check_context(prompt: int, max_tokens: int | None, max_model_len: int) -> None:
    context = f"This model's maximum context length is {max_model_len} tokens"
    if prompt >= max_model_len:
        message = f"{context}. However, your request has {prompt} input tokens. Please reduce"
        raise ParamError(f"{message} the length of the input messages.", "input_tokens", prompt)
    if max_tokens is not None and prompt + max_tokens > max_model_len:
        message = f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. {context}"
        message += f" and your request has {prompt} input tokens ({max_tokens} > {max_model_len}"
        raise ParamError(f"{message} - {prompt}).", "max_tokens", max_tokens)


def parse_generation(
    body: Mapping[str, Any], wire: Wire, config: StandinConfig, request_id: str | None
) -> Gen:
    n = 1 if (n := field_value(body, "n", int)) is None else n
    limit = field_value(body, "max_completion_tokens", int) if wire.chat else None
    limit = field_value(body, "max_tokens", int) if limit is None else limit
    stream, options = (
        bool(field_value(body, "stream", bool)),
        field_value(body, "stream_options", dict),
    )
    stops = field_value(body, "stop", (str, list)) or []
    stops = [stops] if isinstance(stops, str) else stops
    if not all(isinstance(s, str) for s in stops):
        raise ApiError("stop: Input should be a string or a list of strings")
    if options is not None and not stream:
        raise ApiError("Stream options can only be defined when `stream=True`.")
    key = "messages" if wire.chat else "prompt"
    lengths = prompt_lengths(body, key, per_byte=config.prompt_count == "bytes")
    check_model(body, config.model)
    for name, value in (("n", n), ("max_tokens", limit)):
        if value is not None and value < 1:
            raise ParamError(f"{name} must be at least 1, got {value}.", name, value)
    for length in lengths:
        check_context(length, limit, config.max_model_len)
    room = config.max_model_len - max(lengths)
    tokens = min(DEFAULT_MAX_TOKENS, room) if limit is None else limit
    finish = "length" if limit is not None or tokens < DEFAULT_MAX_TOKENS else "stop"
    tokens, cut, last, stop_reason = _apply_stop(tokens, stops)
    return Gen(
        wire=wire,
        request_id=wire.id_prefix + (request_id or os.urandom(16).hex()),
        prompt_tokens=sum(lengths),
        choices=n * len(lengths),
        tokens=tokens,
        finish_reason="stop" if stop_reason else finish,
        stop_reason=stop_reason,
        text_cut=cut,
        last_delta=last,
        stream=stream,
        include_usage=options is not None and bool(options.get("include_usage", True)),
    )


def _apply_stop(tokens: int, stops: list[str]) -> tuple[int, int | None, str, str | None]:
    """(tokens generated, text cut, last delta, stop string) once the first stop matches."""
    text = "".join(token_text(k) for k in range(1, tokens + 1)) if stops else ""
    hits = sorted((text.find(s) + len(s), text.find(s), s) for s in stops if s and s in text)
    if not hits:
        return tokens, None, token_text(tokens), None
    end, cut, stop = hits[0]
    count, offset = 0, 0
    while offset < end:  # find the token that completes the stop string
        count += 1
        offset += len(token_text(count))
    return count, cut, text[offset - len(token_text(count)) : cut], stop


def embedding_for(item: str | list[int], dim: int) -> list[float]:
    """The unit vector the stand-in returns for one embeddings input (float32-exact)."""
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = struct.unpack(f"<{dim}H", hashlib.shake_256(seed).digest(2 * dim))
    vector = [v / 32767.5 - 1.0 for v in raw]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in vector))))
