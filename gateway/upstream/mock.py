"""An in-memory transport for tests: answers come from a function, no sockets.

Modelled on httpx's ``MockTransport``: the handler sees each request and returns a
:class:`MockReply` (or raises a transport-level exception, which is translated as the
real transport's would be). Streams run through the same SSE reader and time limits as
real ones, and the transport records every request and whether each stream was closed
before it ended (an abort, which a real engine would see).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.config import TimeoutSettings
from gateway.protocol import Endpoint
from gateway.upstream.engine import Engine
from gateway.upstream.errors import translate_exception, translate_status
from gateway.upstream.sse import timed_batches
from gateway.upstream.transport import ProbeResponse, UpstreamResponse


@dataclass(slots=True)
class MockRequest:
    engine: Engine
    endpoint: Endpoint
    body: bytes
    request_id: str
    stream: bool
    traceparent: str | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(slots=True)
class MockReply:
    """What the engine answers: a status and body, or a stream of raw SSE chunks."""

    status: int = 200
    body: bytes = b""
    #: Raw bytes as the engine would write them (``data: ...\n\n`` frames).
    chunks: Sequence[bytes] = ()
    #: Pause before each chunk (and before a unary answer).
    delay_s: float = 0.0
    #: Raised after the chunks (a connection dropped mid-stream).
    error_after: BaseException | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> MockReply:
        return cls(status=status, body=orjson.dumps(obj))

    @classmethod
    def sse(cls, payloads: Sequence[Any], *, done: bool = True, **kw: Any) -> MockReply:
        """A stream of ``payloads`` (dicts are JSON-encoded), then ``[DONE]``."""
        frames = [b"data: " + (p if isinstance(p, bytes) else orjson.dumps(p)) + b"\n\n"
                  for p in payloads]  # fmt: skip
        if done:
            frames.append(b"data: [DONE]\n\n")
        return cls(chunks=frames, **kw)


Handler = Callable[[MockRequest], MockReply | Awaitable[MockReply]]


class MockStream:
    def __init__(
        self, transport: MockTransport, request: MockRequest, reply: MockReply, started: float
    ) -> None:
        self._t = transport
        self._request = request
        self._reply = reply
        self._started = started
        self._finished = False
        self._closed = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        reply = self._reply
        last = len(reply.chunks) - 1
        for i, chunk in enumerate(reply.chunks):
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            # Everything sent: closing now is no abort (a reader stops at [DONE]).
            self._finished = i == last and reply.error_after is None
            yield chunk
        if reply.error_after is not None:
            raise reply.error_after
        self._finished = True

    def batches(self) -> AsyncIterator[list[bytes]]:
        tier = self._request.engine.tier
        return timed_batches(
            self._chunks(),
            self._t.timeouts,
            self._started,
            tier,
            lambda exc: translate_exception(tier, exc),
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._finished:
                self._t.aborted.append(self._request)


@dataclass
class MockTransport:
    """A :class:`~gateway.upstream.transport.Transport` answering from ``handler``."""

    handler: Handler
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    requests: list[MockRequest] = field(default_factory=list)
    #: Streams closed before their end (the engine would abort them).
    aborted: list[MockRequest] = field(default_factory=list)
    probes: dict[str, ProbeResponse] = field(default_factory=dict)

    async def _reply(self, request: MockRequest) -> MockReply:
        self.requests.append(request)
        try:
            out = self.handler(request)
            reply = await out if inspect.isawaitable(out) else out
        except Exception as exc:
            raise translate_exception(request.engine.tier, exc) from None
        assert isinstance(reply, MockReply)
        return reply

    async def send(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> UpstreamResponse:
        request = MockRequest(engine, endpoint, body, request_id, False, traceparent)
        reply = await self._reply(request)
        if reply.delay_s:
            try:
                async with asyncio.timeout(self.timeouts.total_s):
                    await asyncio.sleep(reply.delay_s)
            except TimeoutError:
                raise translate_exception(engine.tier, TimeoutError()) from None
        if reply.status >= 400:
            raise translate_status(engine.tier, reply.status, reply.body)
        return UpstreamResponse(reply.status, reply.body)

    async def open_stream(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> MockStream:
        started = asyncio.get_running_loop().time()
        request = MockRequest(engine, endpoint, body, request_id, True, traceparent)
        reply = await self._reply(request)
        if reply.status >= 400:
            raise translate_status(engine.tier, reply.status, reply.body)
        return MockStream(self, request, reply, started)

    async def get(self, engine: Engine, path: str, timeout: float) -> ProbeResponse:
        return self.probes.get(path, ProbeResponse(200, ""))

    async def forget(self, engine: Engine) -> None:
        return None

    async def aclose(self) -> None:
        return None
