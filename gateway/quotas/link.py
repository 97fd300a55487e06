"""A lean, multiplexed Redis connection for the request path.

Why not redis-py's asyncio client here: each call checks a connection out of a pool,
packs the command in Python, arms a timeout and writes on its own. At 300 requests/s
on 2 cores that came to about 0.2 ms of CPU per quota check on top of the round trip,
and the 0.5 ms budget for the whole check was missed (``bench/results/quotas.md`` has
the figures side by side). This module keeps redis-py's URL format and its C parser
(``hiredis``, redis-py's own accelerator), and changes how calls meet the socket:

* **One connection, many calls in flight.** Redis answers a connection's commands in
  order, so each call appends a future to a FIFO and the reader resolves them as
  replies arrive. No pool, no checkout.
* **One write per event-loop turn.** Commands issued in the same turn are packed into
  one buffer and sent with one ``write`` (a syscall costs ~70 µs on the hosts we
  measured). Under load, concurrent reservations share a round trip for free.
* **A deadline per connection, not per call.** A watchdog fails the connection when its
  oldest call has waited longer than the timeout; every waiting call then fails with
  :class:`LinkError` and the next call reconnects. A slow Redis is an unhealthy Redis
  for every call on that connection anyway, and one timer per call is what we saved.

Commands sent together with :meth:`RedisLink.call_many` are written contiguously, so
a ``MULTI``/``EXEC`` block is never interleaved with other callers' commands.

Errors: Redis error replies come back as :class:`ReplyError` (from ``call``, raised; from
``call_many``, returned in place); everything else (refused, reset, timeout, protocol)
is :class:`LinkError`. Both are translated by the quota store at its boundary.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis

from gateway.quotas.urls import RedisTarget

__all__ = ["FAILOVER_CODES", "LinkError", "RedisLink", "RedisTarget", "ReplyError"]

#: Error replies that mean "this node is no longer the primary you want": the connection
#: is dropped, so the next call finds the primary again (see :meth:`RedisLink.note_errors`).
FAILOVER_CODES = frozenset({"READONLY", "MASTERDOWN", "UNBLOCKED"})


class LinkError(ConnectionError):
    """The connection failed, timed out or was closed; the call's outcome is unknown."""


