"""A cheap stand-in for a vLLM engine that speaks vLLM's OpenAI-server wire format.

The gateway's fast tests, fault-injection tests and benchmarks run against it instead of
the real (slow, CPU) vLLM. It is a plain Starlette app with orjson, byte templates for
responses and stream chunks, and no task per token.

Endpoints: `GET /health`, `/metrics`, `/v1/models`; `POST /v1/chat/completions`,
`/v1/completions`, and `/v1/embeddings` (only with `--embeddings`). The test hooks
under `/_standin/` and the fault modes are described in `engines.standin_faults`.

Token accounting is deterministic, so tests can compute the expected usage:
prompt tokens are `count_prompt_tokens(body)` (with `--prompt-count bytes`, every byte its
own token: more than any real tokenizer counts, for budget tests); each choice generates
`max_completion_tokens` or `max_tokens` tokens when given (finish_reason "length"), else
16 (finish_reason "stop", as if the model emitted EOS), unless a `stop` string matches
first (finish_reason "stop", stop_reason the string). The text is " tok1 tok2 ... tokN".

Timing imitates continuous batching: up to `max_num_seqs` requests run and the rest
wait in FIFO order (both visible in `/metrics`). A running request yields its first
token `ttft_ms` after admission, then one every `tpot_ms`; a non-streaming response
arrives when all are done. A client that disconnects aborts its request: generation
stops and `/_standin/stats` counts it.

vLLM habits kept on purpose: ids are `chatcmpl-`/`cmpl-`/`embd-` + the X-Request-ID
header when sent (which is echoed); `stream_options.include_usage` puts `"usage":null`
on every chunk and adds a `"choices":[]` usage chunk; the last token's chunk carries the
finish_reason; errors are `{"error": {message, type, param, code}}`, typed "Bad Request"
(malformed body), "BadRequestError" (semantic) or "NotFoundError" (unknown model); an
error after streaming began is an error frame followed by `data: [DONE]`.

Run: `python -m engines.standin --port 8001 --model small --ttft-ms 40 --tpot-ms 8`.
Tests: `with run_standin(model="small") as base_url: ...`, or `StandinProcess` to stop
(the port then refuses connections) and restart.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engines.standin_faults import (
    NO_FAULT,
    RAW_SEND,
    EventStream,
    Fault,
    Outcome,
    StandinHooks,
    drop_connection,
    unless_disconnected,
    wait_disconnect,
)
from engines.standin_faults import StandinProcess as StandinProcess  # re-exported
from engines.standin_faults import run_standin as run_standin  # re-exported

DEFAULT_MODEL = "standin-model"
DEFAULT_MAX_TOKENS = 16
CHAT_MESSAGE_OVERHEAD = 4  # role and template markers around each chat message
PROMPT_BOS = 1  # the BOS token vLLM prepends to a text prompt
#: With prompt_count "bytes": a default system prompt and generation header, one token a
#: byte (SmolLM2's template adds 87 bytes and specials when no system message is given).
BYTES_PROMPT_OVERHEAD = 87
_DONE = b"data: [DONE]\n\n"
_TIMER_SLACK = 0.001  # uvloop timers have millisecond resolution


@dataclass(frozen=True, slots=True)
class StandinConfig:
    """How a stand-in engine behaves; fixed for its lifetime, except the fault."""

    model: str = DEFAULT_MODEL
    max_model_len: int = 2048
    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    max_num_seqs: int = 256
    embeddings: bool = False
    embedding_dim: int = 32
    fault: Fault = NO_FAULT
    seed: int | None = None
    #: Like vLLM's ``--api-key``: /v1 requests need ``Authorization: Bearer <key>``.
    api_key: str | None = None
    #: "words" (see count_prompt_tokens) or "bytes": one token per UTF-8 byte of the
    #: roles and texts, plus BYTES_PROMPT_OVERHEAD, the most a byte-level BPE can count.
    prompt_count: str = "words"

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.prompt_count not in ("words", "bytes"):
            raise ValueError("prompt_count must be 'words' or 'bytes'")
        if self.ttft_ms < 0 or self.tpot_ms < 0:
            raise ValueError("ttft_ms and tpot_ms must not be negative")


class _ApiError(ValueError):
    """A request the stand-in rejects, rendered in vLLM's ErrorResponse shape."""

    def __init__(
        self, message: str, status: int = 400, kind: str = "Bad Request", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def response(self, headers: Mapping[str, str]) -> Response:
        body = _error_body(str(self), self.kind, self.status, self.param)
        return _json(body, headers, self.status)


class _ParamError(_ApiError):
    """A semantic error about one parameter, as vLLM's VLLMValidationError reports it."""

    def __init__(self, message: str, param: str, value: int) -> None:
        message = f"{message} (parameter={param}, value={value})"
        super().__init__(message, kind="BadRequestError", param=param)


def _error_body(message: str, kind: str, status: int, param: str | None = None) -> bytes:
    return orjson.dumps({"error": dict(message=message, type=kind, param=param, code=status)})


_ENGINE_ERROR = _error_body("Internal server error", "InternalServerError", 500)


def _json(body: bytes, headers: Mapping[str, str], status: int = 200) -> Response:
    return Response(body, status, headers, media_type="application/json")


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The prompt tokens the stand-in reports for a request body.

    Chat (`messages`): per message, CHAT_MESSAGE_OVERHEAD plus the words of its content
    (a string, or the `text` of its text parts). Completions (`prompt`) and embeddings
    (`input`): per prompt, PROMPT_BOS plus its words, or the length of a token-id list;
    a list of prompts is summed. Words are `str.split()` pieces. Raises ValueError.
    """
    key = next((k for k in ("messages", "prompt") if k in body), "input")
    return sum(_prompt_lengths(body, key))


def _prompt_lengths(body: Mapping[str, Any], key: str, per_byte: bool = False) -> list[int]:
    if per_byte:
        return _byte_lengths(body, key)
    if key != "messages":
        return [_prompt_length(item) for item in _batch(key, body.get(key))]
    messages = body.get(key)
    if not isinstance(messages, list) or not messages:
        raise _ApiError("messages: Input should be a non-empty list")
    total = 0
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _ApiError("messages: each message must be an object with a string role")
        total += CHAT_MESSAGE_OVERHEAD + _content_words(message.get("content"))
    return [total]


def _byte_lengths(body: Mapping[str, Any], key: str) -> list[int]:
    """``prompt_count: bytes``: every byte of the roles and texts is a token."""
    if key != "messages":
        items = _batch(key, body.get(key))
        return [PROMPT_BOS + len(i.encode()) if isinstance(i, str) else len(i) for i in items]
    _prompt_lengths(body, key)  # the same validation
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
        raise _ApiError("messages: content must be a string, a list of parts, or null")
    texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return sum(len(text.split()) for text in texts if isinstance(text, str))


def _batch(key: str, value: Any) -> list[str | list[int]]:
    if isinstance(value, str) or _is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) or _is_ids(v) for v in value):
        return value
    raise _ApiError(f"{key}: Input should be a string, a list of strings, or token ids")


def _is_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def _prompt_length(item: str | list[int]) -> int:
    return PROMPT_BOS + len(item.split()) if isinstance(item, str) else len(item)


def _field(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    wrong = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if value is not None and wrong:
        raise _ApiError(f"{key}: Input has the wrong type ({type(value).__name__})")
    return value


def _check_model(body: Mapping[str, Any], served: str) -> None:
    model = _field(body, "model", str)
    if model not in (None, served):
        raise _ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError", "model")


def _check_context(prompt: int, max_tokens: int | None, max_model_len: int) -> None:
    context = f"This model's maximum context length is {max_model_len} tokens"
    if prompt >= max_model_len:
        message = f"{context}. However, your request has {prompt} input tokens. Please reduce"
        raise _ParamError(f"{message} the length of the input messages.", "input_tokens", prompt)
    if max_tokens is not None and prompt + max_tokens > max_model_len:
        message = f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. {context}"
        message += f" and your request has {prompt} input tokens ({max_tokens} > {max_model_len}"
        raise _ParamError(f"{message} - {prompt}).", "max_tokens", max_tokens)


def _token(k: int) -> str:
    return f" tok{k}"


@dataclass(slots=True)
class _Gen:
    """One parsed generation request, its planned output, and how far it got."""

    wire: _Wire
    request_id: str
    prompt_tokens: int
    choices: int
    tokens: int  # tokens each choice generates
    finish_reason: str
    stop_reason: str | None
    text_cut: int | None  # where a stop string truncates the text
    last_delta: str  # the text the finishing chunk adds
    stream: bool
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))
    emitted: int = 0
    finished: bool = False

    def text(self) -> str:
        return "".join(_token(k) for k in range(1, self.tokens + 1))[: self.text_cut]

    def usage(self) -> dict[str, int]:
        done = self.tokens * self.choices
        return dict(
            prompt_tokens=self.prompt_tokens,
            total_tokens=self.prompt_tokens + done,
            completion_tokens=done,
        )


def _parse_generation(
    body: Mapping[str, Any], wire: _Wire, config: StandinConfig, request_id: str | None
) -> _Gen:
    n = 1 if (n := _field(body, "n", int)) is None else n
    limit = _field(body, "max_completion_tokens", int) if wire.chat else None
    limit = _field(body, "max_tokens", int) if limit is None else limit
    stream, options = bool(_field(body, "stream", bool)), _field(body, "stream_options", dict)
    stops = _field(body, "stop", (str, list)) or []
    stops = [stops] if isinstance(stops, str) else stops
    if not all(isinstance(s, str) for s in stops):
        raise _ApiError("stop: Input should be a string or a list of strings")
    if options is not None and not stream:
        raise _ApiError("Stream options can only be defined when `stream=True`.")
    key = "messages" if wire.chat else "prompt"
    lengths = _prompt_lengths(body, key, per_byte=config.prompt_count == "bytes")
    _check_model(body, config.model)
    for name, value in (("n", n), ("max_tokens", limit)):
        if value is not None and value < 1:
            raise _ParamError(f"{name} must be at least 1, got {value}.", name, value)
    for length in lengths:
        _check_context(length, limit, config.max_model_len)
    room = config.max_model_len - max(lengths)
    tokens = min(DEFAULT_MAX_TOKENS, room) if limit is None else limit
    finish = "length" if limit is not None or tokens < DEFAULT_MAX_TOKENS else "stop"
    tokens, cut, last, stop_reason = _apply_stop(tokens, stops)
    return _Gen(
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
    text = "".join(_token(k) for k in range(1, tokens + 1)) if stops else ""
    hits = sorted((text.find(s) + len(s), text.find(s), s) for s in stops if s and s in text)
    if not hits:
        return tokens, None, _token(tokens), None
    end, cut, stop = hits[0]
    count, offset = 0, 0
    while offset < end:  # find the token that completes the stop string
        count += 1
        offset += len(_token(count))
    return count, cut, text[offset - len(_token(count)) : cut], stop


@dataclass(frozen=True, slots=True)
class _Wire:
    """One endpoint's byte templates; each %-formatting fills the documented slots."""

    chat: bool
    id_prefix: str
    chunk_object: bytes
    role: bytes  # the first chunk's choice: (index)
    token: bytes  # a token chunk's choice: (index, k)
    final: bytes  # the finishing chunk's choice: (index, text, finish_reason, stop_reason)
    choice: bytes  # a non-streaming choice: (index, text, finish_reason, stop_reason)
    body: bytes  # a non-streaming response: (id, created, model, choices, usage)

    def frames(self, gen: _Gen, model: bytes) -> tuple[bytes, bytes, bytes]:
        """Stream bytes for `gen`: its role chunks, a token chunk (index, k), its finish chunks."""
        meta = orjson.dumps(gen.request_id), self.chunk_object, gen.created, model
        head = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":[' % meta
        tail = b'],"usage":null}\n\n' if gen.include_usage else b"]}\n\n"
        finish = (
            orjson.dumps(gen.last_delta),
            gen.finish_reason.encode(),
            orjson.dumps(gen.stop_reason),
        )
        indexes = range(gen.choices)
        role = b"".join(head + self.role % i + tail for i in indexes) if self.role else b""
        final = b"".join(head + self.final % (i, *finish) + tail for i in indexes)
        return role, head.replace(b"%", b"%%") + self.token + tail, final

    def usage_chunk(self, gen: _Gen, model: str) -> bytes:
        chunk = dict(
            id=gen.request_id,
            object=self.chunk_object.decode(),
            created=gen.created,
            model=model,
            choices=[],
            usage=gen.usage(),
        )
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def full(self, gen: _Gen, model: bytes) -> bytes:
        fill = orjson.dumps(gen.text()), gen.finish_reason.encode(), orjson.dumps(gen.stop_reason)
        choices = b",".join(self.choice % (i, *fill) for i in range(gen.choices))
        usage = orjson.dumps(gen.usage() | {"prompt_tokens_details": None})
        return self.body % (orjson.dumps(gen.request_id), gen.created, model, choices, usage)


_CHAT = _Wire(
    chat=True,
    id_prefix="chatcmpl-",
    chunk_object=b"chat.completion.chunk",
    role=b'{"index":%d,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}',
    token=b'{"index":%d,"delta":{"content":" tok%d"},"logprobs":null,"finish_reason":null}',
    final=b'{"index":%d,"delta":{"content":%s},"logprobs":null,'
    b'"finish_reason":"%s","stop_reason":%s}',
    choice=b'{"index":%d,"message":{"role":"assistant","reasoning_content":null,"content":%s,'
    b'"tool_calls":[]},"logprobs":null,"finish_reason":"%s","stop_reason":%s}',
    body=b'{"id":%s,"object":"chat.completion","created":%d,"model":%s,"choices":[%s],'
    b'"usage":%s,"prompt_logprobs":null}',
)
_COMPLETION = _Wire(
    chat=False,
    id_prefix="cmpl-",
    chunk_object=b"text_completion",
    role=b"",
    token=b'{"index":%d,"text":" tok%d","logprobs":null,"finish_reason":null,"stop_reason":null}',
    final=b'{"index":%d,"text":%s,"logprobs":null,"finish_reason":"%s","stop_reason":%s}',
    choice=b'{"index":%d,"text":%s,"logprobs":null,"finish_reason":"%s","stop_reason":%s,'
    b'"prompt_logprobs":null}',
    body=b'{"id":%s,"object":"text_completion","created":%d,"model":%s,"choices":[%s],"usage":%s}',
)


def embedding_for(item: str | list[int], dim: int) -> list[float]:
    """The unit vector the stand-in returns for one embeddings input (float32-exact)."""
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = struct.unpack(f"<{dim}H", hashlib.shake_256(seed).digest(2 * dim))
    vector = [v / 32767.5 - 1.0 for v in raw]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in vector))))


