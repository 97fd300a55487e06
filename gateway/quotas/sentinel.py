"""The quota link to a Redis behind Sentinel (``redis+sentinel://`` URLs).

It follows Redis's guidelines for Sentinel clients:

1. **Find the primary.** Each (re)connection asks the sentinels in turn for
   ``SENTINEL get-master-addr-by-name <service>``; the first to answer with an address
   wins and is asked first next time.
2. **Verify it.** After connecting (and the handshake), ``ROLE`` must say ``master``: a
   sentinel that has not yet seen the failover may name the old primary, which may be
   back as a replica. Anything else drops the connection (:class:`LinkError`).
3. **Ask again when it moves.** A lost connection (the primary died; Sentinel also
   closes the clients of a demoted primary) or an error reply saying the node is no
   longer the primary (``READONLY``, ``MASTERDOWN``, seen by the store at its error
   boundary, :meth:`RedisLink.note_errors`) drops the connection; the next call asks
   the sentinels again. There is no retry loop here: the calls that fail meanwhile fail
   fast (refused connections, or the watchdog's ``quotas.redis_timeout_s``), the
   breaker in :mod:`gateway.quotas.fallback` opens, the failure policy applies, and its
   half-open probe finds the new primary once the sentinels have promoted one. Asking
   the sentinels is bounded by the connect timeout, like any connection.

How long the failure policy applies: Sentinel's ``down-after-milliseconds`` plus its
election and promotion (about a second on a quiet network), plus at most
``quotas.breaker_open_s`` until the next probe.

**Writes a failover could lose.** Redis replicates asynchronously: a reservation or a
settlement the old primary confirmed in its last moments may not have reached the
replica that is promoted, and a lost write errs on the admitting side (a hold or a
charge that vanishes). With ``?wait_replicas=N`` the store sends ``WAIT N <timeout>``
behind each batch in the same round trip (no extra one; the reply comes once N replicas
have the writes), and a batch not confirmed in time counts as failed: a reservation is
released and refused per the failure policy, a settlement is replayed (idempotent by
hold id). The price: replication latency on every quota call, and with fewer than N
replicas up the store is unavailable (budgets fail closed). Without it, what can be lost
is what was confirmed within the replication lag before the crash (sub-millisecond on a
LAN; ``min-replicas-max-lag`` on the primary bounds it in seconds).
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis

from gateway.quotas.link import LinkError, RedisLink, ReplyError, _Protocol
from gateway.quotas.urls import RedisTarget, SentinelTarget


class SentinelLink(RedisLink):
    """A :class:`RedisLink` that finds the primary through the sentinels."""

    def __init__(
        self,
        url: str | SentinelTarget,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        max_in_flight: int = 4096,
    ) -> None:
        target = url if isinstance(url, SentinelTarget) else SentinelTarget.parse(url)
        super().__init__(
            target.primary,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_in_flight=max_in_flight,
        )
        self.sentinel = target
        self._order = list(target.sentinels)
        #: Where the current (or last) connection went: the primary as last found.
        self.primary_address: tuple[str, int] | None = None

    @property
    def wait_replicas(self) -> int:
        return self.sentinel.wait_replicas

    async def _locate(self) -> RedisTarget:
        host, port = await self.ask_sentinels()
        self.primary_address = (host, port)
        return self._target.at(host, port)

    async def ask_sentinels(self) -> tuple[str, int]:
        """The primary's address as the first sentinel that knows it says."""
        problems: list[str] = []
        for i, (host, port) in enumerate(list(self._order)):
            try:
                reply = await self._ask(host, port)
            except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
                problems.append(f"{host}:{port}: {type(exc).__name__}")
                continue
            if isinstance(reply, ReplyError):
                problems.append(f"{host}:{port}: {reply}")
                continue
            if not reply:
                problems.append(f"{host}:{port}: does not know the primary")
                continue
            if i:  # the one that answered goes first next time
                self._order.insert(0, self._order.pop(i))
            return _text(reply[0]), int(reply[1])
        raise LinkError("No sentinel named the primary (" + "; ".join(problems) + ").")

    async def _ask(self, host: str, port: int) -> Any:
        """One short-lived connection to a sentinel; bounded by the command timeout."""
        s = self.sentinel
        commands: list[tuple[Any, ...]] = []
        if s.sentinel_password is not None:
            user = s.sentinel_username
            commands.append(
                ("AUTH", user, s.sentinel_password) if user else ("AUTH", s.sentinel_password)
            )
        commands.append(("SENTINEL", "get-master-addr-by-name", s.service))
        async with asyncio.timeout(self._timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"".join(hiredis.pack_command(c) for c in commands))
                parser = hiredis.Reader(replyError=ReplyError)
                replies: list[Any] = []
                while len(replies) < len(commands):
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionResetError("the sentinel closed the connection")
                    parser.feed(data)
                    while (reply := parser.gets()) is not False:
                        replies.append(reply)
            finally:
                writer.close()
        return next((r for r in replies if isinstance(r, ReplyError)), replies[-1])

    async def _verify(self, proto: _Protocol) -> None:
        (role,) = await asyncio.gather(*self._send([("ROLE",)], proto))
        name = role[0] if isinstance(role, list) and role else role
        if _text(name) != "master":
            proto.fail(LinkError("The node the sentinels named is not the primary."))
            raise LinkError(f"The node the sentinels named is a {_text(name)}, not the primary.")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
