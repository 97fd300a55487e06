from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.config import EngineSettings, TimeoutSettings
from gateway.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    OverloadedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.protocol import Endpoint
from gateway.upstream.client import AiohttpTransport
from gateway.upstream.engine import Engine
from gateway.upstream.errors import sanitize
from gateway.upstream.http import HttpTransport
from gateway.upstream.sse import SSEReader
from tests.fake_upstream import Handler, serve, stream_frames
from tests.support import free_port

Client = HttpTransport | AiohttpTransport


@pytest.fixture(params=[HttpTransport, AiohttpTransport], ids=["http", "aiohttp"])
def kind(request: pytest.FixtureRequest) -> type[Client]:
    """Both transports pass the same tests: the new default and the baseline it replaced."""
    cls: type[Client] = request.param
    return cls


def client_for(kind: type[Client], url: str, **timeouts: float) -> tuple[Client, Engine]:
    es = EngineSettings(name="e0", url=url, tier="small", model="m")
    return kind(TimeoutSettings(**timeouts)), Engine(es)


def test_sse_reader_splits_across_chunk_boundaries() -> None:
    r = SSEReader()
    assert r.feed(b'data: {"a":') == []
    assert r.feed(b"1}\n\ndata: [DO") == [b'{"a":1}']
    assert r.feed(b"NE]\n\n: comment\n\n") == [b"[DONE]"]
    assert r.feed(b"data: x\r\n\r\n") == [b"x"]


def test_sanitize_strips_urls_and_addresses() -> None:
    msg = sanitize("failed to reach http://10.0.0.5:8000/v1 and 192.168.1.1:80 or localhost:9")
    assert "10.0.0.5" not in msg and "192.168" not in msg and "localhost:9" not in msg


@pytest.mark.parametrize(
    ("status", "body", "err", "fragment"),
    [
        (400, b'{"error":{"message":"max_tokens too large"}}', InvalidRequestError, "max_tokens"),
        (429, b"{}", OverloadedError, "overloaded"),
        (500, b"boom", UpstreamError, "500"),
        (503, b"", EngineUnavailableError, "unavailable"),
        (404, b"{}", UpstreamError, "configured model"),
    ],
)
async def test_status_translation(
    kind: type[Client], status: int, body: bytes, err: type[Exception], fragment: str
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, body=body)

    async with serve(handler) as url:
        client, engine = client_for(kind, url)
        with pytest.raises(err) as exc:
            await client.send(engine, Endpoint.CHAT, b"{}", "rid")
        assert fragment in str(exc.value)
        assert "127.0.0.1" not in str(exc.value) and url not in str(exc.value)
        await client.aclose()


async def test_connect_error_is_503_without_url(kind: type[Client]) -> None:
    port = free_port()  # nothing listens there: the connection is refused
    client, engine = client_for(kind, f"http://127.0.0.1:{port}")
    with pytest.raises(EngineUnavailableError) as exc:
        await client.send(engine, Endpoint.CHAT, b"{}", "rid")
    assert "refused the connection" in exc.value.message
    assert "127.0.0.1" not in exc.value.message and str(port) not in exc.value.message
    assert exc.value.status_code == 503
    await client.aclose()


async def test_request_id_and_api_key_are_forwarded(kind: type[Client]) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        seen["rid"] = request.headers["x-request-id"]
        seen["auth"] = request.headers.get("authorization", "")
        seen["body"] = (await request.read()).decode()
        return web.json_response({"ok": True})

    async with serve(handler) as url:
        es = EngineSettings(name="e0", url=url, tier="small", model="m", api_key="sk-engine")
        client, engine = kind(TimeoutSettings()), Engine(es)
        resp = await client.send(engine, Endpoint.CHAT, b'{"x":1}', "abc-123")
        await client.aclose()
    assert seen == {"rid": "abc-123", "auth": "Bearer sk-engine", "body": '{"x":1}'}
    assert resp.status == 200 and resp.body == b'{"ok": true}'


def slow(first_delay: float, gap: float, n: int = 3) -> Handler:
    frames = [f"data: {i}\n\n".encode() for i in range(n)]

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await stream_frames(request, frames, first_delay, gap)

    return handler


async def collect(client: Client, engine: Engine) -> list[bytes]:
    stream = await client.open_stream(engine, Endpoint.CHAT, b"{}", "rid")
    try:
        return [p async for batch in stream.batches() for p in batch]
    finally:
        await stream.aclose()


async def test_stream_ttft_timeout(kind: type[Client]) -> None:
    async with serve(slow(0.5, 0)) as url:
        client, engine = client_for(kind, url, ttft_s=0.1, idle_s=5)
        with pytest.raises(UpstreamTimeoutError, match="time to first token"):
            await collect(client, engine)
        await client.aclose()


async def test_stream_idle_timeout_is_separate_from_ttft(kind: type[Client]) -> None:
    async with serve(slow(0.15, 0.5)) as url:
        client, engine = client_for(kind, url, ttft_s=1.0, idle_s=0.1)
        with pytest.raises(UpstreamTimeoutError, match="idle"):
            await collect(client, engine)
        await client.aclose()


async def test_stream_within_limits_yields_all_events(kind: type[Client]) -> None:
    async with serve(slow(0.01, 0.01)) as url:
        client, engine = client_for(kind, url, ttft_s=1.0, idle_s=1.0)
        assert await collect(client, engine) == [b"0", b"1", b"2"]
        await client.aclose()


async def test_stream_total_timeout(kind: type[Client]) -> None:
    async with serve(slow(0.01, 0.08, n=10)) as url:
        client, engine = client_for(kind, url, ttft_s=1.0, idle_s=1.0, total_s=0.3)
        with pytest.raises(UpstreamTimeoutError, match="total"):
            await collect(client, engine)
        await client.aclose()


async def test_closing_a_stream_early_drops_the_connection(kind: type[Client]) -> None:
    gone = asyncio.Event()

    async def endless(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"data: x\n\n")
                await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            gone.set()
            raise

    async with serve(endless) as url:
        client, engine = client_for(kind, url)
        stream = await client.open_stream(engine, Endpoint.CHAT, b"{}", "rid")
        async for batch in stream.batches():
            assert batch[0] == b"x"
            break
        await stream.aclose()
        # the engine notices the disconnect (and so would abort the request)
        await asyncio.wait_for(gone.wait(), 2)
        await client.aclose()


def trickling(head: list[bytes], tail: bytes, every: float) -> Handler:
    """Send ``head`` events at once, then ``tail`` one byte every ``every`` seconds."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for frame in head:
            await resp.write(frame)
        for byte in tail:
            await asyncio.sleep(every)
            await resp.write(bytes((byte,)))
        await resp.write_eof()
        return resp

    return handler


@pytest.mark.parametrize(
    ("head", "limit"),
    [([], "time to first token"), ([b"data: first\n\n"], "idle time between chunks")],
)
async def test_a_trickling_engine_times_out_though_bytes_keep_coming(
    kind: type[Client], head: list[bytes], limit: str
) -> None:
    event = b"data: " + b"x" * 200 + b"\n\n"  # >0.6 s of bytes at one per 3 ms...
    async with serve(trickling(head, event * 5, every=0.003)) as url:
        client, engine = client_for(kind, url, ttft_s=0.3, idle_s=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeoutError, match=limit):
            await collect(client, engine)
        # ...bytes keep coming all the while, but no event completes in time, and the
        # deadlines move only on events.
        assert asyncio.get_running_loop().time() - started < 1.5
        await client.aclose()
