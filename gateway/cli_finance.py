"""Finance commands: ``report``, ``reconcile``, ``prices list|derive`` and ``db upgrade``.

:func:`register` adds them to the ``tollgate`` typer app. Nothing runs at import.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.config import ConfigError, Settings

#: Builds the quota store's spend counters for `tollgate reconcile` (wired by the CLI).
CountersFactory = Callable[[Settings], Any]

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: $TOLLGATE_CONFIG or configs/)."),
]
DbOpt = Annotated[
    str | None, typer.Option("--db", help="Ledger database URL (default: ledger.url).")
]


def _settings(config: Path | None) -> Settings:
    try:
        return Settings.load(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# ---------------------------------------------------------------------------- report


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
    from gateway.ledger.reports import ReportQuery, Reports, parse_when, to_csv, to_json
    from gateway.ledger.store import LedgerStore, LedgerUnavailableError

    if fmt not in ("table", "csv", "json"):
        raise _fail("--format must be table, csv or json")
    if month and (start or end):
        raise _fail("--month cannot be combined with --start/--end")
    groups = tuple(g.strip() for item in group_by or () for g in item.split(",") if g.strip())
    first, last = (month, month) if month else (start, end)
    try:
        lo = parse_when(first) if first else None
        hi = parse_when(last, end=True) if last else None
        query = ReportQuery(groups, lo, hi, key_id=key, team=team, tier=tier, limit=limit)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    url = db or _settings(config).ledger.url
    store = LedgerStore.from_url(url)
    try:
        result = Reports(store.engine).report(query)
    except LedgerUnavailableError as exc:
        raise _fail(f"{exc.message} ({_redact(url)})", 1) from None
    finally:
        store.dispose()
    if fmt == "csv":
        _emit(to_csv(result), output)
    elif fmt == "json":
        _emit(to_json(result).decode() + "\n", output)
    else:
        _emit_table(result, output)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "ledger database"


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, newline="")
        typer.echo(f"wrote {output}", err=True)


def _emit_table(result: Any, output: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from gateway.ledger.reports import describe_range, table_rows

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


# ---------------------------------------------------------------------------- reconcile


def make_reconcile(counters_factory: CountersFactory | None) -> Callable[..., None]:
    def reconcile(
        period: Annotated[str, typer.Option(help="day or month (current, UTC).")] = "day",
        tolerance_nusd: Annotated[
            int, typer.Option(min=0, help="Allowed difference per key, nano-USD.")
        ] = 0,
        gateway: Annotated[
            str | None,
            typer.Option(
                help="Ask a running gateway (its /admin/reconcile), e.g. for local quotas."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Compare the ledger with the quota store's spend counters; exit 1 on a mismatch."""
        if period not in ("day", "month"):
            raise _fail("--period must be day or month")
        settings = _settings(config)
        if gateway is not None:
            data = _reconcile_remote(gateway, settings, period, tolerance_nusd)
        else:
            data = _reconcile_local(settings, db, counters_factory, period, tolerance_nusd)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            _print_reconciliation(data)
        if not data["ok"]:
            raise typer.Exit(1)

    return reconcile


