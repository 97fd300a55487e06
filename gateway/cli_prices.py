"""``tollgate prices list|derive``: the price catalog's versions, and per-token prices
derived from GPU cost and measured throughput.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli_finance_common import ConfigOpt, fail, load_settings
from gateway.config import ConfigError


def _price_file(config: Path | None, file: Path | None) -> Path:
    return file or Path(load_settings(config).pricing.file)


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
        raise fail(str(exc)) from None
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
        raise fail(f"{name} is not a number: {value!r}") from None


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
    gpu_hourly: Annotated[float, typer.Option(help="USD per GPU-hour (or per --device hour).")],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs serving the model (TP x replicas).")] = 1,
    device: Annotated[
        str, typer.Option(help="What --gpu-hourly and --gpus count, e.g. 'vCPU' for CPU engines.")
    ] = "GPU",
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
            raise fail(f"cannot read throughput from {bench}: {exc!r}") from None
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
        raise fail(f"need {', '.join(sorted(missing))} (flags or --bench)")
    try:
        derived = derive_prices(
            gpu_hourly_usd=Decimal(str(gpu_hourly)),
            gpus=gpus,
            requests_per_s=measured["requests_per_s"],
            prompt_tokens=measured["prompt_tokens"],
            completion_tokens=measured["completion_tokens"],
            utilization=Decimal(str(utilization)),
            completion_ratio=Decimal(str(completion_ratio)),
            device=device,
        )
        day = (
            dt.date.fromisoformat(effective)
            if effective
            else dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
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
        raise fail("--append needs --model")
    old = append.read_text()
    candidate = old + ("" if old.endswith("\n") else "\n") + text
    tmp = append.with_name(append.name + ".tmp")
    tmp.write_text(candidate)
    try:
        PriceBook.load(tmp)  # the appended file must still be a valid catalog
    except ConfigError as exc:
        tmp.unlink()
        raise fail(f"not appended, the result would be invalid: {exc}") from None
    tmp.replace(append)
    typer.echo(f"appended {model}@{day.isoformat()} to {append}", err=True)
