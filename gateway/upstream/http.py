"""The transport to real engines: a lean HTTP/1.1 keep-alive client.

A py-spy profile of a gateway worker put aiohttp's session, connector, request and
payload machinery at about 15% of the gateway's CPU per request. This client does only
what the gateway needs, on :mod:`gateway.upstream.connection`:

* request bytes built once per request from a prefix built once per (engine, path);
* one future per wait and one ``loop.call_at`` timer per deadline; no task, no
  ``asyncio.timeout`` on the unary path;
* response bodies with content-length or chunked framing (what vLLM's uvicorn sends);
* streams read with flow control: past ``HIGH_WATER`` unread bytes the socket is paused
  until the consumer catches up, and each read hands over everything buffered at once;
* an unfinished stream closed early drops its socket, so the engine aborts the request.

Time limits are those of :class:`~gateway.upstream.client.AiohttpTransport`: ``connect_s``
for a connection (or a free slot in the pool), ``total_s`` for a unary request,
``ttft_s`` until a stream's status and headers arrive, then
:func:`~gateway.upstream.sse.timed_batches`. Every failure goes through
:mod:`gateway.upstream.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.config import TimeoutSettings
from gateway.protocol import Endpoint
from gateway.upstream.connection import Connection, ConnectionPool
from gateway.upstream.engine import Engine
from gateway.upstream.errors import exceeded, translate_exception, translate_status
from gateway.upstream.sse import timed_batches
from gateway.upstream.transport import ProbeResponse, UpstreamResponse

#: An answered stream (its last event was ``[DONE]``) closed before the final chunk of
#: its body arrived waits this long for it, to keep its connection, before dropping it.
DRAIN_S = 1.0
_DONE = b"[DONE]\n\n"


class HttpStream:
    """An open streaming response; closing it unfinished drops the connection.

    Iterating it yields raw body bytes (everything buffered since the last read);
    :meth:`batches` yields the SSE payloads within the stream's time limits.
    """

    __slots__ = ("_conn", "_ended", "_saw_done", "_started", "_timeouts", "engine")

    def __init__(
        self, engine: Engine, conn: Connection, timeouts: TimeoutSettings, started: float
    ) -> None:
        self.engine = engine
        self._conn = conn
        self._timeouts = timeouts
        self._started = started
        self._ended = False
        self._saw_done = False

    def batches(self) -> AsyncIterator[list[bytes]]:
        tier = self.engine.tier
        return timed_batches(
            self, self._timeouts, self._started, tier, lambda e: translate_exception(tier, e)
        )

    def __aiter__(self) -> HttpStream:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while not self._ended:
            if conn.body:
                data = conn.take_body()
                self._saw_done = data.endswith(_DONE)
                return data
            if conn.complete:
                self._end()
                break
            if conn.error is not None:
                raise conn.error
            conn.waiter = fut = conn.loop.create_future()
            await fut
        raise StopAsyncIteration

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read (bounded by flow control)."""
        return 0 if self._ended else self._conn.buffered

    @property
    def paused(self) -> bool:
        """Whether the socket is paused because the reader lags."""
        return not self._ended and self._conn.paused

    def _end(self) -> None:
        self._ended = True
        self._conn.pool.release(self._conn)

    async def aclose(self) -> None:
        if self._ended:
            return
        self._ended = True
        conn = self._conn
        if conn.complete:
            conn.pool.release(conn)
        elif self._saw_done and conn.error is None and not conn.body:
            conn.drain(DRAIN_S)  # answered: only the end of the chunked body is missing
        else:
            conn.pool.drop(conn)  # unfinished: the engine sees the disconnect and aborts


class HttpTransport:
    """Pooled keep-alive HTTP/1.1 connections, one pool per engine.

    Pools are made lazily, inside the running loop, from the engine's own settings (so
    replicas found by discovery need no registration here).
    """

    def __init__(self, timeouts: TimeoutSettings) -> None:
        self._timeouts = timeouts
        self._pools: dict[str, ConnectionPool] = {}

    def _pool(self, engine: Engine) -> ConnectionPool:
        pool = self._pools.get(engine.name)
        if pool is None:
            e = engine.settings
            key = e.api_key.get_secret_value() if e.api_key is not None else None
            pool = ConnectionPool(engine.url, e.max_concurrency + 16, self._timeouts.connect_s, key)
            self._pools[engine.name] = pool
        return pool

    async def send(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> UpstreamResponse:
        """Forward a non-streaming request; raise a GatewayError on any failure."""
        pool = self._pool(engine)
        loop = pool.loop
        deadline = loop.time() + self._timeouts.total_s
        request = pool.post(endpoint.path, body, request_id, traceparent)
        conn = await self._start(engine, pool, request, False)
        timer = loop.call_at(deadline, conn.expire)
        try:
            await conn.until_complete()
        except BaseException as exc:
            pool.drop(conn)
            if isinstance(exc, TimeoutError):
                raise exceeded(engine.tier, "total time") from None
            if isinstance(exc, Exception):
                raise translate_exception(engine.tier, exc) from None
            raise
        finally:
            timer.cancel()
        status, content = conn.status, conn.take_body()
        pool.release(conn)
        if status >= 400:
            raise translate_status(engine.tier, status, content)
        return UpstreamResponse(status, content)

    async def open_stream(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> HttpStream:
        """Start a streaming request and return once the engine accepted it (status 200)."""
        pool = self._pool(engine)
        loop = pool.loop
        started = loop.time()
        request = pool.post(endpoint.path, body, request_id, traceparent)
        conn = await self._start(engine, pool, request, True)
        timer = loop.call_at(started + self._timeouts.ttft_s, conn.expire)
        try:
            await conn.until_headers()
            if conn.status >= 400:
                await conn.until_complete()  # the error body, for the engine's message
        except BaseException as exc:
            pool.drop(conn)
            if isinstance(exc, TimeoutError):
                if conn.status >= 400:
                    raise translate_status(engine.tier, conn.status, b"") from None
                raise exceeded(engine.tier, "time to first token") from None
            if isinstance(exc, Exception):
                raise translate_exception(engine.tier, exc) from None
            raise
        finally:
            timer.cancel()
        if conn.status >= 400:
            status, content = conn.status, conn.take_body()
            pool.release(conn)
            raise translate_status(engine.tier, status, content)
        return HttpStream(engine, conn, self._timeouts, started)

    async def _start(
        self, engine: Engine, pool: ConnectionPool, request: bytes, streaming: bool
    ) -> Connection:
        try:
            conn = await pool.acquire()
        except Exception as exc:
            raise translate_exception(engine.tier, exc) from None
        conn.start(request, streaming)
        return conn

    async def get(self, engine: Engine, path: str, timeout: float) -> ProbeResponse:
        """Probe helper for health checks and metrics scraping (any status is returned)."""
        pool = self._pool(engine)
        conn: Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await pool.acquire()
                conn.start(pool.get(path), False)
                await conn.until_complete()
        except BaseException as exc:
            if conn is not None:
                pool.drop(conn)
            if isinstance(exc, Exception):
                raise translate_exception(engine.tier, exc) from None
            raise
        assert conn is not None
        status, content = conn.status, conn.take_body()
        pool.release(conn)
        return ProbeResponse(status, content.decode("utf-8", "replace"))

    async def forget(self, engine: Engine) -> None:
        """Close a removed replica's idle connections (busy ones close when done)."""
        pool = self._pools.pop(engine.name, None)
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
