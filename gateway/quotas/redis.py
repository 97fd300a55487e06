"""Redis quota store: exact limits shared by every gateway process and replica.

Each reservation and each settlement is one Lua script (``reserve.lua``, ``settle.lua``),
so the check and the update are atomic across processes: N concurrent requests against
``rpm=N`` admit exactly N, and a budget is never overrun by more than what was reserved.
Several scripts may share one round trip (queued settlements ride along with the next
reservation, ahead of it); Redis runs a connection's commands in order.

Keys, hash tags and how a reservation stays consistent on Redis Cluster (scopes in
different slots: one step per slot, refusals cancelled) are in
:mod:`gateway.quotas.layout`.

Every hold expires after ``quotas.reservation_ttl_s``: the next reservation in its scope
purges it and gives its tokens and cost back, so a crashed process cannot leak them.
Time comes from the gateway's clock (NTP-synced hosts agree to a few ms, which only
moves window edges). With persistence (``appendonly yes``) Redis keeps every counter
over a restart; without it, or after a flush, the first reservation notices the missing
seed marker and the gateway puts the day, month and total spend back from the ledger
(:meth:`RedisQuotaStore.seed`). Rate windows and holds in flight start again from zero
then.

Round trips, the connection and the one translation of Redis failures into
:class:`QuotaStoreUnavailable` are :mod:`gateway.quotas.redis_calls`; the failure
policy lives in :mod:`gateway.quotas.fallback`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.auth import Principal
from gateway.config import QuotaSettings
from gateway.quotas.base import Demand, Reservation
from gateway.quotas.cluster import ClusterLink
from gateway.quotas.layout import (
    Command,
    Plan,
    RedisHold,
    Scripts,
    SettleOp,
    new_hold_id,
)
from gateway.quotas.layout import states as scope_states
from gateway.quotas.limits import (
    KINDS,
    ScopeState,
    Windows,
    budget_remaining,
    refusal,
    scopes_of,
    snapshot,
    too_large,
)
from gateway.quotas.redis_calls import Link, RedisCalls, first_error, make_link
from gateway.quotas.spend import ScopeSpend, SpendSource, spend_by_scope

#: Plans kept per store (one per principal object the authenticator caches).
_PLANS_MAX = 4096


class RedisQuotaStore:
    """Reserve-then-settle in Redis with Lua (see module docstring)."""

    def __init__(
        self,
        settings: QuotaSettings,
        *,
        link: Link | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link if link is not None else make_link(settings)
        self._cluster = self._link if isinstance(self._link, ClusterLink) else None
        #: Redis Cluster: scopes whose seed marker was found missing (see :meth:`seed`).
        self._unseeded: set[str] = set()
        self._prefix = settings.redis_prefix
        self._ttl_ms = int(settings.reservation_ttl_s * 1000)
        self._clock = clock
        self._scripts = Scripts(self._prefix, self._ttl_ms, cluster=self._cluster is not None)
        self._calls = RedisCalls(self._link, self._scripts, timeout_s=settings.redis_timeout_s)
        #: Set when a reservation found the seed marker missing (see :meth:`seed`).
        self.needs_seed = False
        #: id(principal) -> (principal, plan). The authenticator hands out the same
        #: Principal while its key is cached; holding it keeps the id from being reused.
        self._plans: dict[int, tuple[Principal, Plan]] = {}

    @property
    def link(self) -> Link:
        return self._link

    async def ping(self) -> None:
        """Check the connection and load the scripts (so a burst finds them cached)."""
        await self._calls.ping()

    def windows(self) -> Windows:
        return Windows.at(self._clock())

    # ------------------------------------------------------------------ reserve

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        return await self.reserve_hold(principal, request_id, new_hold_id(request_id), demand)

    async def reserve_hold(
        self,
        principal: Principal,
        request_id: str,
        hold_id: str,
        demand: Demand,
        *,
        settle_first: Sequence[SettleOp] = (),
    ) -> Reservation:
        """Admit under ``hold_id`` or raise the refusal (RateLimitError and subclasses).

        ``settle_first`` go in the same round trip, ahead of the reservation, so a slot
        they free is free for it (Redis runs one connection's commands in order).
        """
        plan = self._plan(principal)
        scopes = plan.scopes
        err = too_large(scopes, demand)
        if err is not None:
            raise err
        w = Windows.at(self._clock())
        args: list[Any] = [
            self._prefix,
            hold_id,
            int(w.now * 1000),
            self._ttl_ms,
            w.minute,
            w.day,
            w.month,
            demand.tokens,
            demand.cost_nusd,
            *plan.args,
        ]
        commands = [c for op in settle_first for c in self._scripts.settle(op)]
        if self._cluster is not None:
            if len(plan.groups) > 1:
                return await self._reserve_split(
                    principal, plan, request_id, hold_id, demand, w, args, commands
                )
            commands.append(self._scripts.command("reserve", args, plan.groups[0][1]))
        else:
            commands.append(self._scripts.command("reserve", args))
        raw = (await self._calls.eval(commands))[-1]
        reply = [int(x) for x in raw.split()]
        if not reply.pop():
            self.needs_seed = True
            if self._cluster is not None:
                self._unseeded.update(plan.ids)
        if reply[0] == 1:
            states = scope_states(reply[1:], len(scopes))
            return Reservation(
                request_id=request_id,
                principal=principal,
                demand=demand,
                snapshot=snapshot(scopes, states, w),
                budget_remaining_nusd=budget_remaining(scopes, states),
                store_token=RedisHold(hold_id, plan.ids),
            )
        index, kind = reply[1] - 1, KINDS[reply[2] - 1]
        states = scope_states(reply[3:], len(scopes))
        raise refusal(scopes[index], kind, states[index], demand, w, snapshot(scopes, states, w))

    async def _reserve_split(
        self,
        principal: Principal,
        plan: Plan,
        request_id: str,
        hold_id: str,
        demand: Demand,
        w: Windows,
        args: list[Any],
        commands: list[Command],
    ) -> Reservation:
        """Redis Cluster, scopes in different slots: one reserve.lua per slot, all in one
        round trip (the slots' primaries answer in parallel); when a slot refuses, the
        holds taken in the others are cancelled (see the module docstring)."""
        head = args[:9]
        for ix, markers in plan.groups:
            scope_args = [a for i in ix for a in plan.args[2 * i : 2 * i + 2]]
            commands.append(self._scripts.command("reserve", [*head, *scope_args], markers))
        raws = (await self._calls.eval(commands))[-len(plan.groups) :]
        states: list[ScopeState] = [ScopeState()] * len(plan.scopes)
        admitted: list[tuple[int, ...]] = []
        refused: tuple[int, int] | None = None
        for (ix, _), raw in zip(plan.groups, raws, strict=True):
            reply = [int(x) for x in raw.split()]
            if not reply.pop():
                self.needs_seed = True
                self._unseeded.update(plan.ids[i] for i in ix)
            if reply[0] == 1:
                admitted.append(ix)
                flat = reply[1:]
            else:
                if refused is None:
                    refused = (ix[reply[1] - 1], reply[2] - 1)
                flat = reply[3:]
            for i, st in zip(ix, scope_states(flat, len(ix)), strict=True):
                states[i] = st
        scopes = plan.scopes
        if refused is None:
            return Reservation(
                request_id=request_id,
                principal=principal,
                demand=demand,
                snapshot=snapshot(scopes, states, w),
                budget_remaining_nusd=budget_remaining(scopes, states),
                store_token=RedisHold(hold_id, plan.ids),
            )
        if admitted:
            ids = tuple(plan.ids[i] for ix in admitted for i in ix)
            cancel = SettleOp(hold_id, ids, Demand(0, 0), True, w.day, w.month, cancel=True)
            await self._calls.eval(self._scripts.settle(cancel))
        index, kind = refused
        snap = snapshot(scopes, states, w)
        raise refusal(scopes[index], KINDS[kind], states[index], demand, w, snap)

    def _plan(self, principal: Principal) -> Plan:
        hit = self._plans.get(id(principal))
        if hit is not None and hit[0] is principal:
            return hit[1]
        plan = self._scripts.plan(principal)
        if len(self._plans) >= _PLANS_MAX:
            self._plans.clear()
        self._plans[id(principal)] = (principal, plan)
        return plan

    # ------------------------------------------------------------------ settle

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        if reservation.settled:
            return
        token = reservation.store_token
        if isinstance(token, RedisHold):
            await self.settle_many([self.settle_op(token.hold_id, token.scope_ids, actual)])
        reservation.settled = True

    def settle_op(
        self, hold_id: str, scope_ids: tuple[str, ...], actual: Demand, *, held: bool = True
    ) -> SettleOp:
        """A settlement dated now (the ledger bills a request when it ends)."""
        w = Windows.at(self._clock())
        return SettleOp(hold_id, scope_ids, actual, held, w.day, w.month)

    async def settle_many(self, ops: Sequence[SettleOp]) -> None:
        """Run settlements in one round trip. Idempotent by hold id: safe to replay."""
        if ops:
            await self._calls.eval([c for op in ops for c in self._scripts.settle(op)])

    def settle_now(self, op: SettleOp) -> asyncio.Future[Any] | None:
        """Write the settlement at once and return its reply's future, or None when the
        link is not connected. The caller checks the reply (an error reply comes in
        place, a NOSCRIPT among them) and falls back to :meth:`settle_many`."""
        if self._calls.wait:
            return None  # confirmed by replicas only through the queue's path (WAIT)
        commands = self._scripts.settle(op)
        futs = self._link.send_now(commands)
        if futs is None:
            return None
        if len(futs) == 1:
            return futs[0]
        return first_error(futs)

    # ------------------------------------------------------------------ seeding

    async def is_seeded(self) -> bool:
        """Whether Redis holds the spend (the marker exists); clears ``needs_seed`` if so.

        On a Cluster each scope has its own marker (in its slot): this checks those of
        the scopes that reservations found unseeded."""
        if self._cluster is not None:
            pending = sorted(self._unseeded)
            found = await self._calls.call([("EXISTS", self._scripts.marker(i)) for i in pending])
            self._unseeded.difference_update(i for i, f in zip(pending, found, strict=True) if f)
            if not self._unseeded:
                self.needs_seed = False
            return not self._unseeded
        (found,) = await self._calls.call([("EXISTS", f"{self._prefix}seeded")])
        if found:
            self.needs_seed = False
        return bool(found)

    async def seed(self, source: SpendSource) -> bool:
        """Put the ledger's spend back into a Redis that lost it, once for all replicas.

        A marker key records that Redis holds the spend; reservations report when it is
        missing (a restart without persistence, a flush, a new Redis). The first process
        to seed sets it; the others find it set. Returns whether this call seeded.
        """
        w = Windows.at(self._clock())
        spend = await spend_by_scope(source, w)
        head: list[Any] = [self._prefix, w.day, w.month, int(w.now)]
        if self._cluster is not None:  # each unseeded scope on its own, under its marker
            pending = sorted(self._unseeded)
            none = ScopeSpend()
            results = await self._calls.eval(
                [
                    self._scripts.command(
                        "seed",
                        [*head, i, (x := spend.get(i, none)).day, x.month, x.total],
                        (self._scripts.marker(i),),
                    )
                    for i in pending
                ]
            )
            self._unseeded.difference_update(pending)
            self.needs_seed = bool(self._unseeded)
            return any(results)
        args = list(head)
        for scope_id, s in spend.items():
            args += [scope_id, s.day, s.month, s.total]
        (seeded,) = await self._calls.eval([self._scripts.command("seed", args)])
        self.needs_seed = False
        return bool(seeded)

    # ------------------------------------------------------------------ reads

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        scopes = scopes_of(principal)
        if not any(s.has_budget for s in scopes):
            return None
        w = Windows.at(self._clock())
        keys = [
            self._scripts.key(s.id, suffix)
            for s in scopes
            for suffix in (f"sd:{w.day}", f"sm:{w.month}", "st")
        ]
        if self._cluster is None:
            (values,) = await self._calls.call([("MGET", *keys)])
        else:  # one MGET per scope: each scope's keys share its slot
            mgets = [("MGET", *keys[i : i + 3]) for i in range(0, len(keys), 3)]
            parts = await self._calls.call(mgets)
            values = [v for part in parts for v in part]
        states = [
            ScopeState(
                spend_daily=int(values[3 * i] or 0),
                spend_monthly=int(values[3 * i + 1] or 0),
                spend_total=int(values[3 * i + 2] or 0),
            )
            for i in range(len(scopes))
        ]
        return budget_remaining(scopes, states)

    async def spend_totals(self, period: str) -> dict[str, int]:
        """Settled nano-USD per key id in the current UTC ``period`` ("day" or "month"),
        for reconciliation with the ledger (holds of requests in flight left out).

        Scans the keyspace: an admin operation, not for the request path.
        """
        w = Windows.at(self._clock())
        label, tag, pos = (w.day, "sd", 3) if period == "day" else (w.month, "sm", 4)
        out: dict[str, int] = {}
        pattern = f"{self._prefix}{{k:*}}:{tag}:{label}"
        async for raw in self._calls.scan(pattern):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            key_id = name[len(self._prefix) + 3 : name.index("}:")]
            holds_key = self._scripts.key(f"k:{key_id}", "holds")

            # One transaction, so the spend and the holds are read at the same moment.
            *_, (value, holds) = await self._calls.call(
                [("MULTI",), ("GET", name), ("HVALS", holds_key), ("EXEC",)]
            )
            held = 0
            for rec in holds:
                fields = (rec.decode() if isinstance(rec, bytes) else str(rec)).split(":")
                if fields[pos] == label:
                    held += int(fields[1])
            spent = int(value or 0) - held
            if spent:
                out[key_id] = spent
        return out

    async def aclose(self) -> None:
        await self._link.aclose()
