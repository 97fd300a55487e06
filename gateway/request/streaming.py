"""Server-sent events to the client: framing, usage extraction, disconnects, keep-alive.

:class:`SSEResponse` is a small ASGI response written for this gateway instead of
sse-starlette's ``EventSourceResponse``, for three reasons (see README, "Streaming"):

* it holds the response headers back until the first event exists, so a failure before
  the first token is still a proper HTTP error (and may be retried on another engine);
* keep-alive comments go out only after a silence, not on a fixed beat;
* on SIGTERM it lets in-flight streams finish (sse-starlette ends them at once).

Three tasks serve one stream: the pump (events → socket), a disconnect watcher (aborts
the pump, which closes the upstream request) and the keep-alive pinger. Nothing is
spawned per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import GatewayError, InternalError
from gateway.request.metering import Usage

DONE_FRAME = b"data: [DONE]\n\n"
KEEPALIVE_FRAME = b": keep-alive\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_frame(err: GatewayError) -> bytes:
    return frame(err.to_json())


class StreamOutcome:
    """How a stream ended, for settlement and the ledger."""

    __slots__ = ("client_disconnected", "committed", "error", "frames_sent")

    def __init__(self) -> None:
        self.committed = False
        self.frames_sent = 0
        self.client_disconnected = False
        self.error: GatewayError | None = None


class StreamHooks(Protocol):
    """What the request's lifecycle supplies to (and hears from) its SSE response."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers, asked for when the first frame is ready."""
        ...

    def error_headers(self, err: GatewayError) -> list[tuple[bytes, bytes]]: ...

    async def on_end(self, outcome: StreamOutcome) -> None:
        """The stream ended on its own; runs just before its last frame is sent."""
        ...

    async def on_finish(self, outcome: StreamOutcome) -> None:
        """The stream ended for any reason; runs exactly once, last."""
        ...


