from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.config import EngineSettings, TimeoutSettings
from gateway.engines import Engine, EngineClient, SSEReader, sanitize
from gateway.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    OverloadedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.protocol import Endpoint

ES = EngineSettings(name="e0", url="http://10.1.2.3:8101", tier="small", model="m")


def client_with(handler: httpx.MockTransport, **timeouts: float) -> tuple[EngineClient, Engine]:
    t = TimeoutSettings(**timeouts)
    return EngineClient([ES], t, transport_factory=lambda _e: handler), Engine(ES)


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
    status: int, body: bytes, err: type[Exception], fragment: str
) -> None:
    client, engine = client_with(
        httpx.MockTransport(lambda r: httpx.Response(status, content=body))
    )
    with pytest.raises(err) as exc:
        await client.send(engine, Endpoint.CHAT, b"{}", "rid")
    assert fragment in str(exc.value)
    assert "10.1.2.3" not in str(exc.value)
    await client.aclose()


async def test_connect_error_is_503_without_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused to http://10.1.2.3:8101", request=request)

    client, engine = client_with(httpx.MockTransport(refuse))
    with pytest.raises(EngineUnavailableError) as exc:
        await client.send(engine, Endpoint.CHAT, b"{}", "rid")
    assert "10.1.2.3" not in exc.value.message and exc.value.status_code == 503
    await client.aclose()


async def test_request_id_is_forwarded() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["rid"] = request.headers["x-request-id"]
        return httpx.Response(200, json={"ok": True})

    client, engine = client_with(httpx.MockTransport(handler))
    resp = await client.send(engine, Endpoint.CHAT, b"{}", "abc-123")
    assert seen["rid"] == "abc-123" and resp.status == 200
    await client.aclose()


class _SlowStream(httpx.AsyncByteStream):
    def __init__(self, first_delay: float, gap: float, n: int = 3) -> None:
        self.first_delay, self.gap, self.n = first_delay, gap, n

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.first_delay)
        for i in range(self.n):
            if i:
                await asyncio.sleep(self.gap)
            yield f"data: {i}\n\n".encode()


async def collect(client: EngineClient, engine: Engine) -> list[bytes]:
    stream = await client.open_stream(engine, Endpoint.CHAT, b"{}", "rid")
    try:
        return [p async for p in stream.events()]
    finally:
        await stream.aclose()


async def test_stream_ttft_timeout() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=_SlowStream(0.5, 0)))
    client, engine = client_with(transport, ttft_s=0.1, idle_s=5)
    with pytest.raises(UpstreamTimeoutError, match="time to first token"):
        await collect(client, engine)
    await client.aclose()


async def test_stream_idle_timeout_is_separate_from_ttft() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=_SlowStream(0.15, 0.5)))
    client, engine = client_with(transport, ttft_s=1.0, idle_s=0.1)
    with pytest.raises(UpstreamTimeoutError, match="idle"):
        await collect(client, engine)
    await client.aclose()


async def test_stream_within_limits_yields_all_events() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=_SlowStream(0.01, 0.01)))
    client, engine = client_with(transport, ttft_s=1.0, idle_s=1.0)
    assert await collect(client, engine) == [b"0", b"1", b"2"]
    await client.aclose()


async def test_stream_total_timeout() -> None:
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, stream=_SlowStream(0.01, 0.08, n=10))
    )
    client, engine = client_with(transport, ttft_s=1.0, idle_s=1.0, total_s=0.3)
    with pytest.raises(UpstreamTimeoutError, match="total"):
        await collect(client, engine)
    await client.aclose()
