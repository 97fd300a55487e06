"""The Redis quota store's round trips: the connection, script calls, one error boundary.

Calls go over one multiplexed connection (:mod:`gateway.quotas.link`: why not
redis-py's pool is measured there), found through Sentinel
(:mod:`gateway.quotas.sentinel`) or one per Cluster primary
(:mod:`gateway.quotas.cluster`) as the URL says. Scripts are called by SHA and loaded
again when Redis lost them (a restart, a promoted replica). Link errors and error
replies are translated here, at one boundary, into :class:`QuotaStoreUnavailable`; the
failure policy lives in :mod:`gateway.quotas.fallback`. What the scripts do with the
keys is :mod:`gateway.quotas.redis`'s business.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.config import QuotaSettings
from gateway.errors import QuotaStoreUnavailable
from gateway.quotas.cluster import ClusterLink
from gateway.quotas.layout import Command, Scripts
from gateway.quotas.link import LinkError, RedisLink, ReplyError
from gateway.quotas.sentinel import SentinelLink
from gateway.quotas.urls import ClusterTarget, SentinelTarget, parse_url

#: The connection: one Redis (standalone, or found through Sentinel), or a Cluster.
Link = RedisLink | ClusterLink


def make_link(settings: QuotaSettings) -> Link:
    """One multiplexed connection (per primary, on a Cluster) with a short timeout and
    no retries: the breaker decides what to do. The URL's form picks the kind.

    Connecting gets a longer allowance than a command: on a busy host a handshake can
    be slow without Redis being unwell, and a Redis that is down refuses at once anyway.
    """
    assert settings.redis_url is not None
    t = settings.redis_timeout_s
    target = parse_url(settings.redis_url.get_secret_value())
    kw: dict[str, Any] = {
        "timeout_s": t,
        "connect_timeout_s": max(1.0, 4 * t),
        "max_in_flight": settings.redis_max_in_flight,
    }
    if isinstance(target, SentinelTarget):
        return SentinelLink(target, **kw)
    if isinstance(target, ClusterTarget):
        return ClusterLink(target, **kw)
    return RedisLink(target, **kw)


class RedisCalls:
    """Round trips to the quota store's Redis, each failure turned into
    :class:`QuotaStoreUnavailable` (see the module docstring)."""

    def __init__(self, link: Link, scripts: Scripts, *, timeout_s: float) -> None:
        self.link = link
        self.cluster = link if isinstance(link, ClusterLink) else None
        self.scripts = scripts
        #: Replicas that must confirm each batch (``WAIT``; Sentinel's ``wait_replicas``).
        self.wait = link.wait_replicas
        self._wait_ms = max(1, int(timeout_s * 500))

    async def ping(self) -> None:
        """Check the connection and load the scripts (so a burst finds them cached)."""
        await self.call([("SCRIPT", "LOAD", text) for text in self.scripts.texts.values()])

    async def eval(self, commands: list[Command]) -> list[Any]:
        """EVALSHA the scripts in one round trip; load them once if Redis lost them."""
        results = await self.call(commands, errors_in_place=True)
        errors = [r for r in results if isinstance(r, ReplyError)]
        if not errors:
            return results
        self.link.note_errors(errors)
        missing = [i for i, r in enumerate(results) if _noscript(r)]
        if missing:
            # Only the calls refused by NOSCRIPT go again: they never ran. The others
            # did (on a Cluster, a new primary may lack the scripts while the other
            # slots' primaries ran theirs), and a reservation must not run twice.
            await self.ping()
            again = await self.call([commands[i] for i in missing], errors_in_place=True)
            for i, reply in zip(missing, again, strict=True):
                results[i] = reply
            errors = [r for r in results if isinstance(r, ReplyError)]
        if errors:
            self.link.note_errors(errors)
            raise QuotaStoreUnavailable("The quota store failed.") from errors[0]
        return results

    async def call(
        self,
        commands: Sequence[Sequence[Any]],
        *,
        errors_in_place: bool = False,
        node: RedisLink | None = None,
    ) -> list[Any]:
        """Commands in one round trip (to ``node``, one Cluster primary, if given). Link
        failures, writes the replicas did not confirm (``wait_replicas``) and (unless
        ``errors_in_place``) error replies become :class:`QuotaStoreUnavailable`: the
        one translation point. Error replies saying the primary moved drop the
        connection, so the next call finds the new one (the caller reports those it
        keeps in place: :meth:`eval`)."""
        link = self.link if node is None else node
        if self.wait:
            commands = [*commands, ("WAIT", self.wait, self._wait_ms)]
        try:
            results = await link.call_many(commands)
        except LinkError as exc:
            raise QuotaStoreUnavailable("The quota store is unreachable.") from exc
        if self.wait:
            acked = results.pop()
            if not isinstance(acked, int) or acked < self.wait:
                raise QuotaStoreUnavailable("The quota store's replicas did not confirm.")
        if not errors_in_place:
            errors = [r for r in results if isinstance(r, ReplyError)]
            if errors:
                self.link.note_errors(errors)
                raise QuotaStoreUnavailable("The quota store failed.") from errors[0]
        return results

    async def scan(self, pattern: str) -> AsyncIterator[Any]:
        """Every key name matching ``pattern``, on every primary of a Cluster."""
        nodes: list[RedisLink | None] = [None]
        if self.cluster is not None:
            await self.cluster.refresh()
            nodes = list(self.cluster.primaries())  # every primary holds a share
        for node in nodes:
            cursor = 0
            while True:
                command = ("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
                ((cursor_raw, names),) = await self.call([command], node=node)
                cursor = int(cursor_raw)
                for name in names:
                    yield name
                if not cursor:
                    break


def _noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and reply.code == "NOSCRIPT"


def first_error(futs: list[asyncio.Future[Any]]) -> asyncio.Future[Any]:
    """One future for several replies: the first error reply, else the last reply."""
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(_: asyncio.Future[Any]) -> None:
        if out.done() or not all(f.done() for f in futs):
            return
        for f in futs:
            if f.cancelled() or f.exception() is not None or isinstance(f.result(), ReplyError):
                if f.cancelled():
                    out.cancel()
                else:
                    exc = f.exception()
                    out.set_result(f.result()) if exc is None else out.set_exception(exc)
                return
        out.set_result(futs[-1].result())

    for f in futs:
        f.add_done_callback(done)
    return out
