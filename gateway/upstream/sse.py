"""Reading the engine's server-sent events, under the stream's time limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from gateway.config import TimeoutSettings
from gateway.errors import GatewayError, UpstreamTimeoutError


class SSEReader:
    """Splits an upstream byte stream into SSE event payloads (the bytes after ``data: ``)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            payload = _data_of(block)
            if payload is not None:
                events.append(payload)
        self._buf = buf[start:]
        return events


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data:") and b"\ndata:" not in block:
        return block[5:].lstrip(b" ")
    lines = [ln[5:].lstrip(b" ") for ln in block.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


async def timed_batches(
    chunks: AsyncIterator[bytes],
    timeouts: TimeoutSettings,
    started: float,
    tier: str,
    translate: Callable[[Exception], GatewayError],
) -> AsyncIterator[list[bytes]]:
    """SSE payloads from raw ``chunks``, a list per network read, within the stream's limits.

    Events that arrived together are handed on together, so the gateway can write them
    to its client in one send: nothing is held back, fewer writes go out.

    Time to first event is bounded by ``ttft_s``, each later gap by ``idle_s`` and the
    whole stream (from ``started``, on the loop's clock) by ``total_s``. A transport's
    own exceptions become gateway errors through ``translate``.
    """
    loop = asyncio.get_running_loop()
    reader = SSEReader()
    deadline_total = started + timeouts.total_s
    first = True
    try:
        # Deadlines run from the request's start (first event) and from the last event
        # (the next one), not from the last read: an engine trickling bytes without
        # completing an event still times out. The clock stops while the consumer holds
        # a batch, so a slow client is not blamed on the engine.
        async with asyncio.timeout_at(min(started + timeouts.ttft_s, deadline_total)) as cm:
            while True:
                try:
                    data = await anext(chunks)
                except StopAsyncIteration:
                    cm.reschedule(None)
                    return
                batch = reader.feed(data)
                if batch:
                    first = False
                    cm.reschedule(None)
                    yield batch
                    cm.reschedule(min(loop.time() + timeouts.idle_s, deadline_total))
    except GatewayError:
        raise
    except TimeoutError:
        kind = "time to first token" if first else "idle time between chunks"
        if loop.time() >= deadline_total:
            kind = "total time"
        raise UpstreamTimeoutError(
            f"The {tier} tier's engine exceeded the {kind} limit.", code="upstream_timeout"
        ) from None
    except Exception as exc:  # the transport's own failure, mid-stream
        raise translate(exc) from None
