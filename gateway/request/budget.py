"""The mid-stream budget cut-off: a stream stops within one chunk of what its key may spend.

Admission reserved the worst case, so a stream only outgrows its reservation when the
engine ignores ``max_tokens`` or the reservation was made while budgets failed open.
Each chunk is compared with a precomputed chunk limit (an integer comparison); only when
a chunk passes it is the key's live remaining budget read from the quota store, which
either raises the limit or ends the stream before that chunk is sent.
"""

from __future__ import annotations

from gateway.errors import QuotaExceededError
from gateway.quotas.base import QuotaStore
from gateway.request.context import Admitted
from gateway.request.metering import Meter
from gateway.upstream.engine import Engine


class StreamBudget:
    __slots__ = ("_admitted", "_engine", "_meter", "_quotas", "limit")

    def __init__(self, quotas: QuotaStore, meter: Meter, engine: Engine, admitted: Admitted):
        self._quotas = quotas
        self._meter = meter
        self._engine = engine
        self._admitted = admitted
        #: The most chunks whose cost fits what may be spent, as last known.
        self.limit = self._chunks_within(admitted.reservation.demand.cost_nusd)

    async def passed(self, chunks: int) -> None:
        """``chunks`` went past :attr:`limit`: read the budget; raise if it is spent."""
        res = self._admitted.reservation
        remaining = await self._quotas.budget_remaining_nusd(res.principal)
        if remaining is None:  # no budget on this key after all
            self.limit = 1 << 62
            return
        # The store counts this request's reservation as spent already.
        self.limit = self._chunks_within(res.demand.cost_nusd + max(0, remaining))
        if chunks > self.limit:
            spent = self._cost(chunks)
            raise QuotaExceededError(
                "Budget exhausted during this stream: the output was cut at "
                f"{chunks - 1} chunks (about ${spent / 1e9:.6f}) to stay within the budget."
            )

    def _cost(self, chunks: int) -> int:
        return self._meter.output_cost(self._engine, self._admitted.prompt_tokens, chunks)

    def _chunks_within(self, allowance_nusd: int) -> int:
        """The largest chunk count whose cost (one token each) is within the allowance."""
        if self._cost(0) > allowance_nusd:
            return 0
        hi = 1
        while self._cost(hi) <= allowance_nusd:
            if hi > 1 << 40:  # free output: no limit
                return 1 << 62
            hi *= 2
        lo = hi // 2  # cost(lo) <= allowance < cost(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._cost(mid) <= allowance_nusd:
                lo = mid
            else:
                hi = mid
        return lo
