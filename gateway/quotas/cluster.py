"""The quota link to Redis Cluster (``redis+cluster://`` URLs).

One :class:`~gateway.quotas.link.RedisLink` per primary, multiplexed as for a standalone
Redis, and a slot map:

* **Slot map.** ``CLUSTER SLOTS`` from any node that answers (the URL's seed nodes, then
  every primary seen), fetched on the first call and again whenever it may be stale: a
  ``MOVED`` reply, or a call that failed on a link error (a primary that died is replaced
  by a replica the cluster promotes; the new owner shows in the map).
* **Routing.** Each command goes to the primary serving the slot of its first key
  (``EVALSHA sha numkeys key ...``: the first of KEYS; otherwise the first argument). A
  ``MULTI`` ... ``EXEC`` block goes as one, to the slot of its first keyed command. A
  command without a key (``PING``, ``SCRIPT LOAD``) goes to every primary, and the reply
  is the first error, or the first node's reply; ``WAIT`` goes to the primaries the
  same batch wrote to, and its reply is the smallest. Commands for one primary keep their
  order and go in one write, so a settlement queued ahead of a reservation in the same
  slot runs first, as on a standalone Redis.
* **Redirections.** ``MOVED slot host:port``: the command is sent again to that node,
  and the map is fetched again. ``ASK slot host:port`` (a slot being migrated): sent
  again to that node behind ``ASKING``, map unchanged. At most ``MAX_REDIRECTS`` times;
  a transaction block is not redirected (its error reply stands; the map is refreshed).

Failover: a primary that dies fails its calls (refused, or the watchdog's
``quotas.redis_timeout_s``) until the cluster promotes a replica
(``cluster-node-timeout`` and an election); the breaker and failure policy in
:mod:`gateway.quotas.fallback` cover that time, and the first call after it refreshes
the map. Writes the dead primary confirmed but had not replicated are lost, as with
Sentinel without ``wait_replicas``: Redis Cluster replicates asynchronously.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

from gateway.quotas.link import LinkError, RedisLink, ReplyError
from gateway.quotas.urls import ClusterTarget

SLOTS = 16384
MAX_REDIRECTS = 3
#: Keys whose slot is remembered (hash tags repeat: one per API key and team).
_SLOT_CACHE_MAX = 65536

Address = tuple[str, int]


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(key: bytes | str) -> int:
    """Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag, or of the key."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc % SLOTS


