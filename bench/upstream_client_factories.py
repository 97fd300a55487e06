"""The HTTP clients the upstream-clients benchmark compares, each doing the gateway's
work for one call (timeouts, status check, SSE parsing), behind one factory signature.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from bench.loadgen import ConnectionPool, Target, fetch
from gateway.config import EngineSettings, TimeoutSettings
from gateway.protocol import Endpoint
from gateway.upstream.client import AiohttpTransport
from gateway.upstream.engine import Engine
from gateway.upstream.http import HttpTransport
from gateway.upstream.sse import SSEReader

MODEL = "standin-clients"


HOST = "127.0.0.1"


CLIENTS = ("httpx", "aiohttp", "gateway", "http", "httpx2", "raw")


MODES = ("unary", "stream")


Call = Callable[[], Awaitable[bool]]


def body(stream: bool, max_tokens: int) -> bytes:
    b: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Summarise the benefits of a gateway."}],
        "max_tokens": max_tokens,
    }
    if stream:
        b |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(b)


@contextlib.asynccontextmanager
async def gateway_client(
    url: str, concurrency: int, stream: bool, max_tokens: int
) -> AsyncIterator[Call]:
    """The gateway's AiohttpTransport, configured as the gateway configures it."""
    async with _transport_client(AiohttpTransport, url, concurrency, stream, max_tokens) as c:
        yield c


@contextlib.asynccontextmanager
async def http_client(
    url: str, concurrency: int, stream: bool, max_tokens: int
) -> AsyncIterator[Call]:
    """The gateway's HttpTransport, configured as the gateway configures it."""
    async with _transport_client(HttpTransport, url, concurrency, stream, max_tokens) as c:
        yield c


