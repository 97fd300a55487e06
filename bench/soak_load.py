"""A long open-loop mixed load whose memory does not grow with its length.

:func:`bench.loadgen.open_loop` keeps a row per request (fine for a 10 s phase, 400 MB
for a 30-minute soak at 1,400/s). :class:`MixedLoad` uses the same connections
(:class:`bench.loadgen.Connection`: raw HTTP/1.1 keep-alive, httptools, no task per
request) but keeps only what the soak reports:

* per **time bin** (a minute in a long run), by *intended* send time: requests sent,
  right answers and errors per kind, and the latencies of the right answers (float32
  arrays: 4 bytes a request, about 10 MB for 30 minutes at 1,400/s);
* per **second** (the :class:`Sampler` callback): whatever the caller measures, e.g. the
  gateway's RSS, with the number of requests done;
* the requests in flight, which a client timeout bounds.

Requests leave on a fixed uniform schedule whether or not earlier ones answered, each
timed from its intended send time (no coordinated omission); a request unanswered
``timeout_s`` after it was due is aborted and counted as ``timeout``. The kinds come in
a fixed pseudo-random order drawn from their weights.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from bench.loadgen import EARLY_S, Connection, ConnectionPool

perf = time.perf_counter


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of request in the mix: its prebuilt bytes and the answer that is right."""

    name: str
    raw: bytes
    stream: bool
    expect: int = 200

    @property
    def generation(self) -> bool:
        """A request the engine answers (a refusal never reaches it)."""
        return self.expect == 200


