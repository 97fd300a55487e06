"""Prices: exact nano-USD costs, versions by effective date, and derived prices."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from gateway.cli_prices import prices_derive
from gateway.config import ConfigError
from gateway.pricing import Price, PriceBook, PriceEntry, derive_per_mtok, derive_prices


def entry(
    model: str, day: str, prompt: str, completion: str, cached: str | None = None
) -> PriceEntry:
    return PriceEntry(
        model=model,
        effective=dt.date.fromisoformat(day),
        prompt_per_mtok=Decimal(prompt),
        completion_per_mtok=Decimal(completion),
        cached_prompt_per_mtok=Decimal(cached) if cached is not None else None,
    )


def at(day: str, hour: int = 0) -> float:
    return dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=dt.UTC).timestamp()


def test_cost_is_exact_integer_nano_usd() -> None:
    p = Price("m@2026-01-01", Decimal("0.50"), Decimal("1.50"), Decimal("0.25"))
    # 1 prompt token at $0.50/M = 500 nano-USD exactly; no float anywhere.
    assert p.cost_nusd(1, 0) == 500
    assert p.cost_nusd(1000, 200) == 1000 * 500 + 200 * 1500
    # cached tokens are billed at their own price and never exceed the prompt
    assert p.cost_nusd(1000, 0, cached_tokens=400) == 600 * 500 + 400 * 250
    assert p.cost_nusd(10, 0, cached_tokens=50) == 10 * 250
    assert p.cost_nusd(0, 0) == 0


def test_rounding_is_half_up_once_per_request() -> None:
    # $0.0005 per 1M tokens = 0.5 nano-USD per token
    p = Price("m@x", Decimal("0.0005"), Decimal("0.0015"), Decimal("0.0005"))
    assert p.cost_nusd(1, 0) == 1  # 0.5 nano -> 1
    assert p.cost_nusd(3, 0) == 2  # 1.5 -> 2
    assert p.cost_nusd(1, 1) == 2  # 0.5 + 1.5 = 2.0, summed before rounding


def test_the_price_in_force_follows_the_effective_date() -> None:
    now = [at("2026-03-31", 23)]
    book = PriceBook(
        [
            entry("small", "2026-01-01", "0.05", "0.20"),
            entry("small", "2026-04-01", "0.04", "0.16"),
            entry("large", "2026-05-01", "0.50", "1.50"),
        ],
        clock=lambda: now[0],
    )
    assert book.price("small").version == "small@2026-01-01"
    assert not book.has("large")
    with pytest.raises(KeyError):
        book.price("large")
    now[0] = at("2026-04-01", 0)  # midnight UTC: the cached price rolls over by itself
    assert book.price("small").version == "small@2026-04-01"
    assert book.price("small").cost_nusd(1_000_000, 0) == 40_000_000
    now[0] = at("2026-05-01", 12)
    assert book.has("large") and book.current_versions() == {
        "small": "small@2026-04-01",
        "large": "large@2026-05-01",
    }
    # an old report's price stays what it was
    past = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    assert book.price("small", past).version == "small@2026-01-01"
    east = dt.datetime(2026, 4, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    assert book.price("small", east).version == "small@2026-01-01"  # still 31 March in UTC


def test_cached_price_defaults_to_the_prompt_price() -> None:
    book = PriceBook([entry("m", "2026-01-01", "1", "2")], clock=lambda: at("2026-06-01"))
    assert book.price("m").cached_prompt == Decimal("1")


def test_duplicate_versions_are_refused() -> None:
    with pytest.raises(ConfigError, match="two prices"):
        PriceBook([entry("m", "2026-01-01", "1", "2"), entry("m", "2026-01-01", "3", "4")])


def test_price_file_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text(
        "prices:\n  - model: m\n    effective: 2026-01-01\n"
        "    prompt_per_mtok: -1\n    completion_per_mtok: 1\n"
    )
    with pytest.raises(ConfigError, match="prompt_per_mtok"):
        PriceBook.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        PriceBook.load(tmp_path / "missing.yaml")


def test_repository_price_file_loads() -> None:
    book = PriceBook.load(Path(__file__).resolve().parents[1] / "configs" / "prices.yaml")
    assert book.reference_model is not None and book.has(book.reference_model)


def test_derive_per_mtok_from_hardware() -> None:
    # 2 GPUs at $2.10/h = $0.0011666.../s; 2400 tok/s at 50% busy -> $0.972/M tokens
    got = derive_per_mtok(Decimal("2.10"), 2, Decimal(2400), Decimal("0.5"))
    assert got.quantize(Decimal("0.000001")) == Decimal("0.972222")
    with pytest.raises(ValueError):
        derive_per_mtok(Decimal(1), 1, Decimal(0), Decimal(1))


def test_derived_prices_bill_exactly_the_hardware_cost_at_the_measured_mix() -> None:
    d = derive_prices(
        gpu_hourly_usd=Decimal("2.00"),
        gpus=2,
        requests_per_s=Decimal("4"),
        prompt_tokens=Decimal(500),
        completion_tokens=Decimal(200),
        utilization=Decimal("0.5"),
        completion_ratio=Decimal(3),
    )
    # $4/h = $1/900 per s; 4 req/s at 50% -> $1/1800 per request
    assert abs(d.usd_per_request - Decimal(1) / Decimal(1800)) < Decimal("1e-24")
    assert (d.prompt_per_mtok, d.completion_per_mtok) == (Decimal("0.505051"), Decimal("1.515152"))
    billed = Price("x", d.prompt_per_mtok, d.completion_per_mtok, d.prompt_per_mtok)
    per_request_usd = Decimal(billed.cost_nusd(500, 200)) / Decimal(10**9)
    assert abs(per_request_usd - d.usd_per_request) < Decimal("0.000000002")
    assert "2.00 USD/GPU-h x 2 GPU / 4 req/s" in d.source
    with pytest.raises(ValueError, match="utilization"):
        derive_prices(
            gpu_hourly_usd=Decimal(1),
            gpus=1,
            requests_per_s=Decimal(1),
            prompt_tokens=Decimal(1),
            completion_tokens=Decimal(1),
            utilization=Decimal("1.5"),
        )


def decimal_cost(price: Price, prompt: int, completion: int, cached: int) -> int:
    """The cost in Decimal arithmetic, rounded half-up once: the reference."""
    cached = min(max(cached, 0), prompt)
    usd_per_m = (
        price.prompt * (prompt - cached)
        + price.cached_prompt * cached
        + price.completion * completion
    )
    nusd = usd_per_m * Decimal(1_000_000_000) / Decimal(1_000_000)
    return int(nusd.to_integral_value(rounding=ROUND_HALF_UP))


def test_integer_cost_equals_the_decimal_reference() -> None:
    rng = random.Random(7)
    choices = ["0", "0.05", "0.2", "1.5", "0.123456789", "2.10", "0.0000001", "17.333"]
    for _ in range(20_000):
        prices = [Decimal(rng.choice(choices)) for _ in range(3)]
        price = Price("m@2024-01-01", *prices)
        tokens = (rng.randint(0, 10**6), rng.randint(0, 10**6), rng.randint(-3, 10**6))
        assert price.cost_nusd(*tokens) == decimal_cost(price, *tokens), (prices, tokens)


def test_shipped_local_prices_are_derived_from_the_kept_measurement() -> None:
    """configs/prices.yaml's local entries are what `tollgate prices derive` makes of the
    throughput measured on the real engines (configs/measured/local-cpu/, written by
    `python -m bench local-prices --write-prices`)."""
    root = Path(__file__).resolve().parents[1]
    book = PriceBook.load(root / "configs" / "prices.yaml")
    measured = sorted((root / "configs" / "measured" / "local-cpu").glob("*.json"))
    assert {m.stem for m in measured} == {e.model for e in book.entries()}
    for m in measured:
        run = json.loads(m.read_text())
        (entry,) = [e for e in book.entries() if e.model == m.stem]
        out = CliRunner().invoke(
            _prices_app(),
            [
                "derive", "--gpu-hourly", str(run["core_hourly_usd"]), "--gpus", "1",
                "--device", "vCPU", "--bench", str(m), "--model", m.stem,
                "--effective", entry.effective.isoformat(), "--cached-ratio", "0.5",
            ],
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        derived = PriceEntry.model_validate(yaml.safe_load(out.stdout)[0])
        assert derived == entry, m.stem
        assert f"/ {run['requests_per_s']} req/s" in (entry.source or "")


def _prices_app() -> typer.Typer:
    app = typer.Typer()
    app.command("derive")(prices_derive)

    @app.callback()
    def root() -> None:
        """Test root."""

    return app
