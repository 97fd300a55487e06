"""Finance reports on SQLite and PostgreSQL: exact sums, groupings, ranges, CSV and JSON."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
from collections import defaultdict
from decimal import Decimal

import orjson
import pytest

from gateway.ledger.money import format_usd, plain_usd
from gateway.ledger.periods import parse_when, period_bounds
from gateway.ledger.record import LedgerRecord
from gateway.ledger.report_format import table_rows, to_csv, to_json
from gateway.ledger.report_types import ReportQuery
from gateway.ledger.reports import Reports
from gateway.ledger.store import LedgerStore
from tests.ledger.factories import make_record

KEYS = [
    ("key-a", "tg-aaaaaaa", "research"),
    ("key-b", "tg-bbbbbbb", "sales"),
    ("key-c", "tg-ccccccc", None),
]


def seed(store: LedgerStore, n: int = 400) -> list[LedgerRecord]:
    rng = random.Random(7)
    start = dt.datetime(2026, 2, 26, tzinfo=dt.UTC)
    out = []
    for i in range(n):
        key_id, prefix, team = rng.choice(KEYS)
        tier = rng.choice(["small", "small", "large"])
        prompt, completion = rng.randint(5, 2000), rng.randint(0, 800)
        cost = prompt * (50 if tier == "small" else 500) + completion * (
            200 if tier == "small" else 1500
        )
        out.append(
            make_record(
                i,
                finished_at=start + dt.timedelta(minutes=rng.randint(0, 60 * 24 * 8)),
                key_id=key_id,
                key_prefix=prefix,
                team=team,
                tier=tier,
                engine=f"{tier}-0",
                requested_model=rng.choice(["auto", tier]),
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=rng.randint(0, prompt // 4),
                usage_estimated=rng.random() < 0.1,
                status=rng.choice(["ok"] * 8 + ["error", "client_disconnect"]),
                cost_nusd=cost,
                counterfactual_nusd=prompt * 500 + completion * 1500,
            )
        )
    assert store.insert(out) == n
    return out


def expected(recs: list[LedgerRecord], key: str) -> dict[str | None, tuple[int, int, int]]:
    sums: dict[str | None, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in recs:
        s = sums[getattr(r, key)]
        s[0] += 1
        s[1] += r.cost_nusd
        s[2] += r.counterfactual_nusd
    return {k: (v[0], v[1], v[2]) for k, v in sums.items()}


def test_grouped_sums_are_exact(store: LedgerStore) -> None:
    recs = seed(store)
    reports = Reports(store.engine)
    for group, attr in (("team", "team"), ("tier", "tier"), ("model", "requested_model")):
        rep = reports.report(ReportQuery((group,)))
        got = {
            r.group[group]: (r.totals.requests, r.totals.cost_nusd, r.totals.counterfactual_nusd)
            for r in rep.rows
        }
        assert got == expected(recs, attr)
        costs = [r.totals.cost_nusd for r in rep.rows]
        assert costs == sorted(costs, reverse=True)  # biggest spender first
    total = reports.report(ReportQuery()).totals
    assert total.requests == len(recs)
    assert total.cost_nusd == sum(r.cost_nusd for r in recs)
    assert total.savings_nusd == sum(r.counterfactual_nusd - r.cost_nusd for r in recs)
    assert total.prompt_tokens == sum(r.prompt_tokens for r in recs)
    assert total.cached_tokens == sum(r.cached_tokens for r in recs)
    assert total.estimated == sum(r.usage_estimated for r in recs)
    assert total.errors == sum(r.status != "ok" for r in recs)


def test_by_key_carries_the_prefix_and_day_is_chronological(store: LedgerStore) -> None:
    recs = seed(store)
    reports = Reports(store.engine)
    by_key = reports.report(ReportQuery(("key",)))
    assert {(r.group["key_id"], r.group["key_prefix"]) for r in by_key.rows} == {
        (k, p) for k, p, _ in KEYS
    }
    by_day = reports.report(ReportQuery(("day", "tier")))
    days = [str(r.group["day"]) for r in by_day.rows]
    assert days == sorted(days)
    per_day: dict[str, int] = defaultdict(int)
    for r in recs:
        per_day[r.finished_at.date().isoformat()] += r.cost_nusd
    got: dict[str, int] = defaultdict(int)
    for row in by_day.rows:
        got[str(row.group["day"])] += row.totals.cost_nusd
    assert got == per_day
    by_month = reports.report(ReportQuery(("month",)))
    assert [r.group["month"] for r in by_month.rows] == ["2026-02", "2026-03"]


def test_ranges_are_half_open_and_filters_apply(store: LedgerStore) -> None:
    recs = seed(store)
    reports = Reports(store.engine)
    lo, hi = parse_when("2026-03-01"), parse_when("2026-03-02", end=True)
    assert (lo.isoformat(), hi.isoformat()) == (
        "2026-03-01T00:00:00+00:00",
        "2026-03-03T00:00:00+00:00",
    )
    inside = [r for r in recs if lo <= r.finished_at < hi]
    got = reports.report(ReportQuery(start=lo, end=hi)).totals
    assert (got.requests, got.cost_nusd) == (len(inside), sum(r.cost_nusd for r in inside))
    only = reports.report(ReportQuery(start=lo, end=hi, team="sales", tier="large")).totals
    want = [r for r in inside if r.team == "sales" and r.tier == "large"]
    assert (only.requests, only.cost_nusd) == (len(want), sum(r.cost_nusd for r in want))
    edge = recs[0].finished_at
    assert (
        reports.report(
            ReportQuery(start=edge, end=edge + dt.timedelta(microseconds=1))
        ).totals.requests
        >= 1
    )
    assert reports.report(ReportQuery(end=edge)).totals.requests == sum(
        r.finished_at < edge for r in recs
    )


def test_csv_is_what_a_spreadsheet_expects(store: LedgerStore) -> None:
    recs = seed(store)
    rep = Reports(store.engine).report(ReportQuery(("day", "team")))
    text = to_csv(rep)
    assert text.splitlines()[0] == (
        "day,team,requests,prompt_tokens,completion_tokens,cached_tokens,cost_usd,"
        "counterfactual_usd,savings_usd,savings_pct,estimated_requests,error_requests"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(rep.rows)
    for row in rows:
        dt.date.fromisoformat(row["day"])  # ISO dates
        for col in ("cost_usd", "counterfactual_usd", "savings_usd"):
            assert "," not in row[col] and len(row[col].split(".")[1]) == 9
            float(row[col])  # dot decimal: parses in any C-locale spreadsheet
    total = sum(Decimal(r["cost_usd"]) for r in rows)
    assert total == Decimal(sum(r.cost_nusd for r in recs)) / Decimal(10**9)


def test_json_carries_exact_integers_and_the_query(store: LedgerStore) -> None:
    recs = seed(store)
    lo = parse_when("2026-02-01")
    rep = Reports(store.engine).report(ReportQuery(("key",), start=lo, limit=2))
    body = orjson.loads(to_json(rep))
    assert body["group_by"] == ["key"] and body["start"] == "2026-02-01T00:00:00+00:00"
    assert len(body["rows"]) == 2
    assert body["totals"]["cost_nusd"] == sum(r.cost_nusd for r in recs)
    assert body["totals"]["savings_nusd"] == body["totals"]["counterfactual_nusd"] - sum(
        r.cost_nusd for r in recs
    )


def test_table_rows_end_with_the_total(store: LedgerStore) -> None:
    seed(store)
    rep = Reports(store.engine).report(ReportQuery(("team",)))
    header, body = table_rows(rep)
    assert header[:2] == ["team", "requests"]
    assert body[-1][0] == "TOTAL"
    assert body[-1][header.index("cost")] == format_usd(rep.totals.cost_nusd)
    assert "(none)" in [row[0] for row in body]  # the key without a team


def test_empty_ledger_reports_zero(store: LedgerStore) -> None:
    rep = Reports(store.engine).report(ReportQuery(("tier",)))
    assert rep.rows == [] and rep.totals.requests == 0 and rep.totals.savings_pct is None
    assert to_csv(rep).count("\r\n") == 1  # the header alone


def test_money_formats() -> None:
    assert format_usd(1_234_567_890_123) == "$1,234.567890"
    assert format_usd(500) == "$0.000001"  # half-up at 6 places
    assert format_usd(-2_500_000) == "-$0.002500"
    assert plain_usd(1_234_567_890_123) == "1234.567890123"
    assert plain_usd(-5) == "-0.000000005"


def test_bad_queries_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown group_by"):
        ReportQuery(("colour",))
    with pytest.raises(ValueError, match="twice"):
        ReportQuery(("day", "day"))
    with pytest.raises(ValueError, match="time zone"):
        ReportQuery(start=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="after start"):
        ReportQuery(start=parse_when("2026-02-01"), end=parse_when("2026-01-01"))
    with pytest.raises(ValueError, match="ISO"):
        parse_when("yesterday")


def test_when_and_periods() -> None:
    assert parse_when("2026-02", end=True) == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert parse_when("2026-12", end=True) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert parse_when("2026-03-01T10:00:00Z") == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
    assert parse_when("2026-03-01T10:00:00") == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
    now = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)
    assert period_bounds("day", now) == (
        dt.datetime(2026, 12, 31, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )
    assert period_bounds("month", now)[0] == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
