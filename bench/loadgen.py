"""An open-loop HTTP/1.1 load generator on raw asyncio sockets, for uvloop.

Requests leave on a fixed schedule (uniform or Poisson arrivals at ``rate``), whether or
not earlier ones have answered, and each is timed from its *intended* send time, so a
stall in the system under test shows up as latency instead of as fewer requests
(no coordinated omission).

The client is as cheap as an HTTP client gets in Python, so that it is not the thing
being measured: one :class:`asyncio.Protocol` per keep-alive connection, httptools (the
C parser uvicorn uses) for responses, the request bytes built once, and no task, future
or timer per request on the open-loop path; a response completes its request from the
protocol callback. ``bench.upstream_clients`` measures it against httpx and aiohttp.

Timing rules:

* latency = response complete - min(intended, sent). A request sent late (the loop was
  busy) is charged from its intended time; one sent up to a timer tick early (uvloop
  timers have 1 ms resolution) is charged from when it really left.
* time to first token (streams) = the first body bytes of the response, by the same
  rule. Both the stand-in and the gateway send the first body bytes with the first token.
* timestamps are ``time.perf_counter()`` taken when the loop hands the socket data to
  the protocol; ``loop.time()`` is not used (uvloop's has millisecond resolution).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
import numpy as np

from bench.phase import PhaseResult, error_code

#: How early a request may leave rather than sleep for less than a timer tick.
EARLY_S = 0.001
#: Body bytes kept per response to check how it ended (``[DONE]`` for streams).
TAIL_BYTES = 64

perf = time.perf_counter


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to load, with its request prebuilt as bytes."""

    name: str
    host: str
    port: int
    path: str
    body: bytes
    stream: bool
    headers: tuple[tuple[str, str], ...] = ()

    def raw_request(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class _Sink(Protocol):
    def complete(self, index: int, conn: Connection, ok: bool, why: str) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.sink: _Sink | None = None
        self.index = -1
        self.stream = False
        self.now = 0.0
        self.first = 0.0
        self.done = 0.0
        self.status = 0
        self.expect = 200
        self.tail = b""
        self.body_bytes = 0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.now = perf()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(False, "bad_response")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.index >= 0:
            self._finish(False, "connection_lost")

    # -- httptools callbacks
    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = self.now
        self.body_bytes += len(body)
        self.tail = (self.tail + body)[-TAIL_BYTES:]

    def on_message_complete(self) -> None:
        self.done = self.now
        self.status = self._parser.get_status_code()
        if not self._parser.should_keep_alive():
            self.closed = True
        right = self.status == self.expect
        ok = right and (not self.stream or self.status != 200 or b"[DONE]" in self.tail)
        self._finish(ok, "" if ok else ("bad_stream" if right else f"http_{self.status}"))

    # -- requests
    def send(self, sink: _Sink, index: int, raw: bytes, stream: bool, expect: int = 200) -> None:
        """Write one request; its answer is right when its status is ``expect`` (a
        refusal the test wants, such as 401, keeps the connection for the next request)."""
        assert self.transport is not None and self.index < 0
        self.sink, self.index, self.stream, self.expect = sink, index, stream, expect
        self.first = self.done = 0.0
        self.tail = b""
        self.body_bytes = 0
        self.transport.write(raw)

    def _finish(self, ok: bool, why: str) -> None:
        sink, index = self.sink, self.index
        self.sink, self.index = None, -1
        if sink is not None and index >= 0:
            if not ok:
                self.closed = True
            sink.complete(index, self, ok, why)
            if self.closed:
                self.abort()
            else:
                self._pool.give(self)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class ConnectionPool:
    """Keep-alive connections to one host:port, reused last-in first-out."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        self.opened = 0

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        self.opened += 1
        self._all.add(conn)
        return conn

    async def warm(self, n: int) -> None:
        """Open connections until ``n`` are idle."""
        conns = await asyncio.gather(*(self.connect() for _ in range(n - len(self._idle))))
        for c in conns:
            self.give(c)

    def take(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._all.discard(conn)
        return None

    def give(self, conn: Connection) -> None:
        if conn.closed:
            self._all.discard(conn)
        else:
            self._idle.append(conn)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        for conn in self._all:
            conn.abort()
        self._all.clear()
        self._idle.clear()


# ---------------------------------------------------------------------------- open loop

Progress = Callable[[dict[str, Any]], None]


class _Run:
    """Bookkeeping of one phase; the connections report completions to it."""

    def __init__(self, pool: ConnectionPool, target: Target, n: int) -> None:
        self.pool = pool
        self.raw = target.raw_request()
        self.stream = target.stream
        self.n = n
        self.intended = np.zeros(n)
        self.sent = [0.0] * n
        self.first = [0.0] * n
        self.done = [0.0] * n
        self.ok = [False] * n
        self.status = [0] * n
        self.finished = 0
        self.errors: dict[str, int] = {}
        self.codes: dict[int, str] = {}
        self.all_done = asyncio.Event()
        self.scheduled_all = False
        self.pending_connects: set[asyncio.Task[None]] = set()
        self.in_flight: dict[int, Connection] = {}
        self.window: list[float] = []

    def fire(self, index: int) -> None:
        conn = self.pool.take()
        if conn is None:
            task = asyncio.get_running_loop().create_task(self._fire_new(index))
            self.pending_connects.add(task)
            task.add_done_callback(self.pending_connects.discard)
            return
        self._send(conn, index)

    async def _fire_new(self, index: int) -> None:
        try:
            conn = await self.pool.connect()
        except OSError:
            self._record_failure(index, "connect_failed")
            return
        self._send(conn, index)

    def _send(self, conn: Connection, index: int) -> None:
        self.in_flight[index] = conn
        self.sent[index] = perf()
        conn.send(self, index, self.raw, self.stream)

    def complete(self, index: int, conn: Connection, ok: bool, why: str) -> None:
        self.in_flight.pop(index, None)
        self.done[index] = conn.done
        if ok:
            self.first[index] = conn.first
            self.ok[index] = True
            self.status[index] = 200
            self.window.append(conn.done - min(self.intended[index], self.sent[index]))
        else:
            self.errors[why] = self.errors.get(why, 0) + 1
            if conn.done:  # an answer, not a lost connection
                self.status[index] = conn.status
                self.codes[index] = f"{conn.status} {error_code(conn.tail)}"
        self._count()

    def _record_failure(self, index: int, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1
        self._count()

    def _count(self) -> None:
        self.finished += 1
        if self.scheduled_all and self.finished >= self.n:
            self.all_done.set()

    def time_out_the_rest(self) -> None:
        for index, conn in list(self.in_flight.items()):
            self.in_flight.pop(index, None)
            conn.sink = None
            conn.index = -1
            conn.abort()
            self._record_failure(index, "timeout")
        for task in list(self.pending_connects):
            task.cancel()


async def open_loop(
    pool: ConnectionPool,
    target: Target,
    *,
    rate: float,
    duration: float,
    arrivals: str = "uniform",
    seed: int = 0,
    drain_timeout: float = 30.0,
    progress: Progress | None = None,
) -> PhaseResult:
    """Send ``rate`` x ``duration`` requests on schedule and wait for the answers."""
    n = max(1, int(rate * duration))
    if arrivals == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
        offsets = np.concatenate(([0.0], np.cumsum(gaps)[:-1]))
    elif arrivals == "uniform":
        offsets = np.arange(n) / rate
    else:
        raise ValueError(f"arrivals must be uniform or poisson, not {arrivals!r}")
    run = _Run(pool, target, n)
    opened_before = pool.opened
    start = perf() + 0.005
    run.intended[:] = start + offsets
    due = run.intended.tolist()
    ticker = (
        asyncio.get_running_loop().create_task(_tick(run, start, progress)) if progress else None
    )
    i = 0
    try:
        while i < n:
            now = perf()
            wait = due[i] - now
            if wait > EARLY_S:
                await asyncio.sleep(wait - EARLY_S / 2)
                continue
            horizon = now + EARLY_S
            while i < n and due[i] <= horizon:
                run.fire(i)
                i += 1
        run.scheduled_all = True
        if run.finished >= n:
            run.all_done.set()
        try:
            await asyncio.wait_for(run.all_done.wait(), drain_timeout)
        except TimeoutError:
            run.time_out_the_rest()
    finally:
        if ticker is not None:
            ticker.cancel()
    wall = perf() - start
    return PhaseResult(
        target=target.name,
        rate=rate,
        duration=duration,
        intended=run.intended,
        sent=np.array(run.sent),
        first=np.array(run.first),
        done=np.array(run.done),
        ok=np.array(run.ok, dtype=bool),
        errors=dict(run.errors),
        new_connections=pool.opened - opened_before,
        wall_s=wall,
        status=np.array(run.status, dtype=np.int16),
        codes=run.codes,
    )


async def _tick(run: _Run, start: float, progress: Progress) -> None:
    second = 1
    while True:
        await asyncio.sleep(max(0.0, start + second - perf()))
        second += 1
        window, run.window = run.window, []
        snap: dict[str, Any] = {
            "elapsed": perf() - start,
            "sent": sum(1 for s in run.sent if s),
            "finished": run.finished,
            "in_flight": len(run.in_flight),
            "errors": sum(run.errors.values()),
            "p50_ms": None,
            "p99_ms": None,
        }
        if window:
            p50, p99 = np.percentile(window, (50, 99)) * 1000
            snap["p50_ms"], snap["p99_ms"] = float(p50), float(p99)
        progress(snap)


# ---------------------------------------------------------------------------- closed loop


class _Waiter:
    """Completes a future when one request on a connection answers (closed-loop use)."""

    __slots__ = ("future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[tuple[bool, float, float]] = loop.create_future()

    def complete(self, index: int, conn: Connection, ok: bool, why: str) -> None:
        if not self.future.done():
            self.future.set_result((ok, conn.first, conn.done))


async def fetch(pool: ConnectionPool, raw: bytes, stream: bool) -> tuple[bool, float, float]:
    """One request on a pooled connection: (ok, first body bytes at, done at)."""
    conn = pool.take() or await pool.connect()
    waiter = _Waiter(asyncio.get_running_loop())
    conn.send(waiter, 0, raw, stream)
    return await waiter.future
