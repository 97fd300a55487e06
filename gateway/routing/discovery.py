"""Engine replica discovery: one ``engines[]`` entry, many replicas.

In Kubernetes a ClusterIP Service hides its pods behind one address, so load-aware
routing, balancing and breakers would each see a random pod. An entry with
``discover: dns`` names a *headless* Service instead (``url:
http://engine-small-headless:8000``): its A/AAAA records are resolved at start and every
``discover_interval_s``, and each address becomes its own engine in the pool (named
``ENTRY-ADDRESS-PORT``, with the entry's tier, model and limits). A replica that leaves
DNS is retired (no new requests; those it has finish) and forgotten once idle; a new one
is added. A failed lookup keeps the replicas known so far: a DNS hiccup must not empty a
tier (the health monitor still ejects replicas that are really gone).

The resolver is injected (``Resolver``); :func:`resolve_dns` (``getaddrinfo``) is the
default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from gateway.config import EngineSettings
from gateway.routing.health import Breakers
from gateway.routing.pool import EnginePool
from gateway.upstream.transport import Transport

log = logging.getLogger(__name__)

#: ``(host, port)`` → the addresses it stands for, as ``(ip, port)`` pairs.
Resolver = Callable[[str, int], Awaitable[Sequence[tuple[str, int]]]]


async def resolve_dns(host: str, port: int) -> list[tuple[str, int]]:
    """Every address ``host`` resolves to (A and AAAA records), sorted, no duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({(str(info[4][0]), int(info[4][1])) for info in infos})


def default_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def replica_settings(entry: EngineSettings, ip: str, port: int) -> EngineSettings:
    """The settings of the replica at ``ip:port`` of a discovered entry."""
    assert entry.url is not None  # checked by EngineSettings for discover: dns
    parts = urlsplit(entry.url)
    host = f"[{ip}]" if ":" in ip else ip
    url = urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))
    name = f"{entry.name}-{ip.replace(':', '_')}-{port}"
    return entry.replica(name, url)


class EngineDiscovery:
    """Keeps the pool's replicas of every ``discover: dns`` entry in step with DNS."""

    def __init__(
        self,
        pool: EnginePool,
        client: Transport,
        breakers: Breakers,
        entries: Sequence[EngineSettings],
        resolver: Resolver = resolve_dns,
    ) -> None:
        self._pool = pool
        self._client = client
        self._breakers = breakers
        self._entries = [e for e in entries if e.discover == "dns"]
        self._resolver = resolver
        #: Entry name → names of its replicas now in the pool.
        self._members: dict[str, set[str]] = {e.name: set() for e in self._entries}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def active(self) -> bool:
        return bool(self._entries)

    def members(self, entry: str) -> set[str]:
        return set(self._members.get(entry, ()))

    async def refresh_once(self) -> None:
        """Resolve every entry once and apply the differences."""
        await asyncio.gather(*(self.refresh(e) for e in self._entries))
        await self.sweep()

    async def refresh(self, entry: EngineSettings) -> None:
        assert entry.url is not None
        host = urlsplit(entry.url).hostname or ""
        try:
            addresses = await self._resolver(host, default_port(entry.url))
        except (OSError, TimeoutError) as exc:
            log.warning(
                "engine discovery failed; keeping the known replicas",
                extra={"engine": entry.name, "error": type(exc).__name__},
            )
            return
        wanted = [replica_settings(entry, ip, port) for ip, port in addresses]
        wanted_names = {s.name: s for s in wanted}
        current = self._members[entry.name]
        for name in sorted(current - set(wanted_names)):
            self._pool.retire(name)
            log.info("engine replica left discovery", extra={"engine": name})
        for name in sorted(set(wanted_names) - current):
            self._pool.add(wanted_names[name])
            log.info("engine replica discovered", extra={"engine": name})
        self._members[entry.name] = set(wanted_names)

    async def sweep(self) -> None:
        """Close the connections of retired replicas that have finished their requests."""
        for engine in self._pool.sweep():
            self._breakers.forget(engine)
            await self._client.forget(engine)

    async def _run(self, entry: EngineSettings) -> None:
        while True:
            await asyncio.sleep(entry.discover_interval_s)
            with contextlib.suppress(Exception):
                await self.refresh(entry)
                await self.sweep()

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run(e)) for e in self._entries]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
