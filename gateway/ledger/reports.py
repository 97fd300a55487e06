"""Finance reports from the ledger: spend, counterfactual spend and savings, grouped.

One query answers every report: rows grouped by any of :data:`GROUPS` over a
half-open time range ``[start, end)`` of ``finished_at`` (a request is billed when it
finishes, at the price in force then). Sums are exact integers of nano-USD; they are
turned into USD only for display, by :func:`usd`. The CLI (`tollgate report`), the admin
API and the dashboard all format through this module, so they print the same numbers.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, Engine, case, func, select

from gateway.ledger.models import TABLE, LedgerRow
from gateway.ledger.store import translate_errors

_T = LedgerRow.metadata.tables[TABLE]
NANO = Decimal(1_000_000_000)
Format = Literal["table", "csv", "json"]


@dataclass(frozen=True, slots=True)
class Group:
    """A way to group rows: the output columns and the SQL expressions behind them."""

    columns: tuple[tuple[str, ColumnElement[Any]], ...]
    #: Time groupings sort chronologically; the others by cost.
    chronological: bool = False


GROUPS: Mapping[str, Group] = MappingProxyType(
    {
        "key": Group((("key_id", _T.c.key_id), ("key_prefix", _T.c.key_prefix))),
        "team": Group((("team", _T.c.team),)),
        "model": Group((("model", _T.c.requested_model),)),
        "upstream_model": Group((("upstream_model", _T.c.upstream_model),)),
        "engine": Group((("engine", _T.c.engine),)),
        "tier": Group((("tier", _T.c.tier),)),
        "status": Group((("status", _T.c.status),)),
        "price_version": Group((("price_version", _T.c.price_version),)),
        "day": Group((("day", _T.c.day),), chronological=True),
        "month": Group((("month", func.substr(_T.c.day, 1, 7)),), chronological=True),
    }
)


# ---------------------------------------------------------------------------- values


def usd(nusd: int) -> Decimal:
    """Exact USD of an amount of nano-USD."""
    return Decimal(nusd) / NANO


def format_usd(nusd: int, places: int = 6) -> str:
    """For people: ``$1,234.567890`` (rounded half-up); the one format every view uses."""
    quantum = Decimal(1).scaleb(-places)
    value = usd(nusd).quantize(quantum, rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{places}f}"


def plain_usd(nusd: int) -> str:
    """For machines: exact, dot decimal, no grouping (``1234.567890123``)."""
    return f"{usd(nusd):.9f}"


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over a set of ledger rows."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nusd: int = 0
    counterfactual_nusd: int = 0
    estimated: int = 0
    errors: int = 0

    @property
    def savings_nusd(self) -> int:
        """What routing saved against sending everything to the reference tier."""
        return self.counterfactual_nusd - self.cost_nusd

    @property
    def savings_pct(self) -> float | None:
        if self.counterfactual_nusd <= 0:
            return None
        return round(100 * self.savings_nusd / self.counterfactual_nusd, 2)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "estimated_requests": self.estimated,
            "error_requests": self.errors,
            "cost_nusd": self.cost_nusd,
            "counterfactual_nusd": self.counterfactual_nusd,
            "savings_nusd": self.savings_nusd,
            "cost_usd": float(usd(self.cost_nusd)),
            "counterfactual_usd": float(usd(self.counterfactual_nusd)),
            "savings_usd": float(usd(self.savings_nusd)),
            "savings_pct": self.savings_pct,
        }


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """What to report: groupings, a half-open time range and optional filters."""

    group_by: tuple[str, ...] = ()
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    key_id: str | None = None
    team: str | None = None
    tier: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        unknown = [g for g in self.group_by if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown group_by {unknown}; choose from {', '.join(sorted(GROUPS))}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by lists a grouping twice")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must carry a time zone")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")

    @property
    def columns(self) -> list[str]:
        return [name for g in self.group_by for name, _ in GROUPS[g].columns]


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One group's values (column -> value) and its sums."""

    group: dict[str, str | None]
    totals: Totals