def first_key(command: Sequence[Any]) -> Any | None:
    """The key a command is routed by, or None (keyless)."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL", "FCALL"):
        return command[3] if int(command[2]) > 0 else None
    if name in ("PING", "SCRIPT", "WAIT", "ASKING", "MULTI", "EXEC", "SCAN", "CLUSTER"):
        return None
    return command[1] if len(command) > 1 else None


class ClusterLink:
    """Routes calls to the primaries of a Redis Cluster by slot (see module docstring)."""

    def __init__(
        self,
        url: str | ClusterTarget,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        max_in_flight: int = 4096,
    ) -> None:
        self.target = url if isinstance(url, ClusterTarget) else ClusterTarget.parse(url)
        self._kw: dict[str, Any] = {
            "timeout_s": timeout_s,
            "connect_timeout_s": connect_timeout_s,
            "max_in_flight": max_in_flight,
        }
        self._links: dict[Address, RedisLink] = {}
        self._slots: list[Address | None] = []
        self._stale = True
        self._refreshing: asyncio.Task[None] | None = None
        self._slot_cache: dict[Any, int] = {}
        self._closed = False
        #: Maps fetched (tests, status).
        self.refreshes = 0

    # ------------------------------------------------------------------ the link API

    @property
    def wait_replicas(self) -> int:
        return self.target.wait_replicas

    @property
    def connected(self) -> bool:
        """Whether the map is known and every primary this link has used is connected."""
        owners = set(self._slots)
        return bool(self._slots) and all(
            link.connected for address, link in self._links.items() if address in owners
        )

    async def call(self, *args: Any) -> Any:
        (reply,) = await self.call_many([args])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Commands routed by slot; replies in order, error replies in place."""
        if not commands:
            return []
        if self._stale or not self._slots:
            await self.refresh()
        results: list[Any] = [None] * len(commands)
        groups: dict[Address, list[tuple[list[int], list[Sequence[Any]]]]] = {}
        for indexes, block, slot in self._blocks(commands):
            if slot is None and block[0][0] == "WAIT" and groups:
                owners = list(groups)  # the primaries this batch wrote to
            else:
                owners = self._owners(slot)
            for address in owners:
                groups.setdefault(address, []).append((indexes, block))
        try:
            await asyncio.gather(*(self._run(a, g, results) for a, g in groups.items()))
        except LinkError:
            self._stale = True  # a primary may have failed over: ask again next time
            raise
        return results

    def send_now(self, commands: Sequence[Sequence[Any]]) -> list[asyncio.Future[Any]] | None:
        """As :meth:`RedisLink.send_now`, each command to its slot's primary; None unless
        the map is fresh and every primary involved is connected. Redirections are not
        followed here: a MOVED comes back as the reply (the caller falls back)."""
        if self._stale or not self._slots:
            return None
        futs: list[asyncio.Future[Any]] = []
        for _, block, slot in self._blocks(commands):
            owner = self._slots[slot] if slot is not None else None
            link = self._links.get(owner) if owner is not None else None
            if link is None or not link.connected:
                return None
            sent = link.send_now(block)
            if sent is None:
                return None
            futs += sent
        return futs

    def note_errors(self, errors: Sequence[ReplyError]) -> None:
        """MOVED, or a node that stopped being a primary: fetch the map again."""
        if any(e.code in ("MOVED", "READONLY", "CLUSTERDOWN", "TRYAGAIN") for e in errors):
            self._stale = True

    async def aclose(self) -> None:
        self._closed = True
        for link in list(self._links.values()):
            await link.aclose()

    # ------------------------------------------------------------------ cluster API

    def primaries(self) -> list[RedisLink]:
        """One link per primary in the current map."""
        return [self._link(a) for a in dict.fromkeys(s for s in self._slots if s is not None)]

    def slot_owner(self, slot: int) -> Address | None:
        return self._slots[slot] if self._slots else None

    async def refresh(self) -> None:
        """Fetch the slot map (one fetch at a time; callers share it)."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        task = self._refreshing
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing is task:
                self._refreshing = None

    # ------------------------------------------------------------------ plumbing

    async def _refresh(self) -> None:
        if self._closed:
            raise LinkError("The connection was closed.")
        known = list(dict.fromkeys([*self.target.seeds, *(a for a in self._slots if a)]))
        problems = []
        for address in known:
            try:
                reply = await self._link(address).call("CLUSTER", "SLOTS")
            except (LinkError, ReplyError) as exc:
                problems.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            slots: list[Address | None] = [None] * SLOTS
            for start, end, primary, *_ in reply:
                owner = (_text(primary[0]) or address[0], int(primary[1]))
                for s in range(int(start), int(end) + 1):
                    slots[s] = owner
            self._slots = slots
            self._stale = False
            self.refreshes += 1
            return
        raise LinkError("No cluster node gave the slot map (" + "; ".join(problems) + ").")

    def _link(self, address: Address) -> RedisLink:
        link = self._links.get(address)
        if link is None:
            link = RedisLink(self.target.node.at(*address), **self._kw)
            self._links[address] = link
        return link

    def _slot(self, key: Any) -> int:
        slot = self._slot_cache.get(key)
        if slot is None:
            if len(self._slot_cache) >= _SLOT_CACHE_MAX:
                self._slot_cache.clear()
            slot = self._slot_cache[key] = key_slot(key)
        return slot

    def _blocks(
        self, commands: Sequence[Sequence[Any]]
    ) -> list[tuple[list[int], list[Sequence[Any]], int | None]]:
        """Commands as routable blocks (a MULTI..EXEC block is one), each with its slot
        (None: keyless)."""
        blocks: list[tuple[list[int], list[Sequence[Any]], int | None]] = []
        i = 0
        while i < len(commands):
            command = commands[i]
            if str(command[0]).upper() == "MULTI":
                j = i
                while j < len(commands) - 1 and str(commands[j][0]).upper() != "EXEC":
                    j += 1
                block = list(commands[i : j + 1])
                keys = [k for k in map(first_key, block) if k is not None]
                slot = self._slot(keys[0]) if keys else None
                blocks.append((list(range(i, j + 1)), block, slot))
                i = j + 1
                continue
            key = first_key(command)
            blocks.append(([i], [command], None if key is None else self._slot(key)))
            i += 1
        return blocks

    def _owners(self, slot: int | None) -> list[Address]:
        if slot is None:
            owners = list(dict.fromkeys(s for s in self._slots if s is not None))
        else:
            owner = self._slots[slot]
            owners = [owner] if owner is not None else []
        if not owners:
            self._stale = True
            raise LinkError("No cluster node serves this slot (the cluster is down).")
        return owners

    async def _run(
        self,
        address: Address,
        group: list[tuple[list[int], list[Sequence[Any]]]],
        results: list[Any],
    ) -> None:
        flat = [c for _, block in group for c in block]
        replies = collections.deque(await self._link(address).call_many(flat))
        for indexes, block in group:
            for index, command in zip(indexes, block, strict=True):
                reply = replies.popleft()
                if len(block) == 1 and isinstance(reply, ReplyError):
                    reply = await self._redirect(command, reply)
                results[index] = _merge(results[index], reply)

    async def _redirect(self, command: Sequence[Any], reply: ReplyError) -> Any:
        for _ in range(MAX_REDIRECTS):
            code = reply.code
            if code not in ("MOVED", "ASK"):
                return reply
            host, _, port = str(reply).split(" ")[2].rpartition(":")
            link = self._link((host, int(port)))
            if code == "MOVED":
                self._stale = True
                reply = (await link.call_many([command]))[0]
            else:
                reply = (await link.call_many([("ASKING",), command]))[1]
            if not isinstance(reply, ReplyError):
                return reply
        return reply


def _merge(old: Any, new: Any) -> Any:
    """A keyless command's reply from several primaries: the first error, else the
    smallest number (``WAIT``: the fewest replicas any primary had), else the first."""
    if old is None or (isinstance(new, ReplyError) and not isinstance(old, ReplyError)):
        return new
    if isinstance(old, int) and isinstance(new, int):
        return min(old, new)
    return old


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
