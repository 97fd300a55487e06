"""SSEResponse: what the client sees, and when the end-of-stream hooks run relative to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.request.streaming import DONE_FRAME, SSEResponse, StreamOutcome, frame


class Client:
    """Records the ASGI messages sent and the hook calls, in one timeline."""

    def __init__(self, *, disconnect_after: int | None = None) -> None:
        self.timeline: list[Any] = []
        self.bodies = 0
        self.disconnect_after = disconnect_after
        self.gone = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.timeline.append(("start", message["status"]))
            return
        self.timeline.append(("body", message["body"]))
        self.bodies += 1
        if self.disconnect_after is not None and self.bodies >= self.disconnect_after:
            self.gone.set()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


class Hooks:
    def __init__(self, client: Client) -> None:
        self.client = client

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def error_headers(self, err: GatewayError) -> list[tuple[bytes, bytes]]:
        return []

    async def on_end(self, out: StreamOutcome) -> None:
        self.client.timeline.append("on_end")

    async def on_finish(self, out: StreamOutcome) -> None:
        self.client.timeline.append(("on_finish", out.client_disconnected, out.error is not None))


def make_response(client: Client, events: AsyncIterator[bytes]) -> SSEResponse:
    return SSEResponse(events, Hooks(client), keepalive_s=60)


def run(client: Client, events: AsyncIterator[bytes]) -> None:
    asyncio.run(make_response(client, events)({"type": "http"}, client.receive, client.send))


async def chunks(n: int, fail: bool = False, pause: float = 0.0) -> AsyncIterator[bytes]:
    for i in range(n):
        yield frame(b'{"i": %d}' % i)
        if pause:
            await asyncio.sleep(pause)
    if fail:
        raise UpstreamError("engine died", code="upstream_stream_error")


def test_stream_settles_before_the_client_hears_done() -> None:
    client = Client()
    run(client, chunks(3))
    assert client.timeline == [
        ("start", 200),
        ("body", frame(b'{"i": 0}')),
        ("body", frame(b'{"i": 1}')),
        ("body", frame(b'{"i": 2}')),
        "on_end",
        ("body", DONE_FRAME),
        ("on_finish", False, False),
    ]


def test_stream_failing_midway_settles_before_the_error_frame() -> None:
    client = Client()
    run(client, chunks(2, fail=True))
    end = client.timeline.index("on_end")
    last = client.timeline[end + 1]
    assert last[0] == "body" and last[1].endswith(DONE_FRAME)
    assert orjson.loads(last[1].split(b"\n\n")[0][len(b"data: ") :])["error"]["code"] == (
        "upstream_stream_error"
    )
    assert client.timeline[-1] == ("on_finish", False, True)


def test_stream_failing_before_its_first_frame_settles_before_the_error_response() -> None:
    client = Client()
    run(client, chunks(0, fail=True))
    assert client.timeline[0] == "on_end"
    assert client.timeline[1] == ("start", 502)
    assert client.timeline[-1] == ("on_finish", False, True)


def test_client_gone_skips_on_end_and_finishes_once() -> None:
    client = Client(disconnect_after=2)
    run(client, chunks(50, pause=0.01))
    assert "on_end" not in client.timeline
    assert client.timeline.count(("on_finish", True, False)) == 1
    assert DONE_FRAME not in [m[1] for m in client.timeline if m[0] == "body"]
