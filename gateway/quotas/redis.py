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

Calls go over one multiplexed connection (:mod:`gateway.quotas.link`: why not
redis-py's pool is measured there), found through Sentinel
(:mod:`gateway.quotas.sentinel`) or one per Cluster primary
(:mod:`gateway.quotas.cluster`) as the URL says. Scripts are called by SHA and loaded
again when Redis lost them (a restart, a promoted replica). Link errors and error
replies are translated here, at one boundary, into :class:`QuotaStoreUnavailable`; the
failure policy lives in :mod:`gateway.quotas.fallback`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from gateway.auth import Principal
from gateway.config import QuotaSettings
from gateway.errors import QuotaStoreUnavailable
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
from gateway.quotas.link import LinkError, RedisLink, ReplyError
from gateway.quotas.sentinel import SentinelLink
from gateway.quotas.spend import ScopeSpend, SpendSource, spend_by_scope
from gateway.quotas.urls import ClusterTarget, SentinelTarget, parse_url

#: The connection: one Redis (standalone, or found through Sentinel), or a Cluster.
Link = RedisLink | ClusterLink


#: Plans kept per store (one per principal object the authenticator caches).
_PLANS_MAX = 4096


def make_link(settings: QuotaSettings) -> Link:
    """One multiplexed connection (per primary, on a Cluster) with a short timeout and
    no retries: the breaker decides what to do. The URL's form picks the kind.

    Connecting gets a longer allowance than a command: on a busy host a handshake can
    be slow without Redis being unwell, and a Redis that is down refuses at once anyway.
    """
    assert settings.redis_url is not None
    t = settings.redis_timeout_s
    target = parse_url(settings.redis_url.get_secret_value())
    kw: dict[str, Any] = {
        "timeout_s": t,
        "connect_timeout_s": max(1.0, 4 * t),
        "max_in_flight": settings.redis_max_in_flight,
    }
    if isinstance(target, SentinelTarget):
        return SentinelLink(target, **kw)
    if isinstance(target, ClusterTarget):
        return ClusterLink(target, **kw)
    return RedisLink(target, **kw)


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
        #: Replicas that must confirm each batch (``WAIT``; Sentinel's ``wait_replicas``).
        self._wait = self._link.wait_replicas
        self._wait_ms = max(1, int(settings.redis_timeout_s * 500))
        #: Redis Cluster: scopes whose seed marker was found missing (see :meth:`seed`).
        self._unseeded: set[str] = set()
        self._prefix = settings.redis_prefix
        self._ttl_ms = int(settings.reservation_ttl_s * 1000)
        self._clock = clock
        self._scripts = Scripts(self._prefix, self._ttl_ms, cluster=self._cluster is not None)
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
        await self._call([("SCRIPT", "LOAD", text) for text in self._scripts.texts.values()])

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
        raw = (await self._eval(commands))[-1]
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
        raws = (await self._eval(commands))[-len(plan.groups) :]
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
            await self._eval(self._scripts.settle(cancel))
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
            await self._eval([c for op in ops for c in self._scripts.settle(op)])

    def settle_now(self, op: SettleOp) -> asyncio.Future[Any] | None:
        """Write the settlement at once and return its reply's future, or None when the
        link is not connected. The caller checks the reply (an error reply comes in
        place, a NOSCRIPT among them) and falls back to :meth:`settle_many`."""
        if self._wait:
            return None  # confirmed by replicas only through the queue's path (WAIT)
        commands = self._scripts.settle(op)
        futs = self._link.send_now(commands)
        if futs is None:
            return None
        if len(futs) == 1:
            return futs[0]
        return _first_error(futs)

    # ------------------------------------------------------------------ seeding

    async def is_seeded(self) -> bool:
        """Whether Redis holds the spend (the marker exists); clears ``needs_seed`` if so.

        On a Cluster each scope has its own marker (in its slot): this checks those of
        the scopes that reservations found unseeded."""
        if self._cluster is not None:
            pending = sorted(self._unseeded)
            found = await self._call([("EXISTS", self._scripts.marker(i)) for i in pending])
            self._unseeded.difference_update(i for i, f in zip(pending, found, strict=True) if f)
            if not self._unseeded:
                self.needs_seed = False
            return not self._unseeded
        (found,) = await self._call([("EXISTS", f"{self._prefix}seeded")])
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
            results = await self._eval(
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
        (seeded,) = await self._eval([self._scripts.command("seed", args)])
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
            (values,) = await self._call([("MGET", *keys)])
        else:  # one MGET per scope: each scope's keys share its slot
            parts = await self._call([("MGET", *keys[i : i + 3]) for i in range(0, len(keys), 3)])
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
        async for raw in self._scan(pattern):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            key_id = name[len(self._prefix) + 3 : name.index("}:")]
            holds_key = self._scripts.key(f"k:{key_id}", "holds")

            # One transaction, so the spend and the holds are read at the same moment.
            *_, (value, holds) = await self._call(
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

    async def _scan(self, pattern: str) -> AsyncIterator[Any]:
        nodes: list[RedisLink | None] = [None]
        if self._cluster is not None:
            await self._cluster.refresh()
            nodes = list(self._cluster.primaries())  # every primary holds a share
        for node in nodes:
            cursor = 0
            while True:
                command = ("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
                ((cursor_raw, names),) = await self._call([command], node=node)
                cursor = int(cursor_raw)
                for name in names:
                    yield name
                if not cursor:
                    break

    async def aclose(self) -> None:
        await self._link.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _eval(self, commands: list[Command]) -> list[Any]:
        """EVALSHA the scripts in one round trip; load them once if Redis lost them."""
        results = await self._call(commands, errors_in_place=True)
        errors = [r for r in results if isinstance(r, ReplyError)]
        if not errors:
            return results
        self._link.note_errors(errors)
        missing = [i for i, r in enumerate(results) if _noscript(r)]
        if missing:
            # Only the calls refused by NOSCRIPT go again: they never ran. The others
            # did (on a Cluster, a new primary may lack the scripts while the other
            # slots' primaries ran theirs), and a reservation must not run twice.
            await self.ping()
            again = await self._call([commands[i] for i in missing], errors_in_place=True)
            for i, reply in zip(missing, again, strict=True):
                results[i] = reply
            errors = [r for r in results if isinstance(r, ReplyError)]
        if errors:
            self._link.note_errors(errors)
            raise QuotaStoreUnavailable("The quota store failed.") from errors[0]
        return results

    async def _call(
        self,
        commands: Sequence[Sequence[Any]],
        *,
        errors_in_place: bool = False,
        node: RedisLink | None = None,
    ) -> list[Any]:
        """Commands in one round trip (to ``node``, one Cluster primary, if given). Link
        failures, writes the replicas did not confirm (``wait_replicas``) and (unless
        ``errors_in_place``) error replies become :class:`QuotaStoreUnavailable`: the
        one translation point. Error replies saying the primary moved drop the
        connection, so the next call finds the new one (the caller reports those it
        keeps in place: :meth:`_eval`)."""
        link = self._link if node is None else node
        if self._wait:
            commands = [*commands, ("WAIT", self._wait, self._wait_ms)]
        try:
            results = await link.call_many(commands)
        except LinkError as exc:
            raise QuotaStoreUnavailable("The quota store is unreachable.") from exc
        if self._wait:
            acked = results.pop()
            if not isinstance(acked, int) or acked < self._wait:
                raise QuotaStoreUnavailable("The quota store's replicas did not confirm.")
        if not errors_in_place:
            errors = [r for r in results if isinstance(r, ReplyError)]
            if errors:
                self._link.note_errors(errors)
                raise QuotaStoreUnavailable("The quota store failed.") from errors[0]
        return results


def _noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and reply.code == "NOSCRIPT"


def _first_error(futs: list[asyncio.Future[Any]]) -> asyncio.Future[Any]:
    """One future for several replies: the first error reply, else the last reply."""
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(_: asyncio.Future[Any]) -> None:
        if out.done() or not all(f.done() for f in futs):
            return
        for f in futs:
            if f.cancelled() or f.exception() is not None or isinstance(f.result(), ReplyError):
                if f.cancelled():
                    out.cancel()
                else:
                    exc = f.exception()
                    out.set_result(f.result()) if exc is None else out.set_exception(exc)
                return
        out.set_result(futs[-1].result())

    for f in futs:
        f.add_done_callback(done)
    return out
