"""A finance report written out: CSV for spreadsheets, JSON for machines, table cells
for people (the CLI's table and the dashboard), so every view prints the same numbers.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Literal

import orjson

from gateway.ledger.money import format_usd, plain_usd
from gateway.ledger.report_types import Report, ReportRow, Totals

Format = Literal["table", "csv", "json"]


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
