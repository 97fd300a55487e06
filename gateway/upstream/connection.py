"""Keep-alive HTTP/1.1 connections to one engine, for :mod:`gateway.upstream.http`.

A :class:`Connection` is an :class:`asyncio.Protocol` with an httptools response parser
(the C parser uvicorn uses). It carries one exchange at a time and keeps that exchange's
state on itself, so a request allocates no object here beyond one future per wait. The
parser calls back into it; the waiting coroutine reads the state when woken.

A :class:`ConnectionPool` holds one engine's connections: at most ``limit`` open (busy,
idle or connecting), idle ones reused last-in first-out (the warmest socket), any that
failed, were told ``connection: close`` or sat idle too long dropped.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

from gateway.upstream.errors import EngineConnectError, EngineConnectTimeout, InvalidResponseError

#: An idle connection older than this is closed rather than reused: uvicorn (vLLM's
#: server) closes idle keep-alive connections after 5 s, and reusing one it is closing
#: would fail a request that never reached it.
KEEPALIVE_S = 4.0
#: Body bytes buffered for a stream's consumer before the socket stops being read.
HIGH_WATER = 256 * 1024


class Connection(asyncio.Protocol):
    """One keep-alive connection to an engine, carrying one exchange at a time."""

    __slots__ = (
        "_parser", "body", "buffered", "busy", "closed", "complete", "counted", "draining", "error",
        "headers_done", "idle_since", "keep_alive", "loop", "paused", "pool", "status",
        "streaming", "transport", "waiter",
    )  # fmt: skip

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.busy = False
        self.counted = True
        self.idle_since = 0.0
        self.draining: asyncio.TimerHandle | None = None
        self._clear()

    def _clear(self) -> None:
        self.waiter: asyncio.Future[None] | None = None
        self.streaming = False
        self.status = 0
        self.headers_done = self.complete = False
        self.keep_alive = True
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.error: BaseException | None = None

    # -- the exchange, from the caller's side
    def start(self, request: bytes, streaming: bool) -> None:
        """Send ``request``; the answer arrives through the parser callbacks."""
        self._clear()
        self.busy, self.streaming = True, streaming
        assert self.transport is not None
        self.transport.write(request)

    async def until_headers(self) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            self.waiter = fut = self.loop.create_future()
            await fut

    async def until_complete(self) -> None:
        while not self.complete:
            if self.error is not None:
                raise self.error
            self.waiter = fut = self.loop.create_future()
            await fut

    def take_body(self) -> bytes:
        """The body bytes received so far (all of them once complete)."""
        parts = self.body
        if not parts:
            return b""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.body = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def expire(self) -> None:
        """A deadline passed (a ``loop.call_at`` timer): fail the exchange."""
        if not self.complete and self.error is None:
            self.error = TimeoutError()
            self._wake()

    def drain(self, within: float) -> None:
        """Let an answered stream's last bytes arrive, then pool it (or drop it at ``within``)."""
        self.take_body()
        self.draining = self.loop.call_later(within, self.pool.drop, self)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(InvalidResponseError(type(exc).__name__))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and not self.complete:
            self.error = exc if isinstance(exc, ConnectionError) else ConnectionResetError()
            self._wake()
        elif self.draining is not None:
            self.pool.drop(self)

    def _fail(self, exc: BaseException) -> None:
        if self.busy and not self.complete and self.error is None:
            self.error = exc
            self._wake()
        self.abort()

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        if not self.busy:  # bytes nobody asked for: this connection can't be trusted
            self._fail(InvalidResponseError("unsolicited response"))
            return
        self.status = self._parser.get_status_code()
        self.headers_done = True
        if self.streaming:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        if self.streaming:
            self.buffered += len(body)
            if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        if self.draining is not None:
            self.pool.release(self)
        else:
            self._wake()


class ConnectionPool:
    """One engine's keep-alive connections, at most ``limit`` open at once."""

    def __init__(self, url: str, limit: int, connect_s: float, api_key: str | None) -> None:
        self.loop = asyncio.get_running_loop()
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if tls else 80)
        self._ssl = ssl.create_default_context() if tls else None
        self._base = parts.path.rstrip("/")
        self.limit = limit
        self.connect_s = connect_s
        self.closed = False
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        auth = f"authorization: Bearer {api_key}\r\n" if api_key else ""
        self._fixed = (
            f"Host: {parts.netloc.rpartition('@')[2]}\r\naccept-encoding: identity\r\n{auth}"
        ).encode("latin-1")
        self._heads: dict[str, bytes] = {}

    # -- request bytes
    def post(
        self, path: str, body: bytes, request_id: str, traceparent: str | None = None
    ) -> bytes:
        """The whole request: a prefix built once per path, then length, ids and body."""
        head = self._heads.get(path)
        if head is None:
            head = self._heads[path] = (
                b"POST " + (self._base + path).encode("latin-1") + b" HTTP/1.1\r\n"
                + self._fixed + b"content-type: application/json\r\n"
            )  # fmt: skip
        if "\r" in request_id or "\n" in request_id:
            raise ValueError("request id with a line break")
        if traceparent is None:
            tail = b"content-length: %d\r\nx-request-id: %s\r\n\r\n" % (
                len(body), request_id.encode("latin-1"),
            )  # fmt: skip
        else:
            if "\r" in traceparent or "\n" in traceparent:
                raise ValueError("traceparent with a line break")
            tail = b"content-length: %d\r\nx-request-id: %s\r\ntraceparent: %s\r\n\r\n" % (
                len(body), request_id.encode("latin-1"), traceparent.encode("latin-1"),
            )  # fmt: skip
        return head + tail + body

    def get(self, path: str) -> bytes:
        target = (self._base + path).encode("latin-1")
        return b"GET " + target + b" HTTP/1.1\r\n" + self._fixed + b"\r\n"

    # -- connections
    async def acquire(self) -> Connection:
        """An idle connection, else a new one; waits (within connect_s) at the limit."""
        conn = self._take_idle()
        if conn is not None:
            return conn
        try:
            async with asyncio.timeout(self.connect_s):
                return await self._wait_or_connect()
        except TimeoutError:
            raise EngineConnectTimeout() from None
        except OSError as exc:
            raise EngineConnectError(type(exc).__name__) from None

    def _take_idle(self) -> Connection | None:
        idle, now = self._idle, self.loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                conn.busy = True
                return conn
            self._forget(conn)
        return None

    async def _wait_or_connect(self) -> Connection:
        while self._open >= self.limit:
            fut = self.loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the turn on
                raise
            conn = self._take_idle()
            if conn is not None:
                return conn
        self._open += 1
        try:
            _, conn = await self.loop.create_connection(
                lambda: Connection(self), self.host, self.port,
                ssl=self._ssl, server_hostname=self.host if self._ssl else None,
            )  # fmt: skip
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        if self.closed:
            conn.abort()
        conn.busy = True
        return conn

    def release(self, conn: Connection) -> None:
        """An exchange ended cleanly: keep the connection if it can carry another."""
        if conn.draining is not None:
            conn.draining.cancel()
            conn.draining = None
        if conn.closed or not conn.keep_alive or not conn.complete or self.closed:
            self.drop(conn)
            return
        conn.busy = False
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        self._wake_one()

    def drop(self, conn: Connection) -> None:
        """Close a connection whose exchange failed or was abandoned."""
        if conn.draining is not None:
            conn.draining.cancel()
            conn.draining = None
        conn.abort()
        self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        if conn.counted:  # count each connection out once
            conn.counted = False
            conn.busy = False
            conn.abort()
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        """Close the idle connections; busy ones close when their exchange ends."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._forget(conn)
