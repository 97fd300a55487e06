"""Replica choice inside a tier: least outstanding, power of two choices, prefix affinity.

:meth:`Balancer.order` returns a tier's engines best first; the pipeline sends to the
first and retries down the list. Three strategies:

* ``least_outstanding``: fewest requests this gateway has on the engine (running or
  waiting for a slot), divided by the engine's ``weight``. Exact, but blind to other
  gateway replicas.
* ``p2c``: pick two engines at random and take the less loaded, where load blends in the
  engine's scraped vLLM queue (:meth:`EnginePool.load`), so several gateway replicas do
  not herd onto the same "least loaded" engine.
* prefix affinity (on top of either): requests whose conversations begin alike go to the
  same replica (rendezvous hashing), so vLLM's prefix cache hits, unless that replica
  is above ``affinity_load_factor`` times the mean load ("consistent hashing with
  bounded loads"); then the strategy above decides.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config import RoutingSettings
from gateway.routing.pool import EnginePool
from gateway.upstream.engine import Engine

_MASK = (1 << 64) - 1


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    """splitmix64's finaliser: spreads the bits of ``x`` over 64 bits."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def prefix_hash(raw: Mapping[str, Any], chars: int) -> int:
    """Hash of how a conversation begins: system messages and the first other message.

    That beginning stays the same on every turn of a conversation (later turns only
    append), and requests sharing a long system prompt share it too. 0 means "no prefix".
    """
    parts: list[str] = []
    size = 0
    messages = raw.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, Mapping):
                break
            content = msg.get("content")
            text = content if isinstance(content, str) else _text_parts(content)
            parts.append(str(msg.get("role")))
            parts.append(text)
            size += len(text)
            if msg.get("role") != "system" or size >= chars:
                break
    else:
        prompt = raw.get("prompt")
        if isinstance(prompt, str):
            parts.append(prompt[:chars])
    joined = "\x1f".join(parts)[:chars]
    return (stable_hash(joined) or 1) if joined else 0


def _text_parts(content: object) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


class Balancer:
    """Orders one tier's engines for one request (best first)."""

    def __init__(
        self, settings: RoutingSettings, pool: EnginePool, rng: random.Random | None = None
    ) -> None:
        self._pool = pool
        self._p2c = settings.balancer == "p2c"
        self._affinity = settings.prefix_affinity
        self._factor = settings.affinity_load_factor
        self._rng = rng or random.Random()
        #: Rendezvous seeds by engine name, filled as engines appear (discovery).
        self._seeds: dict[str, int] = {}
        self._turn = 0

    def _outstanding(self, e: Engine) -> float:
        return self._pool.outstanding(e) / max(e.settings.weight, 1e-9)

    def order(self, engines: Sequence[Engine], prefix: int = 0) -> list[Engine]:
        """The engines, best first (the rest by least outstanding, for retries)."""
        if len(engines) <= 1:
            return list(engines)
        first: Engine | None = None
        if self._affinity and prefix:
            first = self._preferred(engines, prefix)
        if first is None and self._p2c:
            n = len(engines)
            i = self._rng.randrange(n)
            j = (i + 1 + self._rng.randrange(n - 1)) % n  # a second, different engine
            a, b = engines[i], engines[j]
            now = time.monotonic()
            la = self._pool.load(a, now) / max(a.settings.weight, 1e-9)
            lb = self._pool.load(b, now) / max(b.settings.weight, 1e-9)
            first = a if la <= lb else b
        # Rotate before the (stable) sort so that ties take turns instead of always
        # going to the first engine listed.
        k = self._turn % len(engines)
        self._turn += 1
        ranked = sorted([*engines[k:], *engines[:k]], key=self._outstanding)
        if first is not None and ranked[0] is not first:
            # by identity: Engine's dataclass __eq__ would compare settings field by field
            ranked = [first, *(e for e in ranked if e is not first)]
        return ranked

    def _preferred(self, engines: Sequence[Engine], prefix: int) -> Engine | None:
        """The prefix's rendezvous-hash replica, if its load is within the bound."""
        best: Engine | None = None
        best_score = -1.0
        total = 0
        for e in engines:
            total += self._pool.outstanding(e)
            w = e.settings.weight
            if w <= 0:
                continue
            seed = self._seeds.get(e.name)
            if seed is None:
                seed = self._seeds[e.name] = stable_hash(e.name)
            u = (_mix(prefix ^ seed) + 1) / (_MASK + 2)
            score = w / -math.log(u)
            if score > best_score:
                best, best_score = e, score
        if best is None:
            return None
        bound = math.ceil(self._factor * (total + 1) / len(engines))
        return best if self._pool.outstanding(best) + 1 <= bound else None

    def failover(self, engines: Sequence[Engine]) -> list[Engine]:
        """Plain least-outstanding order, for a fallback tier (rarely used: kept cheap)."""
        if len(engines) <= 1:
            return list(engines)
        return sorted(engines, key=self._outstanding)
