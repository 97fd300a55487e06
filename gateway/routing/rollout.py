"""Rollouts inside a tier: weighted canary or sticky A/B between engine versions, and shadow.

**Split.** When a tier's engines carry different ``version`` labels, each request is
assigned a version first, in proportion to the summed ``weight`` of each version's
engines (``large-v1`` weight 9 and ``large-v2`` weight 1: a 10 % canary). With
``split: sticky`` the draw is a hash of the API key id, so one key always sees the same
version (A/B). The replicas of the assigned version come first in the candidate list;
the other versions follow as failover.

**Shadow.** A sample of a tier's requests is copied to a candidate engine (which takes
no regular traffic). The copy never delays the client (it is started after routing and
runs on its own task), is dropped, never queued, when ``max_concurrency`` copies are
already running or the engine has no free slot, and is never billed to the key: its
latency and cost go to ``tollgate_shadow_*`` metrics and to the ledger as a record with
``status="shadow"`` under the pseudo key ``shadow`` (operator spend, not the client's).
The runner that fires the copies is :mod:`gateway.request.shadow`.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Sequence

from gateway.config import RolloutSettings
from gateway.routing.balancer import stable_hash
from gateway.upstream.engine import Engine

log = logging.getLogger(__name__)

_SPAN = float(1 << 64)


class TierRollout:
    """The version split of one tier (static: from config)."""

    def __init__(
        self, tier: str, engines: Sequence[Engine], settings: RolloutSettings | None
    ) -> None:
        shares: dict[str, float] = {}
        for e in engines:
            shares[e.settings.version or ""] = (
                shares.get(e.settings.version or "", 0.0) + e.settings.weight
            )
        self.versions = [v for v, w in shares.items() if w > 0]
        total = sum(shares[v] for v in self.versions)
        acc = 0.0
        self._cumulative: list[float] = []
        for v in self.versions:
            acc += shares[v] / total if total else 0.0
            self._cumulative.append(acc)
        self.sticky = settings is not None and settings.split == "sticky"
        self._salt = f"{tier}:{settings.salt if settings else ''}:"

    @property
    def active(self) -> bool:
        """A split exists: more than one version takes traffic."""
        return len(self.versions) > 1

    def pick(self, key_id: str | None, rng: random.Random) -> str:
        u = stable_hash(self._salt + key_id) / _SPAN if self.sticky and key_id else rng.random()
        i = bisect.bisect_right(self._cumulative, u)
        return self.versions[min(i, len(self.versions) - 1)]

    def order(self, engines: list[Engine], version: str) -> tuple[list[Engine], list[Engine]]:
        """(engines of ``version``, the rest)."""
        mine = [e for e in engines if (e.settings.version or "") == version]
        rest = [e for e in engines if (e.settings.version or "") != version]
        return mine, rest