class ReplyError(Exception):
    """Redis answered with an error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


class _Protocol(asyncio.Protocol):
    """Feeds bytes to hiredis and hands each reply to the oldest waiting future."""

    def __init__(self, on_lost: Callable[[_Protocol], None]) -> None:
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.buffer: list[bytes] = []
        self.flush_armed = False
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        reader, waiters = self.reader, self.waiters
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not waiters:
                    raise hiredis.ProtocolError("reply without a request")
                fut = waiters.popleft()[0]
                if not fut.done():
                    fut.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(LinkError(f"Redis protocol error: {exc}"))

    def flush(self) -> None:
        """Write what this event-loop turn queued, in one write."""
        self.flush_armed = False
        if self.buffer and self.transport is not None:
            self.transport.write(b"".join(self.buffer))
        self.buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(LinkError("Redis closed the connection."))

    def fail(self, exc: LinkError) -> None:
        """Fail every waiting call and drop the connection (idempotent)."""
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.buffer.clear()
        while self.waiters:
            fut = self.waiters.popleft()[0]
            if not fut.done():
                fut.set_exception(exc)
        self._on_lost(self)


class RedisLink:
    """One multiplexed connection to one Redis, reconnected on demand."""

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        max_in_flight: int = 4096,
    ) -> None:
        target = url if isinstance(url, RedisTarget) else RedisTarget.parse(url)
        self._target = target
        self._hello: list[tuple[Any, ...]] = []
        if target.password is not None:
            user = target.username
            self._hello.append(
                ("AUTH", user, target.password) if user else ("AUTH", target.password)
            )
        if target.db:
            self._hello.append(("SELECT", target.db))
        self._timeout_s = timeout_s
        self._max_in_flight = max_in_flight
        self._connect_timeout_s = connect_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def wait_replicas(self) -> int:
        """Replicas that must confirm each batch of writes (0 here: see Sentinel's)."""
        return 0

    @property
    def connected(self) -> bool:
        return self._proto is not None and self._proto.transport is not None

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply; an error reply is raised."""
        fut = self._send([args], await self._ready())[0]
        reply = await fut
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands back to back; replies in order, error replies in place."""
        if not commands:
            return []
        futs = self._send(commands, await self._ready())
        # Replies come in order and a failure fails every waiter: once the last call is
        # answered, all are (cheaper than gather, which costs a callback per future).
        try:
            await futs[-1]
        except BaseException:
            for fut in futs:
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning
            raise
        return [fut.result() for fut in futs]

    def send_now(self, commands: Sequence[Sequence[Any]]) -> list[asyncio.Future[Any]] | None:
        """Write commands at once, with whatever this loop turn queued before them, and
        return their futures (replies in order, error replies in place); None when not
        connected. For a caller that must have the bytes on their way before it goes on
        (a settlement, before the client hears the answer), not wait for the reply."""
        proto = self._proto
        if proto is None or proto.transport is None or not commands:
            return None
        return self._send(commands, proto, at_once=True)

    def note_errors(self, errors: Sequence[ReplyError]) -> None:
        """Error replies seen by the caller: one saying this node stopped being the
        primary (READONLY after a failover, ...) drops the connection, and the next call
        connects again (to the new primary, where the link can find it). Called on the
        error path only: the hot path pays nothing."""
        if any(e.code in FAILOVER_CODES for e in errors):
            self.reset("Redis is no longer the primary.")

    def reset(self, reason: str) -> None:
        """Drop the connection; waiting calls fail with ``reason``, the next reconnects."""
        if self._proto is not None:
            self._proto.fail(LinkError(reason))

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._proto is not None:
            self._proto.fail(LinkError("The connection was closed."))

    # ------------------------------------------------------------------ plumbing

    async def _ready(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            return proto
        if self._closed:
            raise LinkError("The connection was closed.")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(self._connected)
        # Shielded: one caller's cancellation must not abort the others' connect.
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[_Protocol]) -> None:
        self._connecting = None
        # exception() also marks a failure as retrieved (callers may all be gone).
        if not task.cancelled() and task.exception() is None:
            self._proto = task.result()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        proto = _Protocol(self._lost)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                t = await self._locate()
                if t.path is not None:
                    await loop.create_unix_connection(lambda: proto, t.path)
                else:
                    await loop.create_connection(lambda: proto, t.host, t.port, ssl=t.ssl)
                if self._hello:
                    for reply in await asyncio.gather(*self._send(self._hello, proto)):
                        if isinstance(reply, ReplyError):
                            proto.fail(LinkError(f"Redis refused the handshake: {reply}"))
                            raise LinkError(f"Redis refused the handshake: {reply}")
                await self._verify(proto)
        except TimeoutError:
            proto.fail(LinkError("Connecting to Redis timed out."))
            raise LinkError("Connecting to Redis timed out.") from None
        except OSError as exc:
            raise LinkError(f"Cannot connect to Redis: {exc.strerror or exc}") from None
        return proto

    async def _locate(self) -> RedisTarget:
        """Where to connect (a subclass may ask someone: Sentinel)."""
        return self._target

    async def _verify(self, proto: _Protocol) -> None:
        """Check the new connection before calls use it (a subclass checks the role)."""

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    def _send(
        self, commands: Sequence[Sequence[Any]], proto: _Protocol, *, at_once: bool = False
    ) -> list[Any]:
        """Queue commands and their futures; written at the end of this loop turn, or at
        once with ``at_once`` (with whatever the turn queued before them)."""
        waiters = proto.waiters
        if len(waiters) + len(commands) > self._max_in_flight:
            raise LinkError("Too many Redis calls in flight.")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futs = []
        pack = hiredis.pack_command
        buf = proto.buffer
        for args in commands:
            buf.append(pack(tuple(args)))
            fut = loop.create_future()
            waiters.append((fut, now))
            futs.append(fut)
        if at_once:
            proto.flush()
        elif not proto.flush_armed:
            proto.flush_armed = True
            loop.call_soon(proto.flush)
        if self._watchdog is None:
            self._arm_watchdog(loop)
        return futs

    def _arm_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = loop.call_later(self._timeout_s / 4, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the connection if its oldest call has waited past the timeout."""
        self._watchdog = None
        proto = self._proto
        if proto is None or not proto.waiters:
            return
        if time.monotonic() - proto.waiters[0][1] > self._timeout_s:
            proto.fail(LinkError("Redis did not answer in time."))
            return
        self._arm_watchdog(loop)
