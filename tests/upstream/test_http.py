"""HttpTransport at the byte level: framing, keep-alive, flow control, broken engines.

The engine here is a raw asyncio server, so each test controls exactly which bytes go
out, in how many writes, and when the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.config import EngineSettings, TimeoutSettings
from gateway.errors import UpstreamError, UpstreamTimeoutError
from gateway.protocol import Endpoint
from gateway.upstream.connection import HIGH_WATER
from gateway.upstream.engine import Engine
from gateway.upstream.http import HttpTransport


@dataclass
class Seen:
    """What the engine saw: connections opened, request heads, disconnects."""

    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    disconnects: int = 0
    gone: asyncio.Event = field(default_factory=asyncio.Event)


#: Writes one answer; returns False to close the connection after it.
Answer = Callable[[asyncio.StreamWriter, int], Awaitable[bool]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        if length:
            await reader.readexactly(int(length[1]))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return head


@contextlib.asynccontextmanager
async def engine(answer: Answer) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()
    handlers: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while (head := await read_request(reader)) is not None:
                seen.heads.append(head)
                if not await answer(writer, len(seen.heads)):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test ended
        finally:
            seen.disconnects += 1
            seen.gone.set()
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def client(url: str, max_concurrency: int = 64, **timeouts: float) -> tuple[HttpTransport, Engine]:
    es = EngineSettings(
        name="e0", url=url, tier="small", model="m", max_concurrency=max_concurrency
    )
    return HttpTransport(TimeoutSettings(**timeouts)), Engine(es)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_content_length_body_split_across_many_reads() -> None:
    body = b'{"id":"x","choices":[' + b"7" * 3000 + b"]}"
    raw = ok(body)

    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        for i in range(0, len(raw), 97):  # a piece at a time, each its own TCP segment
            w.write(raw[i : i + 97])
            await w.drain()
            await asyncio.sleep(0.001)
        return True

    async with engine(answer) as (url, _):
        t, e = client(url)
        resp = await t.send(e, Endpoint.CHAT, b"{}", "rid")
        await t.aclose()
    assert resp.status == 200 and resp.body == body


async def test_chunked_body_and_stream_events() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(CHUNKED + chunk(b"data: 1\n\nda"))
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(chunk(b"ta: 2\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return True

    async with engine(answer) as (url, seen):
        t, e = client(url)
        resp = await t.send(e, Endpoint.CHAT, b"{}", "rid")
        assert resp.body == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        stream = await t.open_stream(e, Endpoint.CHAT, b"{}", "rid")
        events = [p async for batch in stream.batches() for p in batch]
        await stream.aclose()
        await t.aclose()
    assert events == [b"1", b"2", b"[DONE]"]
    assert seen.connections == 1  # the finished stream went back to the pool


async def test_sequential_requests_share_one_connection() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(ok(b'{"n":%d}' % n))
        return True

    async with engine(answer) as (url, seen):
        t, e = client(url)
        bodies = [(await t.send(e, Endpoint.CHAT, b"{}", f"r{i}")).body for i in range(5)]
        probe = await t.get(e, "/health", 1.0)
        await t.aclose()
    assert bodies == [b'{"n":%d}' % n for n in range(1, 6)]
    assert probe.status_code == 200 and probe.text == '{"n":6}'
    assert seen.connections == 1 and len(seen.heads) == 6
    head = seen.heads[0].lower()
    expected = (
        b"post /v1/chat/completions http/1.1",
        b"content-type: application/json",
        b"content-length: 2",
        b"x-request-id: r0",
        b"accept-encoding: identity",
    )
    assert all(line in head for line in expected)


async def test_engine_closing_between_requests_is_not_an_error() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(ok(b"{}"))
        await w.drain()
        return False  # closes the keep-alive connection after each answer

    async with engine(answer) as (url, seen):
        t, e = client(url)
        for _ in range(3):
            assert (await t.send(e, Endpoint.CHAT, b"{}", "rid")).status == 200
            await asyncio.sleep(0.02)  # the engine's FIN arrives while the connection idles
        await t.aclose()
    assert seen.connections == 3


async def test_connection_close_header_is_honoured() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(ok(b"{}", b"connection: close\r\n"))
        return True  # the engine keeps its end open: the client must not reuse it anyway

    async with engine(answer) as (url, seen):
        t, e = client(url)
        for _ in range(2):
            assert (await t.send(e, Endpoint.CHAT, b"{}", "rid")).status == 200
        await t.aclose()
    assert seen.connections == 2


async def test_engine_closing_mid_body_is_an_upstream_error() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await w.drain()
        return False

    async with engine(answer) as (url, _):
        t, e = client(url)
        with pytest.raises(UpstreamError, match="closed the connection unexpectedly") as exc:
            await t.send(e, Endpoint.CHAT, b"{}", "rid")
        await t.aclose()
    assert "127.0.0.1" not in str(exc.value)


async def test_engine_closing_mid_stream_is_an_upstream_error() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(CHUNKED + chunk(b"data: 1\n\n"))
        await w.drain()
        await asyncio.sleep(0.02)
        return False

    async with engine(answer) as (url, _):
        t, e = client(url)
        stream = await t.open_stream(e, Endpoint.CHAT, b"{}", "rid")
        got: list[bytes] = []
        with pytest.raises(UpstreamError, match="closed the connection unexpectedly"):
            async for batch in stream.batches():
                got.extend(batch)
        await stream.aclose()
        await t.aclose()
    assert got == [b"1"]


async def test_garbage_is_an_invalid_response() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(b"SMTP ready\r\n\r\n")
        return True

    async with engine(answer) as (url, seen):
        t, e = client(url)
        with pytest.raises(UpstreamError, match="invalid HTTP response"):
            await t.send(e, Endpoint.CHAT, b"{}", "rid")
        await asyncio.wait_for(seen.gone.wait(), 2)  # and the connection was dropped
        await t.aclose()


async def test_a_slow_reader_pauses_the_socket() -> None:
    data = (b"data: " + b"t" * 1000 + b"\n\n") * 64
    total = 256 * len(data)  # 16 MB
    sent = 0

    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        nonlocal sent
        w.write(CHUNKED)
        while sent < total:
            w.write(chunk(data))
            sent += len(data)
            await w.drain()  # blocks once the client stops reading
        w.write(b"0\r\n\r\n")
        return True

    async with engine(answer) as (url, _):
        t, e = client(url)
        stream = await t.open_stream(e, Endpoint.CHAT, b"{}", "rid")
        await asyncio.sleep(0.3)  # the consumer lags
        assert stream.paused
        assert stream.buffered <= HIGH_WATER + 512 * 1024  # one socket read past the mark
        assert sent < total // 2  # the engine was held back by TCP, not buffered here
        received = 0
        async for piece in stream:
            received += len(piece)
        await stream.aclose()
        await t.aclose()
    assert received == total


async def test_stream_closed_after_done_keeps_its_connection() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(CHUNKED + chunk(b"data: 1\n\ndata: [DONE]\n\n"))
        await w.drain()
        await asyncio.sleep(0.05)  # the final chunk comes after the reader has stopped
        w.write(b"0\r\n\r\n")
        return True

    async with engine(answer) as (url, seen):
        t, e = client(url)
        for _ in range(2):
            stream = await t.open_stream(e, Endpoint.CHAT, b"{}", "rid")
            async for batch in stream.batches():
                if b"[DONE]" in batch:
                    break
            await stream.aclose()
            await asyncio.sleep(0.1)
        await t.aclose()
    assert seen.connections == 1 and len(seen.heads) == 2


async def test_unary_total_timeout_drops_the_connection() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return True

    async with engine(answer) as (url, seen):
        t, e = client(url, total_s=0.1)
        with pytest.raises(UpstreamTimeoutError, match="total time"):
            await t.send(e, Endpoint.CHAT, b"{}", "rid")
        await t.aclose()
    assert seen.connections == 1


async def test_cancelled_request_drops_the_connection() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(CHUNKED)
        await w.drain()
        while True:  # an endless generation: ends only when the client goes away
            await asyncio.sleep(0.01)
            w.write(chunk(b"data: x\n\n"))
            await w.drain()

    async with engine(answer) as (url, seen):
        t, e = client(url)
        task = asyncio.create_task(t.send(e, Endpoint.CHAT, b"{}", "rid"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(seen.gone.wait(), 2)
        await t.aclose()


async def test_the_pool_is_bounded_and_waiters_get_connections() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.05)
        w.write(ok(b"{}"))
        return True

    async with engine(answer) as (url, seen):
        t, e = client(url, max_concurrency=1)  # at most 1 + 16 connections
        results = await asyncio.gather(
            *(t.send(e, Endpoint.CHAT, b"{}", f"r{i}") for i in range(40))
        )
        await t.aclose()
    assert all(r.status == 200 for r in results)
    assert seen.connections == 17 and len(seen.heads) == 40


async def test_forget_closes_idle_connections() -> None:
    async def answer(w: asyncio.StreamWriter, n: int) -> bool:
        w.write(ok(b"{}"))
        return True

    async with engine(answer) as (url, seen):
        t, e = client(url)
        await t.send(e, Endpoint.CHAT, b"{}", "rid")
        assert seen.disconnects == 0
        await t.forget(e)
        await asyncio.wait_for(seen.gone.wait(), 2)
        assert seen.disconnects == 1
        await t.aclose()
