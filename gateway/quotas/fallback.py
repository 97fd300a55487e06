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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth import Principal
from gateway.config import QuotaSettings
from gateway.errors import GatewayError, QuotaStoreUnavailable, with_retry_after
from gateway.quotas.base import Demand, RateSnapshot, Reservation
from gateway.quotas.layout import RedisHold, SettleOp, new_hold_id
from gateway.quotas.limits import scopes_of
from gateway.quotas.link import LinkError, ReplyError
from gateway.quotas.local import LocalQuotaStore
from gateway.quotas.redis import RedisQuotaStore
from gateway.quotas.spend import LedgerSpend, SpendSource

log = logging.getLogger(__name__)

#: Queued settlements a reservation carries along in its round trip, at most.
INLINE_SETTLE_MAX = 64
#: How long queued settlements (only those that could not be written at once) wait for a
#: reservation to carry them before a background task sends them.
SETTLE_LINGER_S = 0.005
#: Settlements per background round trip.
BATCH_MAX = 256
#: How long closing the store may spend sending what is still queued.
CLOSE_FLUSH_S = 2.0
#: After a failed seeding (ledger or Redis down), wait this long before trying again.
SEED_RETRY_S = 30.0


class _NoSpend:
    """The spend source without a ledger: seeding only sets the marker."""

    async def spend_since(self, since: dt.datetime | None) -> Sequence[tuple[str, str | None, int]]:
        return []


