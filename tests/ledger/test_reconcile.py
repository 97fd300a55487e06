"""Reconciliation of the quota store's spend counters with the ledger."""

from __future__ import annotations

import datetime as dt

from gateway.auth import Principal
from gateway.ledger.reconcile import compare, reconcile
from gateway.ledger.reports import Reports
from gateway.ledger.store import LedgerStore
from gateway.quotas.base import Demand
from gateway.quotas.local import LocalQuotaStore
from tests.ledger.factories import make_record

ALICE = Principal(key_id="key-a", key_prefix="tg-aaaaaaa", name="alice", team="research")
BOB = Principal(key_id="key-b", key_prefix="tg-bbbbbbb", name="bob")


async def _serve(
    quotas: LocalQuotaStore, store: LedgerStore, who: Principal, n: int, cost: int
) -> None:
    """What the pipeline does per request: reserve, settle the actual cost, record it."""
    now = dt.datetime.now(dt.UTC)
    rid = f"{who.key_id}-{n}"
    held = await quotas.reserve(who, rid, Demand(tokens=100, cost_nusd=cost * 3))
    await quotas.settle(held, Demand(tokens=60, cost_nusd=cost))
    store.insert(
        [make_record(0, request_id=rid, key_id=who.key_id, finished_at=now, cost_nusd=cost)]
    )


async def test_counters_and_ledger_agree_to_the_nano_dollar(store: LedgerStore) -> None:
    quotas = LocalQuotaStore()
    for i in range(5):
        await _serve(quotas, store, ALICE, i, 1_234_567 + i)
    await _serve(quotas, store, BOB, 0, 999)
    for period in ("day", "month"):
        result = await reconcile(Reports(store.engine), quotas, period)
        assert result.ok, result.to_dict()
        assert result.ledger_total_nusd == result.counter_total_nusd == 5 * 1_234_567 + 10 + 999
        assert [k.key_id for k in result.keys] == ["key-a", "key-b"]


async def test_a_record_the_counters_never_saw_is_a_mismatch(store: LedgerStore) -> None:
    quotas = LocalQuotaStore()
    await _serve(quotas, store, ALICE, 0, 5_000)
    store.insert(
        [make_record(9, key_id="key-a", finished_at=dt.datetime.now(dt.UTC), cost_nusd=42)]
    )
    held = await quotas.reserve(BOB, "in-flight", Demand(tokens=10, cost_nusd=77))
    result = await reconcile(Reports(store.engine), quotas, "day")
    assert not result.ok
    assert [(k.key_id, k.difference_nusd) for k in result.mismatches] == [("key-a", -42)]
    # a reservation still in flight is not spend: bob is absent, not a mismatch
    assert "key-b" not in {k.key_id for k in result.keys}
    await quotas.settle(held, Demand(tokens=0, cost_nusd=0))
    tolerant = await reconcile(Reports(store.engine), quotas, "day", tolerance_nusd=42)
    assert tolerant.ok


async def test_yesterday_is_outside_todays_window(store: LedgerStore) -> None:
    quotas = LocalQuotaStore()
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    store.insert([make_record(1, finished_at=yesterday, cost_nusd=10**9)])
    result = await reconcile(Reports(store.engine), quotas, "day")
    assert result.ok and result.keys == []


def test_compare_lists_keys_from_both_sides() -> None:
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    r = compare("day", now, now, {"a": 5, "b": 7}, {"b": 7, "c": 1}, tolerance_nusd=0)
    assert [(k.key_id, k.ledger_nusd, k.counter_nusd) for k in r.keys] == [
        ("a", 5, 0),
        ("b", 7, 7),
        ("c", 0, 1),
    ]
    assert [k.key_id for k in r.mismatches] == ["a", "c"]
    assert r.to_dict()["mismatches"] == ["a", "c"]
