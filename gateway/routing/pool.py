"""Engines grouped by tier, with per-engine concurrency caps and bounded wait queues.

A request holds a :class:`Slot` on an engine while it is in flight. When an engine is at
``max_concurrency`` the request waits in a bounded FIFO for at most ``queue_timeout_s``;
a full queue or an expired wait sheds the request with 503 + ``Retry-After`` instead of
letting vLLM's own (unbounded) queue grow.

The pool is also where load is read: :meth:`EnginePool.outstanding` is this gateway's
exact count, :meth:`EnginePool.load` and :meth:`EnginePool.waiting` blend in the
engine's own scraped ``/metrics`` (which also see other gateway replicas' requests).

The set of engines may change at run time (:mod:`gateway.routing.discovery`):
:meth:`EnginePool.add` and :meth:`EnginePool.retire` bump :attr:`EnginePool.generation`
and tell the subscribers. A retired engine leaves the routing tables at once; requests
already on it (or waiting for its slots) finish there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence

from gateway.config import EngineSettings
from gateway.errors import OverloadedError, with_retry_after
from gateway.upstream.engine import Engine


class Slot:
    """One in-flight request on one engine; ``release`` exactly once."""

    __slots__ = ("_pool", "engine", "released")

    def __init__(self, pool: EnginePool, engine: Engine) -> None:
        self._pool = pool
        self.engine = engine
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._pool._release(self.engine)


class EnginePool:
    """All engines, by tier; the source of truth for in-flight counts."""

    def __init__(self, engines: Iterable[EngineSettings], *, metrics_stale_s: float = 5.0) -> None:
        #: The configured entries by tier (a tier found by DNS may have no engine yet).
        self.entries_by_tier: dict[str, list[EngineSettings]] = {}
        self.engines: dict[str, Engine] = {}
        self.by_tier: dict[str, list[Engine]] = {}
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}
        #: Retired engines still finishing requests, by name.
        self.retired: dict[str, Engine] = {}
        self._subscribers: list[Callable[[Engine, bool], None]] = []
        self._stale_s = metrics_stale_s
        #: Bumped whenever an engine is added or retired.
        self.generation = 0
        for entry in engines:
            self.entries_by_tier.setdefault(entry.tier, []).append(entry)
            self.by_tier.setdefault(entry.tier, [])
            for settings in entry.static_replicas():
                self.add(settings)

    @property
    def tiers(self) -> list[str]:
        return list(self.by_tier)

    # ------------------------------------------------------------------ membership

    def subscribe(self, callback: Callable[[Engine, bool], None]) -> None:
        """Call ``callback(engine, added)`` for each engine now and on every change."""
        self._subscribers.append(callback)
        for engine in self.engines.values():
            callback(engine, True)

    def add(self, settings: EngineSettings) -> Engine:
        """Start routing to an engine (a retired one of the same name comes back)."""
        current = self.engines.get(settings.name)
        if current is not None:
            return current
        engine = self.retired.pop(settings.name, None)
        if engine is None:
            engine = Engine(settings)
            self._waiters[settings.name] = collections.deque()
        engine.retired = False
        self.engines[engine.name] = engine
        self.by_tier.setdefault(engine.tier, []).append(engine)
        self.generation += 1
        for callback in self._subscribers:
            callback(engine, True)
        return engine

    def retire(self, name: str) -> Engine | None:
        """Stop routing to an engine; it finishes what it has (see :meth:`sweep`)."""
        engine = self.engines.pop(name, None)
        if engine is None:
            return None
        engine.retired = True
        self.by_tier[engine.tier] = [e for e in self.by_tier[engine.tier] if e is not engine]
        self.retired[name] = engine
        self.generation += 1
        for callback in self._subscribers:
            callback(engine, False)
        return engine

    def sweep(self) -> list[Engine]:
        """Forget retired engines that finished their requests; return them."""
        done = [e for e in self.retired.values() if e.in_flight == 0 and not self._waiters[e.name]]
        for engine in done:
            del self.retired[engine.name]
            del self._waiters[engine.name]
        return done

    # ------------------------------------------------------------------ load

    def queue_depth(self, engine: Engine) -> int:
        return len(self._waiters[engine.name])

    def outstanding(self, engine: Engine) -> int:
        """Requests this gateway has on the engine, running or waiting for a slot."""
        return engine.in_flight + len(self._waiters[engine.name])

    def _fresh(self, engine: Engine, now: float) -> bool:
        return engine.metrics_at > 0.0 and now - engine.metrics_at <= self._stale_s

    def waiting(self, engine: Engine, now: float | None = None) -> float:
        """Requests queued in front of a new one: vLLM's queue plus our wait queue.

        The scraped ``num_requests_waiting`` is corrected by how our own in-flight count
        moved since the scrape, so a burst shows up before the next scrape does.
        """
        queued = float(len(self._waiters[engine.name]))
        if self._fresh(engine, time.monotonic() if now is None else now):
            drift = engine.in_flight - engine.scraped_in_flight
            queued += max(0.0, engine.waiting + drift)
        return queued

    def load(self, engine: Engine, now: float | None = None) -> float:
        """Outstanding requests as best known: ours, or the engine's own count if larger."""
        own = float(engine.in_flight + len(self._waiters[engine.name]))
        if self._fresh(engine, time.monotonic() if now is None else now):
            drift = engine.in_flight - engine.scraped_in_flight
            seen = engine.running + engine.waiting + drift + len(self._waiters[engine.name])
            return max(own, seen)
        return own

    def signals(self, engines: Sequence[Engine], now: float) -> list[tuple[float, int, float]]:
        """Per engine: (:meth:`waiting`, :meth:`outstanding`, scraped KV-cache usage or 0
        when stale), in one pass: the ``scored`` balancer reads them on every request."""
        out: list[tuple[float, int, float]] = []
        stale = self._stale_s
        waiters = self._waiters
        for e in engines:
            own_queue = len(waiters[e.name])
            queued = float(own_queue)
            kv = 0.0
            at = e.metrics_at
            if at > 0.0 and now - at <= stale:
                drift = e.in_flight - e.scraped_in_flight
                queued += max(0.0, e.waiting + drift)
                kv = e.kv_cache_usage
            out.append((queued, e.in_flight + own_queue, kv))
        return out

    # ------------------------------------------------------------------ slots

    def try_acquire(self, engine: Engine) -> Slot | None:
        """A slot now, or None (never waits; used for shadow traffic)."""
        if engine.in_flight < engine.settings.max_concurrency and not self._waiters[engine.name]:
            engine.in_flight += 1
            return Slot(self, engine)
        return None

    async def acquire(self, engine: Engine) -> Slot:
        cap = engine.settings.max_concurrency
        waiters = self._waiters[engine.name]
        if engine.in_flight < cap and not waiters:
            engine.in_flight += 1
            return Slot(self, engine)
        if len(waiters) >= engine.settings.max_queue:
            raise with_retry_after(
                OverloadedError(f"The {engine.tier} tier is at capacity; try again shortly."),
                1,
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        granted = False
        try:
            async with asyncio.timeout(engine.settings.queue_timeout_s):
                await fut
            granted = True
        except TimeoutError:
            raise with_retry_after(
                OverloadedError(
                    f"The {engine.tier} tier stayed at capacity for "
                    f"{engine.settings.queue_timeout_s:g}s; try again shortly."
                ),
                engine.settings.queue_timeout_s,
            ) from None
        finally:
            if not granted and fut.done() and not fut.cancelled():
                # A slot was handed to us as we timed out or were cancelled: pass it on.
                self._release(engine)
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
        return Slot(self, engine)

    def _release(self, engine: Engine) -> None:
        waiters = self._waiters[engine.name]
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                # Hand the slot over directly: in_flight stays the same.
                fut.set_result(None)
                return
        engine.in_flight -= 1