class Breaker:
    """Consecutive-failure breaker: closed → open for ``open_s`` → half-open (one probe)."""

    def __init__(
        self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether a call may go to Redis now (claims the probe when half-open)."""
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self._open_s:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()

    def abandon(self) -> None:
        """A call was cancelled before it could tell: free the probe slot."""
        self._probing = False

    def retry_after_s(self) -> float:
        if self._opened_at is None:
            return self._open_s
        return max(1.0, self._open_s - (self._clock() - self._opened_at))


@dataclass(frozen=True, slots=True)
class Degraded:
    """The store token of a reservation admitted while Redis was unreachable."""

    hold_id: str
    scope_ids: tuple[str, ...]
    #: The local fallback limiter's reservation, when rate limits applied.
    local: Reservation | None


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
        #: Where the spend comes from when Redis lost it (None: no ledger, seed nothing).
        self.spend_source = spend_source
        self._settings = settings
        self.fallback = fallback or LocalQuotaStore(settings, rate_divisor=settings.replicas)
        self.breaker = breaker or Breaker(settings.breaker_failures, settings.breaker_open_s)
        self._pending: collections.deque[SettleOp] = collections.deque()
        self._dropped = 0
        self._drain_task: asyncio.Task[None] | None = None
        self._seed_task: asyncio.Task[None] | None = None
        self._seed_not_before = 0.0
        self._seeds = 0

    # ------------------------------------------------------------------ QuotaStore

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        hold_id = new_hold_id(request_id)
        if self.breaker.allow():
            carried = self._take(INLINE_SETTLE_MAX)
            try:
                res = await self.primary.reserve_hold(
                    principal, request_id, hold_id, demand, settle_first=carried
                )
            except QuotaStoreUnavailable:
                self._requeue(carried)
                self._failed("reserve")
                # The script may have run before the reply was lost: release that hold.
                ids = tuple(s.id for s in scopes_of(principal))
                self._enqueue(self.primary.settle_op(hold_id, ids, Demand(0, 0)))
            except GatewayError:
                self._succeeded()  # a refusal: Redis answered (and took the settlements)
                raise
            except BaseException:
                self._requeue(carried)  # maybe sent, maybe not: replays are harmless
                self.breaker.abandon()
                raise
            else:
                self._succeeded()
                return res
        return self._degraded_reserve(principal, request_id, hold_id, demand)

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
        if self._pending or self.breaker.is_open or not self._send_now(op):
            self._enqueue(op)  # behind the ones already waiting, or until Redis is back
            self._kick()

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
        self._enqueue(op)
        self._kick()

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        if not self.breaker.allow():
            return None
        try:
            await self._flush()
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
        await self._flush()
        return await self.primary.spend_totals(period)

    async def aclose(self) -> None:
        if self._seed_task is not None:
            self._seed_task.cancel()
            await asyncio.gather(self._seed_task, return_exceptions=True)
        task, self._drain_task = self._drain_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if self.primary.link.connected and not self.breaker.is_open:
            # Settlements written at once may still wait for their replies (a failed one
            # comes back to the queue): a PING behind them is answered last.
            with contextlib.suppress(LinkError, TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await self.primary.link.call("PING")
        if self._pending and not self.breaker.is_open:
            try:
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await self._flush()
            except (QuotaStoreUnavailable, TimeoutError):
                pass
        if self._pending:
            log.error(
                "quota store closing with settlements it could not send",
                extra={"pending": len(self._pending)},
            )
        await self.primary.aclose()
        if isinstance(self.spend_source, LedgerSpend):
            self.spend_source.dispose()

    # ------------------------------------------------------------------ observability

    def status(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "redis": "unreachable" if self.breaker.is_open else "ok",
            "pending_settlements": len(self._pending),
            "dropped_settlements": self._dropped,
            "seeded_from_ledger": self._seeds,
        }

    async def drained(self) -> None:
        """Wait until queued settlements are sent, or cannot be (tests, shutdown)."""
        while self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    # ------------------------------------------------------------------ internals

    def _degraded_reserve(
        self, principal: Principal, request_id: str, hold_id: str, demand: Demand
    ) -> Reservation:
        scopes = scopes_of(principal)
        s = self._settings
        retry = self.breaker.retry_after_s()
        if s.on_store_error_budgets == "fail_closed" and any(x.has_budget for x in scopes):
            raise with_retry_after(
                QuotaStoreUnavailable(
                    "The quota store is unreachable, so requests from keys with a spend "
                    "budget are refused until it is back."
                ),
                retry,
            )
        local: Reservation | None = None
        if any(x.has_rates for x in scopes):
            if s.on_store_error_rates == "fail_closed":
                raise with_retry_after(
                    QuotaStoreUnavailable(
                        "The quota store is unreachable, so rate-limited requests are "
                        "refused until it is back."
                    ),
                    retry,
                )
            if s.on_store_error_rates == "local":
                local = self.fallback.reserve_now(principal, request_id, hold_id, demand)
        return Reservation(
            request_id=request_id,
            principal=principal,
            demand=demand,
            snapshot=local.snapshot if local is not None else RateSnapshot(),
            budget_remaining_nusd=None,
            store_token=Degraded(hold_id, tuple(x.id for x in scopes), local),
        )

    def _take(self, limit: int) -> list[SettleOp]:
        batch: list[SettleOp] = []
        while self._pending and len(batch) < limit:
            batch.append(self._pending.popleft())
        return batch

    def _requeue(self, batch: list[SettleOp]) -> None:
        self._pending.extendleft(reversed(batch))

    def _enqueue(self, op: SettleOp) -> None:
        if len(self._pending) >= self._settings.pending_settles_max:
            self._pending.popleft()
            self._dropped += 1
            log.error(
                "quota settlement queue full: oldest settlement dropped",
                extra={"dropped": self._dropped},
            )
        self._pending.append(op)

    async def _flush(self) -> None:
        """Send everything queued now (raises QuotaStoreUnavailable, queue intact)."""
        while self._pending:
            batch = self._take(BATCH_MAX)
            try:
                await self.primary.settle_many(batch)
            except BaseException:
                self._requeue(batch)
                raise

    def _failed(self, what: str) -> None:
        was_open = self.breaker.is_open
        self.breaker.failure()
        if self.breaker.is_open and not was_open:
            log.error("quota store unreachable: failure policy in force", extra={"op": what})

    def _succeeded(self) -> None:
        was_open = self.breaker.is_open
        self.breaker.success()
        if was_open:
            log.warning("quota store reachable again", extra={"pending": len(self._pending)})
        self._kick()
        if self.primary.needs_seed:
            self._kick_seed()

    def _kick_seed(self) -> None:
        """Seed Redis from the ledger in the background (one task; retried after a pause)."""
        if self._seed_task is None and time.monotonic() >= self._seed_not_before:
            self._seed_task = asyncio.get_running_loop().create_task(self.seed())

    async def seed(self) -> None:
        """Put the ledger's spend back into Redis if it lost it (see RedisQuotaStore.seed)."""
        try:
            if await self.primary.is_seeded():
                return
            if await self.primary.seed(self.spend_source or _NoSpend()):
                self._seeds += 1
                if self.spend_source is None:
                    log.info("quota store seeded (no ledger here: no spend to restore)")
                else:
                    log.warning(
                        "quota store had no seed marker (a new Redis, or one that lost its "
                        "data): day, month and total spend restored from the ledger"
                    )
        except Exception as exc:  # a background task: log, and try again later
            self._seed_not_before = time.monotonic() + SEED_RETRY_S
            log.error("quota spend could not be re-seeded", extra={"error": str(exc)[:200]})
        finally:
            self._seed_task = None

    def _kick(self) -> None:
        """Start sending queued settlements unless that runs already or Redis is out."""
        if self._pending and self._drain_task is None and not self.breaker.is_open:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(SETTLE_LINGER_S)
            while self._pending and self.breaker.allow():
                try:
                    await self._flush()
                except QuotaStoreUnavailable:
                    self._failed("settle")
                    return
                except BaseException:
                    self.breaker.abandon()
                    raise
                self.breaker.success()
        finally:
            self._drain_task = None
