"""What the gateway does when Redis is unreachable: a breaker and a policy per limit kind.

:class:`FailoverQuotaStore` wraps the :class:`~gateway.quotas.redis.RedisQuotaStore`:

* Calls go to Redis while its :class:`Breaker` is closed. Timeouts are short
  (``quotas.redis_timeout_s``); after ``quotas.breaker_failures`` consecutive failures the
  breaker opens for ``quotas.breaker_open_s``, then lets one probe through, and closes
  again when Redis answers (automatic recovery).
* While Redis is out, a request is admitted according to the failure policy:
  budgets (``on_store_error_budgets``) fail closed by default: a key or team with a
  budget gets 503 + Retry-After. Rate limits (``on_store_error_rates``) fall back by
  default to an in-process limiter sized ``limit / quotas.replicas``.
* Settlements are written to Redis at once, before the client hears the answer, and
  their replies are not awaited: a slot freed by a finished request is free for the
  client's next request on any replica, and the answer waits for no round trip. When
  that cannot be done or fails (no connection, Redis out, scripts lost), they go to
  one bounded queue: a reservation takes what is queued along in its own round trip,
  ahead of itself, and what none picks up within ``SETTLE_LINGER_S`` a background
  task sends in batches. While Redis is out, they wait in the queue and are replayed
  when it is back. Replays cannot double-count:
  a held settlement releases a hold that exists at most once, and a settlement of a
  reservation made without Redis is guarded by a marker. A reservation whose outcome
  is unknown (the call failed after the script may have run) is released the same way,
  so a phantom hold cannot linger until its TTL.
* When a reservation reports that Redis lost its data (the seed marker is gone), a
  background task puts the ledger's day, month and total spend back, once across
  replicas (:meth:`FailoverQuotaStore.seed`).

The parts live by concern: the breaker and the failure policy in
:mod:`gateway.quotas.outage`, the queue in :mod:`gateway.quotas.settle_queue`, seeding
in :mod:`gateway.quotas.seeding`; this module is the store that ties them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gateway.auth import Principal
from gateway.config import QuotaSettings
from gateway.errors import GatewayError, QuotaStoreUnavailable
from gateway.quotas.base import Demand, Reservation
from gateway.quotas.layout import RedisHold, SettleOp, new_hold_id
from gateway.quotas.limits import scopes_of
from gateway.quotas.link import LinkError, ReplyError
from gateway.quotas.local import LocalQuotaStore
from gateway.quotas.outage import Breaker, Degraded, degraded_reservation
from gateway.quotas.redis import RedisQuotaStore
from gateway.quotas.seeding import Seeder
from gateway.quotas.settle_queue import INLINE_SETTLE_MAX, SettleQueue
from gateway.quotas.spend import LedgerSpend, SpendSource

log = logging.getLogger(__name__)

#: How long closing the store may spend sending what is still queued.
CLOSE_FLUSH_S = 2.0


class FailoverQuotaStore:
    """The Redis store behind a breaker, with the failure policy above."""

    def __init__(
        self,
        primary: RedisQuotaStore,
        settings: QuotaSettings,
        *,
        fallback: LocalQuotaStore | None = None,
        breaker: Breaker | None = None,
        spend_source: SpendSource | None = None,
    ) -> None:
        self.primary = primary
        self._settings = settings
        self.fallback = fallback or LocalQuotaStore(settings, rate_divisor=settings.replicas)
        self.breaker = breaker or Breaker(settings.breaker_failures, settings.breaker_open_s)
        self._queue = SettleQueue(
            primary, self.breaker, settings.pending_settles_max, on_failure=self._failed
        )
        self._seeder = Seeder(primary, spend_source)

    @property
    def spend_source(self) -> SpendSource | None:
        """Where the spend comes from when Redis lost it (None: no ledger, seed nothing)."""
        return self._seeder.spend_source

    # ------------------------------------------------------------------ QuotaStore

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        hold_id = new_hold_id(request_id)
        if self.breaker.allow():
            carried = self._queue.take(INLINE_SETTLE_MAX)
            try:
                res = await self.primary.reserve_hold(
                    principal, request_id, hold_id, demand, settle_first=carried
                )
            except QuotaStoreUnavailable:
                self._queue.requeue(carried)
                self._failed("reserve")
                # The script may have run before the reply was lost: release that hold.
                ids = tuple(s.id for s in scopes_of(principal))
                self._queue.enqueue(self.primary.settle_op(hold_id, ids, Demand(0, 0)))
            except GatewayError:
                self._succeeded()  # a refusal: Redis answered (and took the settlements)
                raise
            except BaseException:
                self._queue.requeue(carried)  # maybe sent, maybe not: replays are harmless
                self.breaker.abandon()
                raise
            else:
                self._succeeded()
                return res
        return degraded_reservation(
            self._settings,
            self.fallback,
            self.breaker.retry_after_s(),
            principal,
            request_id,
            hold_id,
            demand,
        )

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        """Queue the settlement and return: it reaches Redis in the background."""
        if reservation.settled:
            return
        reservation.settled = True
        token = reservation.store_token
        if isinstance(token, RedisHold):
            op = self.primary.settle_op(token.hold_id, token.scope_ids, actual)
        elif isinstance(token, Degraded):
            if token.local is not None:
                await self.fallback.settle(token.local, actual)
            op = self.primary.settle_op(token.hold_id, token.scope_ids, actual, held=False)
        else:
            return
        if self._queue.pending or self.breaker.is_open or not self._send_now(op):
            self._queue.enqueue(op)  # behind the ones already waiting, or until Redis is back
            self._queue.kick()

    def _send_now(self, op: SettleOp) -> bool:
        """Write one settlement at once; its reply is checked when it comes."""
        fut = self.primary.settle_now(op)
        if fut is None:
            return False
        fut.add_done_callback(lambda done: self._settled_now(op, done))
        return True

    def _settled_now(self, op: SettleOp, fut: asyncio.Future[Any]) -> None:
        if (
            not fut.cancelled()
            and fut.exception() is None
            and not isinstance(fut.result(), ReplyError)
        ):
            return
        # Lost connection, an error reply or lost scripts: the queue's path retries it
        # (loading the scripts again if need be) and counts failures for the breaker.
        self._queue.enqueue(op)
        self._queue.kick()

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        if not self.breaker.allow():
            return None
        try:
            await self._queue.flush()
            value = await self.primary.budget_remaining_nusd(principal)
        except QuotaStoreUnavailable:
            self._failed("budget")
            return None
        except BaseException:
            self.breaker.abandon()
            raise
        self._succeeded()
        return value

    async def spend_totals(self, period: str) -> dict[str, int]:
        """Settled spend per key id (reconciliation); needs Redis to be reachable."""
        await self._queue.flush()
        return await self.primary.spend_totals(period)

    async def aclose(self) -> None:
        await self._seeder.stop()
        await self._queue.stop()
        if self.primary.link.connected and not self.breaker.is_open:
            # Settlements written at once may still wait for their replies (a failed one
            # comes back to the queue): a PING behind them is answered last.
            with contextlib.suppress(LinkError, TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await self.primary.link.call("PING")
        if self._queue.pending and not self.breaker.is_open:
            try:
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await self._queue.flush()
            except (QuotaStoreUnavailable, TimeoutError):
                pass
        if self._queue.pending:
            log.error(
                "quota store closing with settlements it could not send",
                extra={"pending": len(self._queue.pending)},
            )
        await self.primary.aclose()
        if isinstance(self.spend_source, LedgerSpend):
            self.spend_source.dispose()

    # ------------------------------------------------------------------ observability

    def status(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "redis": "unreachable" if self.breaker.is_open else "ok",
            "pending_settlements": len(self._queue.pending),
            "dropped_settlements": self._queue.dropped,
            "seeded_from_ledger": self._seeder.seeds,
        }

    async def drained(self) -> None:
        """Wait until queued settlements are sent, or cannot be (tests, shutdown)."""
        await self._queue.drained()

    async def seed(self) -> None:
        """Put the ledger's spend back into Redis if it lost it (see RedisQuotaStore.seed)."""
        await self._seeder.seed()

    # ------------------------------------------------------------------ breaker

    def _failed(self, what: str) -> None:
        was_open = self.breaker.is_open
        self.breaker.failure()
        if self.breaker.is_open and not was_open:
            log.error("quota store unreachable: failure policy in force", extra={"op": what})

    def _succeeded(self) -> None:
        was_open = self.breaker.is_open
        self.breaker.success()
        if was_open:
            log.warning("quota store reachable again", extra={"pending": len(self._queue.pending)})
        self._queue.kick()
        if self.primary.needs_seed:
            self._seeder.kick()
