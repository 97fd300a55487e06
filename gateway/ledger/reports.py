"""Finance reports from the ledger: spend, counterfactual spend and savings, grouped.

One query answers every report: rows grouped by any of
:data:`~gateway.ledger.report_types.GROUPS` over a half-open time range ``[start, end)``
of ``finished_at`` (a request is billed when it finishes, at the price in force then).
Sums are exact integers of nano-USD (:mod:`gateway.ledger.money` turns them into USD);
:mod:`gateway.ledger.report_format` writes a report as CSV, JSON or table cells and
:mod:`gateway.ledger.periods` reads the time bounds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, func, select

from gateway.ledger.models import TABLE, LedgerRow
from gateway.ledger.report_types import GROUPS, Report, ReportQuery, ReportRow, Totals
from gateway.ledger.store import translate_errors

_T = LedgerRow.metadata.tables[TABLE]


def _aggregates() -> list[ColumnElement[Any]]:
    def total(col: ColumnElement[Any], name: str) -> ColumnElement[Any]:
        return func.coalesce(func.sum(col), 0).label(name)

    return [
        func.count().label("requests"),
        total(_T.c.prompt_tokens, "prompt_tokens"),
        total(_T.c.completion_tokens, "completion_tokens"),
        total(_T.c.cached_tokens, "cached_tokens"),
        total(_T.c.cost_nusd, "cost_nusd"),
        total(_T.c.counterfactual_nusd, "counterfactual_nusd"),
        total(case((_T.c.usage_estimated, 1), else_=0), "estimated"),
        total(case((_T.c.status != "ok", 1), else_=0), "errors"),
    ]


def _totals(row: Any) -> Totals:
    m = row._mapping
    # PostgreSQL returns SUM(bigint) as numeric: int() keeps it exact.
    return Totals(
        requests=int(m["requests"]),
        prompt_tokens=int(m["prompt_tokens"]),
        completion_tokens=int(m["completion_tokens"]),
        cached_tokens=int(m["cached_tokens"]),
        cost_nusd=int(m["cost_nusd"]),
        counterfactual_nusd=int(m["counterfactual_nusd"]),
        estimated=int(m["estimated"]),
        errors=int(m["errors"]),
    )


class Reports:
    """Runs report queries against the ledger database (blocking; call from a thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _filters(self, q: ReportQuery) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if q.start is not None:
            where.append(_T.c.finished_at >= q.start)
        if q.end is not None:
            where.append(_T.c.finished_at < q.end)
        if q.key_id is not None:
            where.append(_T.c.key_id == q.key_id)
        if q.team is not None:
            where.append(_T.c.team == q.team)
        if q.tier is not None:
            where.append(_T.c.tier == q.tier)
        return where

    def report(self, q: ReportQuery) -> Report:
        cols = [expr.label(name) for g in q.group_by for name, expr in GROUPS[g].columns]
        where = self._filters(q)
        stmt = select(*cols, *_aggregates()).where(*where)
        if cols:
            stmt = stmt.group_by(*[expr for g in q.group_by for _, expr in GROUPS[g].columns])
        grand = select(*_aggregates()).where(*where)
        with translate_errors(), self.engine.connect() as conn:
            fetched = conn.execute(stmt).all() if cols else []
            totals = _totals(conn.execute(grand).one())
        rows = [
            ReportRow({name: r._mapping[name] for name in q.columns}, _totals(r)) for r in fetched
        ]
        rows.sort(key=lambda r: _order(q, r))
        if q.limit is not None:
            rows = rows[: q.limit]
        return Report(q, rows, totals)

    def totals(self, start: dt.datetime | None = None, end: dt.datetime | None = None) -> Totals:
        return self.report(ReportQuery(start=start, end=end)).totals

    def spend_by_key(self, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
        """Nano-USD per key id over ``[start, end)`` (for reconciliation)."""
        stmt = (
            select(_T.c.key_id, func.coalesce(func.sum(_T.c.cost_nusd), 0))
            .where(_T.c.finished_at >= start, _T.c.finished_at < end)
            .group_by(_T.c.key_id)
        )
        with translate_errors(), self.engine.connect() as conn:
            return {k: int(v) for k, v in conn.execute(stmt).all()}

    def price_versions(self, start: dt.datetime | None, end: dt.datetime | None) -> list[str]:
        q = ReportQuery(start=start, end=end)
        stmt = select(_T.c.price_version).where(*self._filters(q)).distinct()
        with translate_errors(), self.engine.connect() as conn:
            return sorted(conn.execute(stmt).scalars())


def _order(q: ReportQuery, row: ReportRow) -> tuple[Any, ...]:
    chrono = tuple(
        row.group[name] or ""
        for g in q.group_by
        if GROUPS[g].chronological
        for name, _ in GROUPS[g].columns
    )
    rest = tuple(row.group[name] or "" for name in q.columns)
    return (*chrono, -row.totals.cost_nusd, rest)
