"""Clients as the stand-in sees them: disconnects, dropped connections, SSE responses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
RAW_SEND = "standin.raw_send"  # scope key under which the app keeps the server's `send`


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call only after the request body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def drop_connection(scope: Scope) -> bool:
    """Close the client's socket without a response (uvicorn only; False elsewhere)."""
    cycle = getattr(scope.get(RAW_SEND), "__self__", None)
    abort = getattr(getattr(cycle, "transport", None), "abort", None)
    if not callable(abort):
        return False
    abort()
    return True


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work`, cancelling it if the client disconnects first (None), as vLLM does."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    return None if task.cancelled() else task.result()


class EventStream(StreamingResponse):
    """An SSE response that stops its generator when the client leaves, then calls `on_close`.

    Leaner than Starlette's loop: chunks go to the server's own `send` (kept in the scope
    under RAW_SEND), skipping the middleware wrappers on every token.
    """

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(body, headers=headers, media_type="text/event-stream")
        self._body, self._on_close = body, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await unless_disconnected(receive, self._send_all(scope.get(RAW_SEND, send)))
        finally:
            await self._body.aclose()  # also settles a generator that never started
            self._on_close()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk in self._body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
