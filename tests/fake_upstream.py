"""A real aiohttp.web server on a free local port, standing in for an engine in tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.test_utils import RawTestServer

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` in the running loop; yield its base URL."""
    server = RawTestServer(handler, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@contextlib.contextmanager
def serve_in_thread(handler: Handler) -> Iterator[str]:
    """Serve ``handler`` from a loop of its own in a background thread (for sync tests)."""
    loop = asyncio.new_event_loop()
    server = RawTestServer(handler, host="127.0.0.1")
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start_server())
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("fake upstream did not start")
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


async def stream_frames(
    request: web.BaseRequest, frames: list[bytes], first_delay: float = 0.0, gap: float = 0.0
) -> web.StreamResponse:
    """Answer 200 with an event stream: headers at once, then ``frames`` paced as asked."""
    resp = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(first_delay)
    for i, frame in enumerate(frames):
        if i and gap:
            await asyncio.sleep(gap)
        await resp.write(frame)
    await resp.write_eof()
    return resp