@dataclass(frozen=True, slots=True)
class Report:
    """A report's rows and grand totals, as of ``generated_at``."""

    query: ReportQuery
    rows: list[ReportRow]
    totals: Totals
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


# ---------------------------------------------------------------------------- queries


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


# ---------------------------------------------------------------------------- time ranges


def parse_when(text: str, *, end: bool = False) -> dt.datetime:
    """A report bound from ISO 8601: a date, a datetime (naive = UTC) or ``YYYY-MM``.

    As an ``end``, a bare date or month includes that whole day or month (finance says
    "from 2026-03-01 to 2026-03-31"); a datetime is exclusive.
    """
    text = text.strip()
    try:
        if len(text) == 7:  # YYYY-MM
            first = dt.date.fromisoformat(text + "-01")
            if end:
                first = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            return dt.datetime.combine(first, dt.time(), dt.UTC)
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            if end:
                day += dt.timedelta(days=1)
            return dt.datetime.combine(day, dt.time(), dt.UTC)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not an ISO date or datetime: {text!r} (e.g. 2026-03-01, 2026-03, "
            "2026-03-01T12:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def period_bounds(
    period: Literal["day", "month"], now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """The current UTC day or month containing ``now``: ``[start, next start)``."""
    today = now.astimezone(dt.UTC).date()
    if period == "day":
        first, nxt = today, today + dt.timedelta(days=1)
    else:
        first = today.replace(day=1)
        nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return (
        dt.datetime.combine(first, dt.time(), dt.UTC),
        dt.datetime.combine(nxt, dt.time(), dt.UTC),
    )


# ---------------------------------------------------------------------------- output


def to_csv(report: Report) -> str:
    """Spreadsheet-ready CSV: one header row, ISO dates, dot decimals, exact USD."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(
        [
            *report.query.columns,
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd",
            "counterfactual_usd",
            "savings_usd",
            "savings_pct",
            "estimated_requests",
            "error_requests",
        ]
    )
    rows = report.rows or ([ReportRow({}, report.totals)] if not report.query.columns else [])
    for row in rows:
        t = row.totals
        pct = t.savings_pct
        w.writerow(
            [
                *[row.group.get(c) or "" for c in report.query.columns],
                t.requests,
                t.prompt_tokens,
                t.completion_tokens,
                t.cached_tokens,
                plain_usd(t.cost_nusd),
                plain_usd(t.counterfactual_nusd),
                plain_usd(t.savings_nusd),
                "" if pct is None else f"{pct:.2f}",
                t.estimated,
                t.errors,
            ]
        )
    return buf.getvalue()


def to_json(report: Report) -> bytes:
    q = report.query
    body = {
        "group_by": list(q.group_by),
        "start": q.start.isoformat() if q.start else None,
        "end": q.end.isoformat() if q.end else None,
        "generated_at": report.generated_at.isoformat(),
        "currency": "USD",
        "rows": [{**r.group, **r.totals.to_dict()} for r in report.rows],
        "totals": report.totals.to_dict(),
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2)


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and cells for people (the CLI's table and the dashboard), grand total last."""
    cols = report.query.columns
    header = [*cols, "requests", "tokens", "cost", "counterfactual", "savings", "savings %"]

    def money(t: Totals) -> list[str]:
        pct = t.savings_pct
        return [
            f"{t.requests:,}",
            f"{t.tokens:,}",
            format_usd(t.cost_nusd),
            format_usd(t.counterfactual_nusd),
            format_usd(t.savings_nusd),
            "" if pct is None else f"{pct:.1f}%",
        ]

    def label(value: str | None) -> str:
        return "(none)" if value is None else str(value)

    body = [[*(label(row.group.get(c)) for c in cols), *money(row.totals)] for row in report.rows]
    body.append([*(["TOTAL"] + [""] * (len(cols) - 1) if cols else []), *money(report.totals)])
    return header, body


def describe_range(start: dt.datetime | None, end: dt.datetime | None) -> str:
    def show(v: dt.datetime | None, default: str) -> str:
        return v.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if v else default

    return f"{show(start, 'beginning')} → {show(end, 'now')} (end exclusive)"


def group_names() -> Sequence[str]:
    return sorted(GROUPS)