def _reconcile_remote(base: str, settings: Settings, period: str, tolerance: int) -> dict[str, Any]:
    import httpx

    token = os.environ.get("TOLLGATE_ADMIN_TOKEN") or (
        settings.auth.admin_token.get_secret_value() if settings.auth.admin_token else None
    )
    if not token:
        raise _fail("no admin token: set auth.admin_token or $TOLLGATE_ADMIN_TOKEN")
    try:
        resp = httpx.get(
            base.rstrip("/") + "/admin/reconcile",
            params={"period": period, "tolerance_nusd": tolerance},
            headers={"authorization": f"Bearer {token}"},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the gateway: {type(exc).__name__}", 1) from None
    if resp.status_code != 200:
        raise _fail(f"the gateway answered {resp.status_code}: {resp.text[:300]}", 1)
    data: dict[str, Any] = resp.json()
    return data


def _reconcile_local(
    settings: Settings,
    db: str | None,
    factory: CountersFactory | None,
    period: str,
    tolerance: int,
) -> dict[str, Any]:
    from gateway.ledger.reconcile import reconcile
    from gateway.ledger.reports import Reports
    from gateway.ledger.store import LedgerStore, LedgerUnavailableError

    counters = (factory or default_counters)(settings)
    if counters is None:
        raise _fail(
            "the local quota store's counters live in the gateway process: "
            "use --gateway http://HOST:PORT"
        )
    store = LedgerStore.from_url(db or settings.ledger.url)

    async def run() -> dict[str, Any]:
        try:
            result = await reconcile(
                Reports(store.engine),
                counters,
                "day" if period == "day" else "month",
                tolerance_nusd=tolerance,
            )
            return result.to_dict()
        finally:
            close = getattr(counters, "aclose", None)
            if close is not None:
                await close()

    try:
        return asyncio.run(run())
    except LedgerUnavailableError as exc:
        raise _fail(exc.message, 1) from None
    finally:
        store.dispose()


def default_counters(settings: Settings) -> Any:
    """The Redis quota store's counters (shared, readable from here); None for local."""
    if settings.quotas.backend != "redis":
        return None
    from gateway.quotas.redis import RedisQuotaStore

    return RedisQuotaStore(settings.quotas)


def _print_reconciliation(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from gateway.ledger.reports import format_usd

    table = Table(title=f"Reconciliation, {data['period']} from {data['start']} to {data['end']}")
    for name in ("key id", "ledger", "counters", "difference", ""):
        table.add_column(name, justify="left" if name == "key id" else "right")
    bad = set(data["mismatches"])
    for k in data["keys"]:
        table.add_row(
            k["key_id"],
            format_usd(k["ledger_nusd"], 9),
            format_usd(k["counter_nusd"], 9),
            format_usd(k["difference_nusd"], 9),
            "MISMATCH" if k["key_id"] in bad else "ok",
            style="red" if k["key_id"] in bad else None,
        )
    console = Console()
    console.print(table)
    verdict = (
        "ok: the counters match the ledger"
        if data["ok"]
        else (f"MISMATCH on {len(bad)} key(s) (tolerance {data['tolerance_nusd']} nano-USD)")
    )
    console.print(verdict)


# ---------------------------------------------------------------------------- prices


def _price_file(config: Path | None, file: Path | None) -> Path:
    return file or Path(_settings(config).pricing.file)


def prices_list(
    file: Annotated[Path | None, typer.Option(help="Price file (default: pricing.file).")] = None,
    at: Annotated[str | None, typer.Option(help="Mark the prices in force on this date.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Every price version, oldest first, and which one is in force."""
    from rich.console import Console
    from rich.table import Table

    from gateway.pricing import PriceBook

    path = _price_file(config, file)
    try:
        book = PriceBook.load(path)
        when = (
            dt.datetime.combine(dt.date.fromisoformat(at), dt.time(), dt.UTC)
            if at
            else dt.datetime.now(dt.UTC)
        )
    except (ConfigError, ValueError) as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"Prices in {path} (USD per 1M tokens), in force on {when.date()}")
    for name in ("version", "prompt", "completion", "cached prompt", "in force", "source"):
        numeric = name in ("prompt", "completion", "cached prompt")
        table.add_column(name, justify="right" if numeric else "left")
    for e in sorted(book.entries(), key=lambda e: (e.model, e.effective)):
        try:
            current = book.price(e.model, when).version == e.version
        except KeyError:
            current = False
        table.add_row(
            e.version,
            str(e.prompt_per_mtok),
            str(e.completion_per_mtok),
            str(e.cached_prompt_per_mtok if e.cached_prompt_per_mtok is not None else "= prompt"),
            "yes" if current else "",
            e.source or "",
        )
    Console().print(table)
    if book.reference_model:
        typer.echo(f"reference (counterfactual) model: {book.reference_model}")


def _dec(value: float | str | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise _fail(f"{name} is not a number: {value!r}") from None


def bench_throughput(path: Path) -> dict[str, Decimal]:
    """requests/s and mean tokens per request from a benchmark's JSON result.

    Reads vLLM's ``vllm bench serve --save-result`` file (``request_throughput``,
    ``completed``, ``total_input_tokens``, ``total_output_tokens``) or a plain file with
    ``requests_per_s``, ``prompt_tokens_per_request`` and ``completion_tokens_per_request``.
    """
    data = json.loads(path.read_text())
    if "request_throughput" in data:
        done = Decimal(str(data["completed"]))
        return {
            "requests_per_s": Decimal(str(data["request_throughput"])),
            "prompt_tokens": Decimal(str(data["total_input_tokens"])) / done,
            "completion_tokens": Decimal(str(data["total_output_tokens"])) / done,
        }
    return {
        "requests_per_s": Decimal(str(data["requests_per_s"])),
        "prompt_tokens": Decimal(str(data["prompt_tokens_per_request"])),
        "completion_tokens": Decimal(str(data["completion_tokens_per_request"])),
    }


def prices_derive(
    gpu_hourly: Annotated[float, typer.Option(help="USD per GPU-hour.")],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs serving the model (TP x replicas).")] = 1,
    bench: Annotated[
        Path | None, typer.Option(help="Benchmark result JSON (vLLM bench serve or plain).")
    ] = None,
    requests_per_s: Annotated[float | None, typer.Option(help="Measured requests/s.")] = None,
    prompt_tokens: Annotated[
        float | None, typer.Option(help="Mean prompt tokens per request.")
    ] = None,
    completion_tokens: Annotated[
        float | None, typer.Option(help="Mean completion tokens per request.")
    ] = None,
    utilization: Annotated[
        float, typer.Option(help="Share of time the GPUs are busy (0-1].")
    ] = 1.0,
    completion_ratio: Annotated[
        float, typer.Option(help="Price of a completion token / price of a prompt token.")
    ] = 3.0,
    cached_ratio: Annotated[
        float | None, typer.Option(help="Cached prompt price / prompt price (e.g. 0.5).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name for the YAML entry.")] = None,
    effective: Annotated[
        str | None, typer.Option(help="Effective date (default: tomorrow, UTC).")
    ] = None,
    append: Annotated[
        Path | None, typer.Option(help="Append the entry to this price file (validated).")
    ] = None,
) -> None:
    """Per-token prices from GPU cost and measured throughput; prints a YAML entry."""
    from gateway.pricing import PriceBook, derive_prices

    measured: dict[str, Decimal] = {}
    if bench is not None:
        try:
            measured = bench_throughput(bench)
        except (OSError, KeyError, ValueError, ArithmeticError) as exc:
            raise _fail(f"cannot read throughput from {bench}: {exc!r}") from None
    for key, value in (
        ("requests_per_s", requests_per_s),
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
    ):
        parsed = _dec(value, key)
        if parsed is not None:
            measured[key] = parsed
    missing = {"requests_per_s", "prompt_tokens", "completion_tokens"} - set(measured)
    if missing:
        raise _fail(f"need {', '.join(sorted(missing))} (flags or --bench)")
    try:
        derived = derive_prices(
            gpu_hourly_usd=Decimal(str(gpu_hourly)),
            gpus=gpus,
            requests_per_s=measured["requests_per_s"],
            prompt_tokens=measured["prompt_tokens"],
            completion_tokens=measured["completion_tokens"],
            utilization=Decimal(str(utilization)),
            completion_ratio=Decimal(str(completion_ratio)),
        )
        day = (
            dt.date.fromisoformat(effective)
            if effective
            else dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    cached = (
        (derived.prompt_per_mtok * Decimal(str(cached_ratio))).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_UP
        )
        if cached_ratio is not None
        else None
    )
    entry = [
        f"  - model: {model or 'MODEL'}",
        f"    effective: {day.isoformat()}",
        f"    prompt_per_mtok: {derived.prompt_per_mtok}",
        f"    completion_per_mtok: {derived.completion_per_mtok}",
        *([f"    cached_prompt_per_mtok: {cached}"] if cached is not None else []),
        f"    source: {json.dumps(derived.source)}",
    ]
    text = "\n".join(entry) + "\n"
    typer.echo(
        f"# cost per request at the measured mix: {derived.usd_per_request:.9f} USD", err=True
    )
    if append is None:
        sys.stdout.write(text)
        return
    if model is None:
        raise _fail("--append needs --model")
    old = append.read_text()
    candidate = old + ("" if old.endswith("\n") else "\n") + text
    tmp = append.with_name(append.name + ".tmp")
    tmp.write_text(candidate)
    try:
        PriceBook.load(tmp)  # the appended file must still be a valid catalog
    except ConfigError as exc:
        tmp.unlink()
        raise _fail(f"not appended, the result would be invalid: {exc}") from None
    tmp.replace(append)
    typer.echo(f"appended {model}@{day.isoformat()} to {append}", err=True)


# ---------------------------------------------------------------------------- db


def db_upgrade(db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Apply the Alembic migrations (``alembic upgrade head``)."""
    from gateway.db import make_engine
    from gateway.migrations import current_revision, upgrade

    url = db or _settings(config).ledger.url
    engine = make_engine(url)
    try:
        upgrade(engine)
        typer.echo(f"database at revision {current_revision(engine)}")
    except Exception as exc:
        raise _fail(f"migration failed on {_redact(url)}: {type(exc).__name__}", 1) from exc
    finally:
        engine.dispose()


def db_current(db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Print the database's migration revision."""
    from gateway.db import make_engine
    from gateway.migrations import current_revision

    engine = make_engine(db or _settings(config).ledger.url)
    try:
        typer.echo(current_revision(engine) or "(empty: not migrated)")
    finally:
        engine.dispose()


def register(app: typer.Typer, counters_factory: CountersFactory | None = None) -> None:
    """Add ``report``, ``reconcile``, ``prices`` and ``db`` to the ``tollgate`` app."""
    app.command("report")(report)
    app.command("reconcile")(make_reconcile(counters_factory))
    prices = typer.Typer(help="Price catalog: list versions, derive prices from hardware.")
    prices.command("list")(prices_list)
    prices.command("derive")(prices_derive)
    app.add_typer(prices, name="prices")
    db = typer.Typer(help="The gateway's database (ledger and key store): migrations.")
    db.command("upgrade")(db_upgrade)
    db.command("current")(db_current)
    app.add_typer(db, name="db")
