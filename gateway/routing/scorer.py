"""The ``scored`` balancer: prefix-cache hits and load signals in one score per replica.

For each replica of the tier::

    score = w_prefix * matched - w_queue * queue - w_kv * kv_usage - w_inflight * inflight

* ``matched``: the fraction of the request's prefix blocks that this gateway last sent to
  the replica (:class:`~gateway.routing.prefix_index.PrefixIndex`), a guess at how much of
  the prompt its vLLM prefix cache still holds;
* ``queue``: requests waiting in front of a new one (vLLM's scraped queue, corrected by
  our own in-flight drift, plus our wait queue) over ``queue_scale``, capped at 1;
* ``kv_usage``: the replica's scraped ``vllm:kv_cache_usage_perc`` (0 when stale);
* ``inflight``: this gateway's outstanding requests on it, per unit of weight, over
  ``inflight_scale``, capped at 1.

The load terms bound the prefix advantage: a replica that is busier than another by
``w_prefix / w_inflight * inflight_scale`` outstanding requests loses even a full match.
With no match anywhere the score is load alone, so unrelated requests spread like
least-outstanding. Ties take turns. The chosen replica's blocks are recorded at once:
the index is "what the gateway sent where".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import ScorerSettings
from gateway.routing.pool import EnginePool
from gateway.routing.prefix_index import PrefixIndex
from gateway.upstream.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scored:
    """A tier's engines best first, and the short note for the route reason."""

    engines: list[Engine]
    #: e.g. ``replica=score:0.82`` (empty when there was nothing to choose between).
    note: str = ""


class ReplicaScorer:
    """Scores and orders one tier's replicas for one request."""

    def __init__(self, settings: ScorerSettings, pool: EnginePool) -> None:
        self._s = settings
        self._pool = pool
        self.index = PrefixIndex(settings.index_blocks)
        self._turn = 0
        #: 1 / (weight * inflight_scale) by engine name: an outstanding request's share.
        self._per_request: dict[str, float] = {}
        weights = (settings.w_prefix, settings.w_queue, settings.w_kv, settings.w_inflight)
        self._weights = "w:" + "/".join(f"{w:g}" for w in weights)
        pool.subscribe(self._membership)

    def _membership(self, engine: Engine, added: bool) -> None:
        if not added:
            self.index.forget(engine.name)
        self._per_request.pop(engine.name, None)

    def order(self, engines: Sequence[Engine], blocks: Sequence[int]) -> Scored:
        """The engines by score, best first; records ``blocks`` on the first."""
        n = len(engines)
        if n == 0:
            return Scored([])
        if n == 1:
            self.index.record(engines[0].name, blocks)
            return Scored(list(engines))
        s = self._s
        total = len(blocks)
        k = self._turn % n
        self._turn += 1
        rotated = [*engines[k:], *engines[:k]]
        signals = self._pool.signals(rotated, time.monotonic())
        names = [e.settings.name for e in rotated]
        matched = self.index.matched_each(names, blocks)
        w_prefix = s.w_prefix / total if total else 0.0
        w_queue, w_kv, w_inflight = s.w_queue, s.w_kv, s.w_inflight
        q_scale = s.queue_scale
        per_request = self._per_request
        scored: list[tuple[float, int]] = []
        for i, e in enumerate(rotated):
            queued, outstanding, kv = signals[i]
            unit = per_request.get(names[i])
            if unit is None:  # 1 / (weight * inflight_scale), once per engine
                unit = per_request[names[i]] = 1.0 / (
                    max(e.settings.weight, 1e-9) * s.inflight_scale
                )
            inflight = outstanding * unit
            score = (
                w_prefix * matched[i]
                - w_queue * (queued / q_scale if queued < q_scale else 1.0)
                - w_kv * kv
                - w_inflight * (inflight if inflight < 1.0 else 1.0)
            )
            # -i: among equal scores the one met first in this turn's rotation wins
            scored.append((score, -i))
        scored.sort(reverse=True)
        ranked = [rotated[-i] for _, i in scored]
        best = ranked[0]
        self.index.record(best.name, blocks)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "replica scores",
                extra={
                    "weights": {
                        "prefix": s.w_prefix,
                        "queue": s.w_queue,
                        "kv": s.w_kv,
                        "inflight": s.w_inflight,
                    },
                    "scores": {rotated[-i].name: round(sc, 4) for sc, i in scored},
                    "blocks": total,
                    "chosen": best.name,
                },
            )
        return Scored(ranked, f"replica=score:{scored[0][0]:.2f},{self._weights}")
