"""vLLM's wire formats: byte templates for answers and stream chunks, and error shapes.

Each endpoint's templates are one :class:`Wire`; %-formatting fills the documented
slots, so a token chunk costs one formatting and no JSON encoding. :class:`Gen` is one
parsed generation request, its planned output and how far it got.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from starlette.responses import Response

DONE = b"data: [DONE]\n\n"


class ApiError(ValueError):
    """A request the stand-in rejects, rendered in vLLM's ErrorResponse shape."""

    def __init__(
        self, message: str, status: int = 400, kind: str = "Bad Request", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def response(self, headers: Mapping[str, str]) -> Response:
        body = error_body(str(self), self.kind, self.status, self.param)
        return json_response(body, headers, self.status)


class ParamError(ApiError):
    """A semantic error about one parameter, as vLLM's VLLMValidationError reports it."""

    def __init__(self, message: str, param: str, value: int) -> None:
        message = f"{message} (parameter={param}, value={value})"
        super().__init__(message, kind="BadRequestError", param=param)


def error_body(message: str, kind: str, status: int, param: str | None = None) -> bytes:
    return orjson.dumps({"error": dict(message=message, type=kind, param=param, code=status)})


ENGINE_ERROR = error_body("Internal server error", "InternalServerError", 500)


def json_response(body: bytes, headers: Mapping[str, str], status: int = 200) -> Response:
    return Response(body, status, headers, media_type="application/json")


def token_text(k: int) -> str:
    return f" tok{k}"


@dataclass(slots=True)
class Gen:
    """One parsed generation request, its planned output, and how far it got."""

    wire: Wire
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
        return "".join(token_text(k) for k in range(1, self.tokens + 1))[: self.text_cut]

    def usage(self) -> dict[str, int]:
        done = self.tokens * self.choices
        return dict(
            prompt_tokens=self.prompt_tokens,
            total_tokens=self.prompt_tokens + done,
            completion_tokens=done,
        )


@dataclass(frozen=True, slots=True)
class Wire:
    """One endpoint's byte templates; each %-formatting fills the documented slots."""

    chat: bool
    id_prefix: str
    chunk_object: bytes
    role: bytes  # the first chunk's choice: (index)
    token: bytes  # a token chunk's choice: (index, k)
    final: bytes  # the finishing chunk's choice: (index, text, finish_reason, stop_reason)
    choice: bytes  # a non-streaming choice: (index, text, finish_reason, stop_reason)
    body: bytes  # a non-streaming response: (id, created, model, choices, usage)

    def frames(self, gen: Gen, model: bytes) -> tuple[bytes, bytes, bytes]:
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

    def usage_chunk(self, gen: Gen, model: str) -> bytes:
        chunk = dict(
            id=gen.request_id,
            object=self.chunk_object.decode(),
            created=gen.created,
            model=model,
            choices=[],
            usage=gen.usage(),
        )
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def full(self, gen: Gen, model: bytes) -> bytes:
        fill = orjson.dumps(gen.text()), gen.finish_reason.encode(), orjson.dumps(gen.stop_reason)
        choices = b",".join(self.choice % (i, *fill) for i in range(gen.choices))
        usage = orjson.dumps(gen.usage() | {"prompt_tokens_details": None})
        return self.body % (orjson.dumps(gen.request_id), gen.created, model, choices, usage)


CHAT = Wire(
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
COMPLETION = Wire(
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