class Scheduler:
    """vLLM's running/waiting split: up to `max_num_seqs` run, the rest wait their turn."""

    def __init__(self, max_num_seqs: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.running = self.waiting = 0
        self._slots = asyncio.Semaphore(max_num_seqs)  # FIFO, and safe to cancel a waiter

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()


class StandinEngine:
    """Serves the stand-in's endpoints; its public async methods are the routes."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config
        self.scheduler = Scheduler(config.max_num_seqs)
        self.hooks = StandinHooks(config.fault, config.seed, self._load)
        self.prompt_tokens = self.generation_tokens = 0
        self.successes = {"stop": 0, "length": 0}
        self._model = orjson.dumps(config.model)
        permission = (
            b'{"id":"modelperm-%s","object":"model_permission","created":%d,'
            b'"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,'
            b'"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,'
            b'"organization":"*","group":null,"is_blocking":false}'
        ) % (os.urandom(16).hex().encode(), int(time.time()))
        self._models = (
            b'{"object":"list","data":[{"id":%s,"object":"model","created":%d,"owned_by":"vllm",'
            b'"root":%s,"parent":null,"max_model_len":%d,"permission":[%s]}]}'
        ) % (self._model, int(time.time()), self._model, config.max_model_len, permission)

    def _load(self) -> dict[str, int]:
        return {"running": self.scheduler.running, "waiting": self.scheduler.waiting}

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        return _json(self._models, {})

    async def metrics(self, request: Request) -> Response:
        return Response(self.metrics_text(), media_type="text/plain; version=0.0.4")

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, _CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, _COMPLETION)

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, None)

    async def _serve(self, request: Request, wire: _Wire | None) -> Response:
        """Serve chat or legacy completions (`wire`), or embeddings (`wire` is None)."""
        rid = request.headers.get("x-request-id")
        headers = {"x-request-id": rid} if rid else {}
        stats = self.hooks.stats
        stats.opened()
        outcome: Outcome | None = "completed"  # None: the stream settles it when it ends
        try:
            body = await self._read(request)
            gen = _parse_generation(body, wire, self.config, rid) if wire else None
            embeddings = self._embed(body, rid) if gen is None else b""
            fault = self.hooks.faults.draw()
            stats.faults_injected += fault.mode != "none"
            if fault.mode in ("error_5xx", "hang", "close"):
                outcome, response = await self._fail(request, fault, headers)
                return response
            if gen is None:
                return _json(embeddings, headers)
            if fault.mode == "trickle":
                outcome = None
                ended = lambda: stats.closed("completed" if gen.finished else "aborted")  # noqa: E731
                return self._trickle(gen, fault, headers, ended)
            if gen.stream:
                outcome = None
                ended = lambda: stats.closed("completed" if gen.finished else "aborted")  # noqa: E731
                return EventStream(self._generate(gen, fault), headers, ended)
            done = await unless_disconnected(request.receive, self._complete(gen, fault, headers))
            outcome = "aborted" if done is None else outcome
            return done or Response(status_code=499)
        except _ApiError as exc:
            return exc.response(headers)
        finally:
            if outcome is not None:
                stats.closed(outcome)

    async def _read(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        headers = dict(request.headers)
        self.hooks.stats.last_request = dict(path=request.url.path, headers=headers, body=body)
        if not isinstance(body, dict):
            raise _ApiError("JSON decode error: the body must be a JSON object")
        return body

    async def _fail(
        self, request: Request, fault: Fault, headers: Mapping[str, str]
    ) -> tuple[Outcome, Response]:
        """The faults that strike before generation: an error status, a hang, a drop."""
        if fault.mode == "error_5xx":
            phrase = HTTPStatus(fault.status).phrase
            kind = phrase.replace(" ", "").removesuffix("Error") + "Error"
            return "completed", _json(
                _error_body(phrase, kind, fault.status), headers, fault.status
            )
        if fault.mode == "close" and not drop_connection(request.scope):
            raise ConnectionAbortedError("the close fault needs uvicorn")
        await wait_disconnect(request.receive)
        return ("dropped" if fault.mode == "close" else "aborted"), Response(status_code=499)

    async def _generate(self, gen: _Gen, fault: Fault) -> AsyncGenerator[bytes, None]:
        """Run `gen` through the scheduler; yield its SSE bytes (nothing unless streaming).

        Token k is due `ttft + (k - 1) * tpot` after admission. Overdue tokens go out in
        one write, and a non-streaming request sleeps once, until its last token.
        """
        role, token, final = gen.wire.frames(gen, self._model) if gen.stream else (b"",) * 3
        cut = fault.tokens_before_failing(gen.tokens)
        target = gen.tokens if cut is None else cut
        tpot, loop = self.config.tpot_ms / 1000, asyncio.get_running_loop()
        await self.scheduler.acquire()
        try:
            self.prompt_tokens += gen.prompt_tokens
            first = loop.time() + (self.config.ttft_ms + fault.extra_ttft_ms) / 1000
            while gen.emitted < target:
                step = gen.emitted + 1 if gen.stream else target
                if (delay := first + (step - 1) * tpot - loop.time()) > _TIMER_SLACK:
                    await asyncio.sleep(delay)
                late = loop.time() - first + _TIMER_SLACK
                due = target if tpot <= 0 else max(step, min(target, int(late / tpot) + 1))
                if gen.stream:
                    finishing = cut is None and due == gen.tokens
                    k_range = range(gen.emitted + 1, due if finishing else due + 1)
                    out = [role] if not gen.emitted else []
                    out += [token % (i, k) for k in k_range for i in range(gen.choices)]
                    yield b"".join(out) + (final if finishing else b"")
                gen.emitted = due
            if fault.mode == "stall_after":
                await asyncio.Future()  # until the client leaves and we are cancelled
            if cut is None:
                self.successes[gen.finish_reason] += 1
                usage = gen.include_usage and gen.wire.usage_chunk(gen, self.config.model)
                end = (usage or b"") + _DONE
            else:
                end = b"data: " + _ENGINE_ERROR + b"\n\n" + _DONE
            if gen.stream:
                yield end
            gen.finished = True
        finally:
            self.scheduler.release()
            self.generation_tokens += gen.emitted * gen.choices

    def _trickle(
        self, gen: _Gen, fault: Fault, headers: Mapping[str, str], ended: Callable[[], None]
    ) -> Response:
        """The whole answer, one byte every `fault.ms` (an engine that crawls)."""

        async def body() -> AsyncGenerator[bytes, None]:
            finished = gen.finished
            gen.finished = False
            chunks = [c async for c in self._generate(gen, NO_FAULT)]
            if not gen.stream:
                chunks = [gen.wire.full(gen, self._model)]
            done, gen.finished = gen.finished, finished
            for byte in b"".join(chunks):
                await asyncio.sleep(fault.ms / 1000)
                yield bytes((byte,))
            gen.finished = done

        response = EventStream(body(), headers, ended)
        if not gen.stream:
            response.media_type = "application/json"
            response.init_headers(headers)
        return response

    async def _complete(self, gen: _Gen, fault: Fault, headers: Mapping[str, str]) -> Response:
        async for _ in self._generate(gen, fault):
            pass
        if fault.tokens_before_failing(gen.tokens) is not None:
            return _json(_ENGINE_ERROR, headers, 500)
        return _json(gen.wire.full(gen, self._model), headers)

    def _embed(self, body: Mapping[str, Any], request_id: str | None) -> bytes:
        items = _batch("input", body.get("input"))
        encoding = _field(body, "encoding_format", str) or "float"
        if encoding not in ("float", "base64"):
            raise _ApiError("encoding_format: Input should be 'float' or 'base64'")
        _check_model(body, self.config.model)
        lengths = [_prompt_length(item) for item in items]
        for length in lengths:
            _check_context(length, None, self.config.max_model_len)
        data = []
        for index, item in enumerate(items):
            vector: Any = embedding_for(item, self.config.embedding_dim)
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append(dict(index=index, object="embedding", embedding=vector))
        tokens = sum(lengths)
        usage = dict(prompt_tokens=tokens, total_tokens=tokens, completion_tokens=0)
        return orjson.dumps(
            dict(
                id=f"embd-{request_id or os.urandom(16).hex()}",
                object="list",
                created=int(time.time()),
                model=self.config.model,
                data=data,
                usage=usage | {"prompt_tokens_details": None},
            )
        )

    def metrics_text(self) -> bytes:
        """Prometheus text with the gauges and counters a gateway reads from vLLM."""
        running, label = self.scheduler.running, f'model_name="{self.config.model}"'
        samples: dict[str, dict[str, float]] = {
            "gauge": {
                "num_requests_running": running,
                "num_requests_waiting": self.scheduler.waiting,
                "kv_cache_usage_perc": running / self.config.max_num_seqs,
            },
            "counter": {
                "prompt_tokens_total": self.prompt_tokens,
                "generation_tokens_total": self.generation_tokens,
            },
        }
        lines = []
        for kind, values in samples.items():
            for name, value in values.items():
                lines += [f"# TYPE vllm:{name} {kind}", f"vllm:{name}{{{label}}} {float(value)}"]
        lines.append("# TYPE vllm:request_success_total counter")
        for reason, count in self.successes.items():
            labels = f'finished_reason="{reason}",{label}'
            lines.append(f"vllm:request_success_total{{{labels}}} {float(count)}")
        return ("\n".join(lines) + "\n").encode()


class _StandinApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope (see RAW_SEND)."""

    api_key: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        if (
            self.api_key is not None
            and scope["type"] == "http"
            and _unauthorized(scope, self.api_key)
        ):
            # vLLM's --api-key middleware: 401 on /v1 paths, health and metrics stay open
            body = b'{"error":"Unauthorized"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await super().__call__(scope, receive, send)


def _unauthorized(scope: Scope, key: bytes) -> bool:
    if not str(scope.get("path", "")).startswith("/v1"):
        return False
    given = dict(scope.get("headers") or ()).get(b"authorization", b"")
    return not hmac.compare_digest(given, b"Bearer " + key)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # FastAPI's shape, which vLLM (on FastAPI) sends
    return _json(orjson.dumps({"detail": exc.detail}), exc.headers or {}, exc.status_code)


def create_app(config: StandinConfig) -> Starlette:
    """Build the stand-in's ASGI app; its `StandinEngine` is `app.state.engine`."""
    engine = StandinEngine(config)
    routes = [
        Route("/health", engine.health, methods=["GET"]),
        Route("/metrics", engine.metrics, methods=["GET"]),
        Route("/v1/models", engine.models, methods=["GET"]),
        Route("/v1/chat/completions", engine.chat, methods=["POST"]),
        Route("/v1/completions", engine.completions, methods=["POST"]),
        *engine.hooks.routes(),
    ]
    if config.embeddings:
        routes.append(Route("/v1/embeddings", engine.embeddings, methods=["POST"]))
    app = _StandinApp(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.engine = engine
    app.api_key = config.api_key.encode() if config.api_key else None
    return app


def _fault_arg(spec: str) -> Fault:
    try:
        return Fault.from_spec(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    """`python -m engines.standin`: serve one stand-in engine with uvicorn."""
    parser = argparse.ArgumentParser(
        prog="python -m engines.standin", description="vLLM stand-in engine"
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=8000)
    add("--fd", type=int, help=argparse.SUPPRESS)  # a listening socket from StandinProcess
    add("--model", default=DEFAULT_MODEL, help="the served model name")
    add("--max-model-len", type=int, default=2048)
    add("--ttft-ms", type=float, default=0.0, help="time to first token after admission")
    add("--tpot-ms", type=float, default=0.0, help="time per further output token")
    add("--max-num-seqs", type=int, default=256, help="requests running at once; others wait")
    add("--embeddings", action="store_true", help="serve POST /v1/embeddings")
    add("--embedding-dim", type=int, default=32)
    add("--fault", type=_fault_arg, default=NO_FAULT, help="e.g. error_5xx:503,count=3")
    add("--seed", type=int, help="seed for faults with a probability")
    add("--api-key", help="require this Bearer token on /v1 (like vLLM's --api-key)")
    add("--prompt-count", choices=["words", "bytes"], default="words", help="see the docstring")
    add("--log-level", default="warning")
    args = vars(parser.parse_args(argv))
    names = {f.name for f in dataclasses.fields(StandinConfig)}
    app = create_app(StandinConfig(**{k: v for k, v in args.items() if k in names}))
    config = uvicorn.Config(
        app,
        host=args["host"],
        port=args["port"],
        loop="uvloop",
        http="httptools",
        access_log=False,
        lifespan="off",
        log_level=args["log_level"],
        timeout_graceful_shutdown=1,
    )
    sockets = None if args["fd"] is None else [socket.socket(fileno=args["fd"])]
    uvicorn.Server(config).run(sockets=sockets)


if __name__ == "__main__":
    main()
