"""OpenAI request and response models.

Fields follow OpenAI's documentation order. Unknown fields are kept (``extra="allow"``)
because vLLM accepts extra sampling parameters (``top_k``, ``repetition_penalty``...)
and they must reach the engine unchanged. The gateway forwards the client's own JSON
(with ``model`` and ``stream_options`` rewritten), never a re-serialised model, so
nothing a client sends is silently dropped.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from gateway.errors import ForbiddenFieldError, InvalidRequestError

#: Keys that would let a client choose or influence the upstream (SSRF, key theft).
FORBIDDEN_KEYS = frozenset(
    {"api_base", "base_url", "api_key", "upstream", "upstream_url", "endpoint_url"}
)
#: Fields holding JSON Schemas of the model's output: their property names are data.
SCHEMA_KEYS = frozenset(
    {"tools", "functions", "response_format", "guided_json", "structured_outputs"}
)
_MAX_DEPTH = 32
#: How each forbidden key appears in a JSON body when it is written without escapes.
_FORBIDDEN_BYTES = tuple(f'"{k}"'.encode() for k in sorted(FORBIDDEN_KEYS))


class Endpoint(enum.StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"

    @property
    def path(self) -> str:
        return _PATHS[self]


_PATHS = {
    Endpoint.CHAT: "/v1/chat/completions",
    Endpoint.COMPLETIONS: "/v1/completions",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
}


class OpenAIModel(BaseModel):
    """Base of all schema models: unknown fields pass through."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Sampling(OpenAIModel):
    model: str = Field(min_length=1, max_length=256)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: StrictInt | None = Field(None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v


class EmbeddingRequest(OpenAIModel):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class PromptTokensDetails(OpenAIModel):
    cached_tokens: int | None = 0


class Usage(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        d = self.prompt_tokens_details
        return (d.cached_tokens or 0) if d is not None else 0


# Responses. The gateway passes the engine's JSON through; these models document the
# contract in the OpenAPI schema (gateway.api.schema) and are not used to re-serialise.


class ChatChoice(OpenAIModel):
    index: int
    message: dict[str, Any]
    finish_reason: str | None = None


class ChatCompletion(OpenAIModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    finish_reason: str | None = None


class Completion(OpenAIModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(OpenAIModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingList(OpenAIModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage | None = None


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(OpenAIModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the gateway answers: ``{"error": {message, type, param, code}}``."""

    error: ErrorDetail


_MODELS: dict[Endpoint, type[OpenAIModel]] = {
    Endpoint.CHAT: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingRequest,
}


class ParsedRequest:
    """A validated request: the typed view plus the client's raw JSON to forward."""

    __slots__ = ("endpoint", "raw", "typed")

    def __init__(self, endpoint: Endpoint, raw: dict[str, Any], typed: OpenAIModel) -> None:
        self.endpoint = endpoint
        self.raw = raw
        self.typed = typed

    @property
    def model(self) -> str:
        return str(self.raw["model"])

    @property
    def stream(self) -> bool:
        return bool(self.raw.get("stream") or False)

    @property
    def client_wants_usage(self) -> bool:
        opts = self.raw.get("stream_options")
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    @property
    def requested_max_tokens(self) -> int | None:
        raw = self.raw
        value = raw.get("max_completion_tokens") or raw.get("max_tokens")
        return int(value) if value is not None else None

    @property
    def n(self) -> int:
        return int(self.raw.get("n") or 1)


def parse_request(
    endpoint: Endpoint, body: bytes, *, max_messages: int, max_n: int
) -> ParsedRequest:
    """Decode and validate a request body; raise :class:`InvalidRequestError` on any fault."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"The request body is not valid JSON (or not valid UTF-8): {exc.msg}",
            code="invalid_json",
        ) from None
    if not isinstance(raw, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    if _may_hide_forbidden(body):
        check_forbidden(raw)
    try:
        typed = _MODELS[endpoint].model_validate(raw)
    except ValidationError as exc:
        raise _describe(exc) from None
    messages = raw.get("messages")
    if isinstance(messages, list) and len(messages) > max_messages:
        raise InvalidRequestError(
            f"Too many messages: {len(messages)} (limit {max_messages}).", param="messages"
        )
    n = raw.get("n") or 1
    if not isinstance(n, int) or isinstance(n, bool):  # endpoints whose model has no n
        raise InvalidRequestError("Invalid value for 'n': it must be an integer.", param="n")
    if n > max_n:
        raise InvalidRequestError(f"n={n} is above the limit of {max_n}.", param="n")
    return ParsedRequest(endpoint, raw, typed)


def _may_hide_forbidden(body: bytes) -> bool:
    """Whether the body needs the full walk of :func:`check_forbidden`.

    It does not when none of the keys appears in it literally, nothing is escaped as
    ``\\u`` (which could spell a key), and it has too few brackets to nest too deep:
    then the walk could find nothing, and it costs more than the rest of parsing.
    """
    if b"\\u" in body or body.count(b"{") + body.count(b"[") > _MAX_DEPTH:
        return True
    return any(k in body for k in _FORBIDDEN_BYTES)


def check_forbidden(obj: Any, path: str = "", depth: int = 0) -> None:
    """Reject fields that would choose an upstream, wherever they are nested."""
    if depth > _MAX_DEPTH:
        raise InvalidRequestError("The request body is nested too deeply.", param=path or None)
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            if key in FORBIDDEN_KEYS:
                raise ForbiddenFieldError(
                    f"The field '{here}' is not allowed: upstream engines are chosen by "
                    "the gateway's configuration, never by the request.",
                    param=here,
                )
            if key not in SCHEMA_KEYS and isinstance(value, dict | list):
                check_forbidden(value, here, depth + 1)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            if isinstance(value, dict | list):
                check_forbidden(value, f"{path}.{i}", depth + 1)


def _describe(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    extra = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    message = f"Invalid value for '{loc}': {first['msg']}{extra}." if loc else first["msg"]
    return InvalidRequestError(message, param=loc or None)