class SSEResponse(Response):
    """ASGI response streaming ``events`` (already framed bytes) as SSE.

    ``events`` may raise :class:`GatewayError`: before the first frame it becomes an
    ordinary JSON error response; after it, an SSE error frame followed by ``[DONE]``.
    ``hooks.on_end`` runs when the stream ends on its own (the events ran out, or raised
    a :class:`GatewayError`), just before the last frame (``[DONE]`` or the error) is sent:
    whatever must be true before the client hears of the end (the quota settlement) goes
    there, and should be quick. ``hooks.on_finish`` always runs once, after the stream
    ended for any reason.
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        hooks: StreamHooks,
        *,
        keepalive_s: float,
        send_timeout_s: float = 30.0,
        outcome: StreamOutcome | None = None,
    ) -> None:
        # Not calling Response.__init__: headers are decided when the first event exists.
        self.status_code = 200
        self.background = None
        self._events = events
        self._hooks = hooks
        self._keepalive_s = keepalive_s
        #: A client that takes no bytes for this long is treated as gone.
        self._send_timeout_s = send_timeout_s
        self._send_started = 0.0
        self._pump_task: asyncio.Task[Any] | None = None
        self.outcome = outcome or StreamOutcome()
        #: Taken by the pinger, and by the pump only while the pinger holds it.
        self._lock = asyncio.Lock()
        #: The pump is inside a send (so the pinger keeps quiet).
        self._sending = False
        self._last_send = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = self.outcome
        loop = asyncio.get_running_loop()
        self._last_send = loop.time()
        pump = asyncio.current_task()
        assert pump is not None
        self._pump_task = pump
        watcher = loop.create_task(self._watch_disconnect(receive, pump))
        pinger = loop.create_task(self._ping(send))
        try:
            await self._pump(send)
        except asyncio.CancelledError:
            if not outcome.client_disconnected:
                raise
            # The watcher cancelled us: the client is gone. Swallow and finish cleanly.
            t = asyncio.current_task()
            if t is not None:
                t.uncancel()
        except OSError:
            outcome.client_disconnected = True
        finally:
            watcher.cancel()
            pinger.cancel()
            with contextlib.suppress(BaseException):
                await self._events.aclose()  # type: ignore[attr-defined]
            await asyncio.shield(self._hooks.on_finish(outcome))

    async def _commit(self, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.outcome.committed = True
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _pump(self, send: Send) -> None:
        outcome = self.outcome
        loop = asyncio.get_running_loop()
        try:
            async for chunk in self._events:
                if self._lock.locked():  # the pinger is writing: wait for it
                    async with self._lock:
                        await self._send_chunk(send, chunk)
                else:  # the common case: no lock round trip; the pinger sees _sending
                    self._sending = True
                    self._send_started = loop.time()
                    try:
                        await self._send_chunk(send, chunk)
                    finally:
                        self._sending = False
                self._last_send = loop.time()
                outcome.frames_sent += 1
        except GatewayError as err:
            outcome.error = err
            await self._hooks.on_end(outcome)
            await self._send_error(send, err)
            return
        except (asyncio.CancelledError, OSError):
            raise
        except Exception:
            internal = InternalError("The stream failed inside the gateway.")
            outcome.error = internal
            await self._send_error(send, internal)
            raise
        await self._hooks.on_end(outcome)
        async with self._lock:
            if not outcome.committed:
                await self._commit(send, 200, self._hooks.headers())
            await send({"type": "http.response.body", "body": DONE_FRAME, "more_body": False})

    async def _send_chunk(self, send: Send, chunk: bytes) -> None:
        if not self.outcome.committed:
            await self._commit(send, 200, self._hooks.headers())
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _send_error(self, send: Send, err: GatewayError) -> None:
        async with self._lock:
            if not self.outcome.committed:
                body = err.to_json()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *self._hooks.error_headers(err),
                ]
                await self._commit(send, err.status_code, headers)
                await send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                await send(
                    {
                        "type": "http.response.body",
                        "body": error_frame(err) + DONE_FRAME,
                        "more_body": False,
                    }
                )

    async def _watch_disconnect(self, receive: Receive, pump: asyncio.Task[Any]) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self.outcome.client_disconnected = True
                pump.cancel()
                return

    async def _ping(self, send: Send) -> None:
        """Keep-alive comments after a silence; and the end of a client that reads nothing."""
        loop = asyncio.get_running_loop()
        interval, limit = self._keepalive_s, self._send_timeout_s
        while True:
            now = loop.time()
            if self._sending:  # a send in progress: due to finish by send_started + limit
                wake = self._send_started + limit
            else:  # a send starting later can be stuck no sooner than last_send + limit
                wake = self._last_send + interval
                if self._last_send + limit > now:
                    wake = min(wake, self._last_send + limit)
            await asyncio.sleep(max(0.0, wake - now))
            now = loop.time()
            if self._sending:
                if now - self._send_started >= limit:
                    # The client has taken no bytes for send_timeout_s: drop it as gone.
                    self.outcome.client_disconnected = True
                    _drop_connection(send)
                    if self._pump_task is not None:
                        self._pump_task.cancel()
                    return
                continue
            if now - self._last_send < interval:
                continue
            async with self._lock:
                if self._sending:  # the pump is writing: it has just sent something
                    continue
                if not self.outcome.committed:
                    await self._commit(send, 200, self._hooks.headers())
                await send(
                    {"type": "http.response.body", "body": KEEPALIVE_FRAME, "more_body": True}
                )
                self._last_send = loop.time()


def _drop_connection(send: Send) -> None:
    """Close the client's socket under the server (uvicorn: the send's cycle transport).

    A client that reads nothing cannot be told anything: the response cannot complete,
    so the connection is aborted, as a proxy's send timeout does.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()


class UsageTracker:
    """Reads upstream SSE payloads: finds usage, counts output, spots in-stream errors."""

    __slots__ = ("chunks", "finish_reason", "text_parts", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.chunks = 0
        self.text_parts: list[str] = []
        self.finish_reason: str | None = None

    def inspect(self, payload: bytes) -> tuple[dict[str, Any] | None, bool]:
        """Return (upstream error object or None, is_usage_only_chunk)."""
        obj = orjson.loads(payload)
        if not isinstance(obj, dict):
            return None, False
        err = obj.get("error")
        if err is not None and not obj.get("choices"):
            return (err if isinstance(err, dict) else {"message": str(err)}), False
        usage = obj.get("usage")
        if usage:
            self.usage = Usage.parse(usage)
        choices = obj.get("choices")
        if choices:
            self.chunks += 1
            for c in choices:
                delta = c.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else c.get("text")
                if text:
                    self.text_parts.append(text)
                if c.get("finish_reason"):
                    self.finish_reason = c["finish_reason"]
            return None, False
        return None, usage is not None