@contextlib.asynccontextmanager
async def _transport_client(
    kind: type[AiohttpTransport | HttpTransport],
    url: str,
    concurrency: int,
    stream: bool,
    max_tokens: int,
) -> AsyncIterator[Call]:
    settings = EngineSettings.model_validate(
        {"name": "bench", "url": url, "tier": "small", "model": MODEL,
         "max_concurrency": max(64, concurrency)}
    )  # fmt: skip
    timeouts = TimeoutSettings.model_validate({})
    client = kind(timeouts)
    engine = Engine(settings)
    payload = body(stream, max_tokens)

    async def unary() -> bool:
        resp = await client.send(engine, Endpoint.CHAT, payload, "bench")
        return resp.status == 200 and bool(resp.body)

    async def streamed() -> bool:
        upstream = await client.open_stream(engine, Endpoint.CHAT, payload, "bench")
        last = b""
        try:
            async for batch in upstream.batches():
                last = batch[-1]
        finally:
            await upstream.aclose()
        return last == b"[DONE]"

    try:
        yield streamed if stream else unary
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def aiohttp_client(
    url: str, concurrency: int, stream: bool, max_tokens: int
) -> AsyncIterator[Call]:
    """aiohttp doing what AiohttpTransport does: timeouts, status check, SSE parsing."""
    import aiohttp

    t = TimeoutSettings.model_validate({})
    connector = aiohttp.TCPConnector(
        limit=max(64, concurrency) + 16, limit_per_host=0, keepalive_timeout=30.0,
        ttl_dns_cache=300, force_close=False,
    )  # fmt: skip
    session = aiohttp.ClientSession(
        base_url=url,
        connector=connector,
        headers={"content-type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s),
        auto_decompress=False,
        trust_env=False,
    )
    path = Endpoint.CHAT.path
    payload = body(stream, max_tokens)
    headers = {"x-request-id": "bench"}

    async def unary() -> bool:
        async with (
            asyncio.timeout(t.total_s),
            session.post(path, data=payload, headers=headers) as resp,
        ):
            content = await resp.read()
            return resp.status == 200 and bool(content)

    async def streamed() -> bool:
        last = b""
        async with (
            asyncio.timeout(t.total_s),
            session.post(path, data=payload, headers=headers) as resp,
        ):
            if resp.status != 200:
                return False
            reader = SSEReader()
            async for chunk in resp.content.iter_any():
                for event in reader.feed(chunk):
                    last = event
        return last == b"[DONE]"

    try:
        yield streamed if stream else unary
    finally:
        await session.close()


@contextlib.asynccontextmanager
async def httpx_client(
    url: str, concurrency: int, stream: bool, max_tokens: int
) -> AsyncIterator[Call]:
    """httpx, configured as the gateway's engine client configured it."""
    import httpx

    async with _httpx_like(httpx, url, concurrency, stream, max_tokens) as call:
        yield call


@contextlib.asynccontextmanager
async def httpx2_client(
    url: str, concurrency: int, stream: bool, max_tokens: int
) -> AsyncIterator[Call]:
    """pydantic's httpx2 fork (reworked pool), configured the same way."""
    import httpx2

    async with _httpx_like(httpx2, url, concurrency, stream, max_tokens) as call:
        yield call


@contextlib.asynccontextmanager
async def _httpx_like(
    httpx2: Any, url: str, concurrency: int, stream: bool, max_tokens: int
) -> AsyncIterator[Call]:
    """``httpx`` or its API-compatible fork ``httpx2``, with the same settings."""
    t = TimeoutSettings.model_validate({})
    limits = httpx2.Limits(
        max_connections=max(64, concurrency) + 16,
        max_keepalive_connections=max(64, concurrency) + 16,
        keepalive_expiry=30.0,
    )
    client = httpx2.AsyncClient(
        base_url=url,
        transport=httpx2.AsyncHTTPTransport(limits=limits, retries=0),
        headers={"content-type": "application/json"},
        timeout=httpx2.Timeout(
            connect=t.connect_s, read=max(t.ttft_s, t.idle_s, t.total_s),
            write=t.connect_s + 10, pool=t.connect_s,
        ),
        follow_redirects=False,
        trust_env=False,
    )  # fmt: skip
    path = Endpoint.CHAT.path
    payload = body(stream, max_tokens)
    headers = {"x-request-id": "bench"}

    async def unary() -> bool:
        async with asyncio.timeout(t.total_s):
            resp = await client.post(path, content=payload, headers=headers)
        return resp.status_code == 200 and bool(resp.content)

    async def streamed() -> bool:
        request = client.build_request("POST", path, content=payload, headers=headers)
        async with asyncio.timeout(t.ttft_s):
            resp = await client.send(request, stream=True)
        last = b""
        try:
            reader = SSEReader()
            async for chunk in resp.aiter_raw():
                for event in reader.feed(chunk):
                    last = event
        finally:
            await resp.aclose()
        return resp.status_code == 200 and last == b"[DONE]"

    try:
        yield streamed if stream else unary
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def raw_client(
    url: str, concurrency: int, stream: bool, max_tokens: int
) -> AsyncIterator[Call]:
    """The load generator's connection pool: the floor (no SSE parsing, no timeouts)."""
    port = int(url.rsplit(":", 1)[1])
    pool = ConnectionPool(HOST, port)
    raw = Target(
        "raw", HOST, port, Endpoint.CHAT.path, body(stream, max_tokens), stream
    ).raw_request()

    async def call() -> bool:
        ok, _, _ = await fetch(pool, raw, stream)
        return ok

    try:
        yield call
    finally:
        pool.close()


FACTORIES = {
    "httpx": httpx_client,
    "aiohttp": aiohttp_client,
    "gateway": gateway_client,
    "http": http_client,
    "httpx2": httpx2_client,
    "raw": raw_client,
}


def available_clients() -> tuple[str, ...]:
    """The clients importable here (aiohttp and httpx2 are optional)."""
    import importlib.util

    return tuple(
        c for c in FACTORIES if c not in ("aiohttp", "httpx2") or importlib.util.find_spec(c)
    )
