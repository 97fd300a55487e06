"""The quota store's keys in Redis, and the script calls that read and write them.

Keys (``P`` = ``quotas.redis_prefix``, ``S`` = ``k:<key id>`` or ``t:<team>``)::

    P{S}:rpm:<minute>   requests admitted this minute          (expires after 120 s)
    P{S}:tpm:<minute>   tokens reserved/used this minute       (expires after 120 s)
    P{S}:sd:<YYYYMMDD>  nano-USD spent today, holds included   (expires after 3 days)
    P{S}:sm:<YYYYMM>    nano-USD spent this month              (expires after 70 days)
    P{S}:st             nano-USD spent in total
    P{S}:held           worst-case cost of the holds in flight
    P{S}:inf            sorted set: hold id -> expiry (ms); its size is the concurrency
    P{S}:holds          hash: hold id -> "tokens:cost:minute:day:month"
    P{S}:done:<hold id> marker of a settlement made without a hold (idempotency)
    Pseeded             marker: Redis holds the ledger's spend (standalone, Sentinel)
    P{S}:seeded         the same, per scope (Redis Cluster)

**Redis Cluster.** ``{S}`` is a hash tag: every key of one API key is in one slot, and
every key of one team in one slot (usually another). Each script call touches one slot,
so it is atomic on the primary that serves it. A key and its team are not put in one
slot: a team's keys would all share its slot (one primary taking a whole team's
traffic), and a key moving team would move its counters. So a reservation whose
scopes are in different slots runs reserve.lua once per slot, all in one round trip
(the primaries answer in parallel), and **consistency across the two slots** holds as
follows:

* Each slot's step is atomic and checks only its own limits. The reservation is
  admitted when every step admits.
* When a step refuses, the steps that admitted are cancelled (settle.lua mode ``2``:
  the hold, its tokens, its cost and its request are all given back). Between the
  admission and the cancel (one round trip), the other slot shows a hold that will
  vanish: concurrent reservations there may be refused that would have fitted. That
  errs on the refusing side only, by at most the reservations in flight at once, and
  for no longer than a round trip. Nothing is admitted that a single atomic script
  would have refused: each slot's limit is checked atomically against everything held
  there.
* If the cancel cannot be sent (a primary fails), the failover store releases the hold
  later (settle mode ``1`` with no usage): tokens and cost come back, the request stays
  in the rate window (refusing side again, until the window ends).
* Settlements run per slot; each step is idempotent by hold id (a hold is released at
  most once, a hold-less charge is guarded by its scope's ``done`` marker), so
  replaying a whole settlement after a partial failure cannot count twice.
* Seed markers are per scope (no key can be read from every slot): a reservation
  reports a scope whose marker is missing, and seeding restores that scope's spend
  under its own marker, once across replicas.

On a standalone Redis (or one behind Sentinel) every scope is on the one server, and a
reservation is one script whatever its scopes.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.auth import Principal
from gateway.quotas.base import Demand
from gateway.quotas.cluster import key_slot
from gateway.quotas.limits import Scope, ScopeState, scopes_of

SCRIPTS_DIR = Path(__file__).resolve().parent
STATE_LEN = 7
#: Order of the limits in a scope's limit string, as reserve.lua reads them.
ARG_ORDER = ("rpm", "tpm", "concurrency", "budget_daily", "budget_monthly", "budget_total")

Command = tuple[Any, ...]
#: Redis Cluster: the scopes of one slot, as (their indexes, their seed markers).
Group = tuple[tuple[int, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class RedisHold:
    """The store token of a reservation held in Redis."""

    hold_id: str
    scope_ids: tuple[str, ...]


def new_hold_id(request_id: str) -> str:
    """A hold id unique per reservation (clients may reuse their X-Request-ID)."""
    return f"{request_id}~{secrets.token_hex(6)}"


@dataclass(frozen=True, slots=True)
class SettleOp:
    """One settlement, with the windows of the moment the request ended.

    ``held``: the reservation was made in Redis (release its hold); otherwise it was made
    while Redis was unreachable and the actual cost is charged once, under a marker.
    """

    hold_id: str
    scope_ids: tuple[str, ...]
    actual: Demand
    held: bool
    day: str
    month: str
    #: Undo a reservation (Cluster, refused in another slot): the request leaves the
    #: rate window too.
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """A principal's scopes and their part of reserve.lua's arguments, built once."""

    scopes: tuple[Scope, ...]
    ids: tuple[str, ...]
    args: tuple[str, ...]
    #: Redis Cluster only: the scopes by slot.
    groups: tuple[Group, ...] = ()


class Scripts:
    """The Lua scripts and the commands that call them, for one key prefix and for a
    standalone Redis or a Cluster (where each call names a key of its slot in KEYS)."""

    def __init__(self, prefix: str, ttl_ms: int, *, cluster: bool) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self._ttl_ms = ttl_ms
        self.texts = {
            name: (SCRIPTS_DIR / f"{name}.lua").read_text()
            for name in ("reserve", "settle", "seed")
        }
        self._sha = {n: hashlib.sha1(t.encode()).hexdigest() for n, t in self.texts.items()}

    def plan(self, principal: Principal) -> Plan:
        scopes = scopes_of(principal)
        args: list[str] = []
        for s in scopes:
            args += [s.id, " ".join(str(_lim(s.limit(k))) for k in ARG_ORDER)]
        groups: tuple[Group, ...] = ()
        if self.cluster:
            by_slot: dict[int, list[int]] = {}
            for i, s in enumerate(scopes):
                by_slot.setdefault(scope_slot(s.id), []).append(i)
            groups = tuple(
                (tuple(ix), tuple(self.marker(scopes[i].id) for i in ix)) for ix in by_slot.values()
            )
        return Plan(scopes, tuple(s.id for s in scopes), tuple(args), groups)

    def command(self, script: str, args: list[Any], keys: tuple[str, ...] = ()) -> Command:
        """The EVALSHA command running one of our scripts. Scope ids are arguments; KEYS
        are empty on a standalone Redis and on a Cluster name a key of the script's slot
        (for routing, and seed markers where the script reads them)."""
        return ("EVALSHA", self._sha[script], len(keys), *keys, *args)

    def settle(self, op: SettleOp) -> list[Command]:
        """The settle.lua call(s) of one settlement: one, or on a Cluster one per slot."""
        mode = "2" if op.cancel else "1" if op.held else "0"
        head = [
            self.prefix,
            op.hold_id,
            mode,
            op.actual.tokens,
            op.actual.cost_nusd,
            op.day,
            op.month,
            2 * self._ttl_ms,
        ]
        if not self.cluster:
            return [self.command("settle", [*head, *op.scope_ids])]
        by_slot: dict[int, list[str]] = {}
        for scope_id in op.scope_ids:
            by_slot.setdefault(scope_slot(scope_id), []).append(scope_id)
        return [
            self.command("settle", [*head, *ids], (self.key(ids[0], "holds"),))
            for ids in by_slot.values()
        ]

    def key(self, scope_id: str, suffix: str) -> str:
        return f"{self.prefix}{{{scope_id}}}:{suffix}"

    def marker(self, scope_id: str) -> str:
        """A scope's own seed marker (Redis Cluster)."""
        return self.key(scope_id, "seeded")


def scope_slot(scope_id: str) -> int:
    """The Cluster slot of a scope's keys (their hash tag is ``{<scope id>}``)."""
    return key_slot("{" + scope_id + "}")


def states(flat: list[int], n: int) -> list[ScopeState]:
    """The scope states of a reserve.lua reply."""
    return [ScopeState(*flat[i * STATE_LEN : (i + 1) * STATE_LEN]) for i in range(n)]


def _lim(value: int | None) -> int:
    return -1 if value is None else value