def http_request(host: str, port: int, path: str, body: bytes, key: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Authorization: Bearer {key}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Bin:
    """What the requests *intended* in one time bin did."""

    start_s: float
    sent: int = 0
    right: dict[str, int] = field(default_factory=dict)
    #: ``"<kind> <why>"`` -> count (``timeout``, ``http_503``, ``bad_stream``...).
    errors: dict[str, int] = field(default_factory=dict)
    #: Seconds, right answers only, per kind (float32 once the bin is closed).
    latency: dict[str, array[float]] = field(default_factory=dict)
    ttft: dict[str, array[float]] = field(default_factory=dict)

    def latencies(self, kinds: tuple[str, ...] | None = None) -> np.ndarray:
        parts = [
            np.asarray(v, dtype=np.float64)
            for k, v in self.latency.items()
            if kinds is None or k in kinds
        ]
        return np.concatenate(parts) if parts else np.zeros(0)


#: Called once a second with (seconds since the start, requests finished, in flight).
Sampler = Callable[[float, int, int], None]


@dataclass
class LoadResult:
    """One run: its bins, totals per kind and the wall time."""

    rate: float
    duration_s: float
    bin_s: float
    bins: list[Bin]
    sent: dict[str, int]
    right: dict[str, int]
    errors: dict[str, int]
    wall_s: float
    connections_opened: int

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def answered(self, kinds: Mapping[str, Kind]) -> int:
        """Right answers to requests that reached the engine (200s)."""
        return sum(n for k, n in self.right.items() if kinds[k].generation)

    def latencies(self, kinds: tuple[str, ...] | None = None) -> np.ndarray:
        parts = [b.latencies(kinds) for b in self.bins]
        return np.concatenate(parts) if parts else np.zeros(0)


class MixedLoad:
    """One open-loop run of a weighted mix; the connections report to :meth:`complete`."""

    def __init__(
        self,
        pool: ConnectionPool,
        kinds: Mapping[str, Kind],
        weights: Mapping[str, float],
        *,
        rate: float,
        duration_s: float,
        bin_s: float,
        timeout_s: float = 10.0,
        seed: int = 7,
    ) -> None:
        if rate <= 0 or duration_s <= 0 or bin_s <= 0:
            raise ValueError("rate, duration_s and bin_s must be positive")
        self.pool, self.kinds = pool, dict(kinds)
        self.rate, self.duration_s, self.bin_s, self.timeout_s = rate, duration_s, bin_s, timeout_s
        names = [k for k in weights if weights[k] > 0]
        rng = random.Random(seed)
        #: The order kinds go in, cycled (4,096 draws: the shares hold within 1%).
        self.order = [
            self.kinds[k] for k in rng.choices(names, [weights[k] for k in names], k=4096)
        ]
        self.bins = [Bin(i * bin_s) for i in range(int(-(-duration_s // bin_s)))]
        self.sent = {k: 0 for k in self.kinds}
        self.right = {k: 0 for k in self.kinds}
        self.errors: dict[str, int] = {}
        self.finished = 0
        self.t0 = 0.0
        #: index -> (connection or None while it connects, kind, intended, sent at)
        self.in_flight: dict[int, tuple[Connection | None, Kind, float, float]] = {}
        self._idle = asyncio.Event()
        self._scheduled = False

    # ------------------------------------------------------------------ sending

    async def run(self, sampler: Sampler | None = None) -> LoadResult:
        opened = self.pool.opened
        self.t0 = perf() + 0.005
        ticker = asyncio.get_running_loop().create_task(self._tick(sampler))
        n = int(self.rate * self.duration_s)
        i = 0
        try:
            while i < n:
                now = perf()
                due = self.t0 + i / self.rate
                if due - now > EARLY_S:
                    await asyncio.sleep(due - now - EARLY_S / 2)
                    continue
                horizon = now + EARLY_S
                while i < n and self.t0 + i / self.rate <= horizon:
                    self._fire(i, self.t0 + i / self.rate)
                    i += 1
            self._scheduled = True
            if self.in_flight:
                self._idle.clear()
                try:
                    await asyncio.wait_for(self._idle.wait(), self.timeout_s + 1)
                except TimeoutError:
                    self._time_out(perf() + self.timeout_s + 1)
        finally:
            ticker.cancel()
        for b in self.bins:  # closed: keep the latencies compact
            b.latency = {k: array("f", v) for k, v in b.latency.items()}
            b.ttft = {k: array("f", v) for k, v in b.ttft.items()}
        return LoadResult(
            self.rate,
            self.duration_s,
            self.bin_s,
            self.bins,
            self.sent,
            self.right,
            self.errors,
            perf() - self.t0,
            self.pool.opened - opened,
        )

    def _fire(self, index: int, intended: float) -> None:
        kind = self.order[index % len(self.order)]
        self.sent[kind.name] += 1
        self._bin(intended).sent += 1
        conn = self.pool.take()
        if conn is None:
            self.in_flight[index] = (None, kind, intended, 0.0)
            asyncio.get_running_loop().create_task(self._connect_then_send(index))
            return
        self._send(conn, index, kind, intended)

    async def _connect_then_send(self, index: int) -> None:
        try:
            conn = await self.pool.connect()
        except OSError:
            entry = self.in_flight.pop(index, None)
            if entry is not None:
                self._failed(entry[1], entry[2], "connect_failed")
            return
        entry = self.in_flight.get(index)
        if entry is None:  # timed out while connecting
            self.pool.give(conn)
            return
        self._send(conn, index, entry[1], entry[2])

    def _send(self, conn: Connection, index: int, kind: Kind, intended: float) -> None:
        sent = perf()
        self.in_flight[index] = (conn, kind, intended, sent)
        conn.send(self, index, kind.raw, kind.stream, kind.expect)

    # ------------------------------------------------------------------ answers

    def complete(self, index: int, conn: Connection, ok: bool, why: str) -> None:
        entry = self.in_flight.pop(index, None)
        if entry is None:
            return
        _, kind, intended, sent = entry
        if not ok:
            self._failed(kind, intended, why)
            return
        start = min(intended, sent)
        b = self._bin(intended)
        self.right[kind.name] += 1
        b.right[kind.name] = b.right.get(kind.name, 0) + 1
        b.latency.setdefault(kind.name, array("d")).append(conn.done - start)
        if kind.stream and conn.first:
            b.ttft.setdefault(kind.name, array("d")).append(conn.first - start)
        self._count()

    def _failed(self, kind: Kind, intended: float, why: str) -> None:
        key = f"{kind.name} {why}"
        self.errors[key] = self.errors.get(key, 0) + 1
        b = self._bin(intended)
        b.errors[key] = b.errors.get(key, 0) + 1
        self._count()

    def _count(self) -> None:
        self.finished += 1
        if self._scheduled and not self.in_flight:
            self._idle.set()

    def _bin(self, intended: float) -> Bin:
        i = int((intended - self.t0) / self.bin_s)
        return self.bins[min(max(i, 0), len(self.bins) - 1)]

    def _time_out(self, now: float) -> None:
        """Abort every request due more than ``timeout_s`` before ``now`` (oldest first)."""
        for index in list(self.in_flight):
            conn, kind, intended, _ = self.in_flight[index]
            if now - intended < self.timeout_s:
                break  # the rest were due later
            del self.in_flight[index]
            if conn is not None:
                conn.sink, conn.index = None, -1
                conn.abort()
            self._failed(kind, intended, "timeout")

    async def _tick(self, sampler: Sampler | None) -> None:
        second = 1
        while True:
            await asyncio.sleep(max(0.0, self.t0 + second - perf()))
            second += 1
            self._time_out(perf())
            if sampler is not None:
                sampler(perf() - self.t0, self.finished, len(self.in_flight))
