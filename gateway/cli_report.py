"""``tollgate report``: spend, counterfactual spend and savings from the ledger, grouped,
as a table, CSV or JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli_finance_common import ConfigOpt, DbOpt, fail, load_settings, redact_url


def report(
    group_by: Annotated[
        list[str] | None,
        typer.Option(
            "--group-by",
            "-g",
            help="key, team, model, upstream_model, engine, tier, status, price_version, "
            "day, month (repeat or comma-separate).",
        ),
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="From (ISO date/datetime, YYYY-MM; UTC if no zone).")
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="To: a date or month is included whole; a datetime is exclusive."),
    ] = None,
    month: Annotated[str | None, typer.Option(help="Shortcut for one month: YYYY-MM.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this key id.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team.")] = None,
    tier: Annotated[str | None, typer.Option(help="Only this tier.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many rows.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Spend, counterfactual spend and savings from the ledger, grouped."""
    from gateway.ledger.periods import parse_when
    from gateway.ledger.report_format import to_csv, to_json
    from gateway.ledger.report_types import ReportQuery
    from gateway.ledger.reports import Reports
    from gateway.ledger.store import LedgerStore, LedgerUnavailableError

    if fmt not in ("table", "csv", "json"):
        raise fail("--format must be table, csv or json")
    if month and (start or end):
        raise fail("--month cannot be combined with --start/--end")
    groups = tuple(g.strip() for item in group_by or () for g in item.split(",") if g.strip())
    first, last = (month, month) if month else (start, end)
    try:
        lo = parse_when(first) if first else None
        hi = parse_when(last, end=True) if last else None
        query = ReportQuery(groups, lo, hi, key_id=key, team=team, tier=tier, limit=limit)
    except ValueError as exc:
        raise fail(str(exc)) from None
    url = db or load_settings(config).ledger.url
    store = LedgerStore.from_url(url)
    try:
        result = Reports(store.engine).report(query)
    except LedgerUnavailableError as exc:
        raise fail(f"{exc.message} ({redact_url(url)})", 1) from None
    finally:
        store.dispose()
    if fmt == "csv":
        _emit(to_csv(result), output)
    elif fmt == "json":
        _emit(to_json(result).decode() + "\n", output)
    else:
        _emit_table(result, output)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, newline="")
        typer.echo(f"wrote {output}", err=True)


def _emit_table(result: Any, output: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from gateway.ledger.report_format import describe_range, table_rows

    header, rows = table_rows(result)
    q = result.query
    table = Table(
        title=f"Tollgate spend, {describe_range(q.start, q.end)}",
        caption="savings = counterfactual (all on the reference tier) - cost",
    )
    text_cols = len(q.columns)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < text_cols else "right", no_wrap=True)
    for i, row in enumerate(rows):
        table.add_row(*row, style="bold" if i == len(rows) - 1 else None)
    if output is None:
        Console(width=max(100, Console().width)).print(table)
    else:
        with output.open("w") as f:
            Console(file=f, width=160, no_color=True).print(table)
