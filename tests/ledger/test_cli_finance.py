"""`tollgate report`, `reconcile`, `prices` and `db`, driven through typer."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from gateway.cli_finance import register
from gateway.config import Settings
from gateway.ledger.money import format_usd
from gateway.ledger.periods import parse_when
from gateway.ledger.report_format import to_csv
from gateway.ledger.report_types import ReportQuery
from gateway.ledger.reports import Reports
from gateway.ledger.store import LedgerStore
from gateway.pricing import PriceBook
from tests.ledger.factories import make_record, records
from tests.support import free_port

RUNNER = CliRunner()


class FixedCounters:
    def __init__(self, totals: dict[str, int]) -> None:
        self.totals = totals

    async def spend_totals(self, period: str) -> dict[str, int]:
        return dict(self.totals)


def cli(counters: FixedCounters | None = None) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root."""

    register(app, (lambda s: counters) if counters is not None else None)
    return app


def run(app: typer.Typer, *args: str) -> Any:
    return RUNNER.invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture
def ledger_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = LedgerStore.from_url(url)
    store.migrate()
    day1 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    store.insert(records(3, finished_at=day1, key_id="key-a", team="research", cost_nusd=1_500_000))
    store.insert(
        records(2, start=3, finished_at=day1 + dt.timedelta(days=31), key_id="key-b", team=None)
    )
    store.dispose()
    return url


@pytest.fixture
def config(tmp_path: Path, ledger_db: str) -> Path:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "reference_model: big\nprices:\n"
        "  - model: big\n    effective: 2026-01-01\n    prompt_per_mtok: 0.5\n"
        "    completion_per_mtok: 1.5\n"
        "  - model: big\n    effective: 2026-03-01\n    prompt_per_mtok: 0.4\n"
        "    completion_per_mtok: 1.2\n"
    )
    path = tmp_path / "tollgate.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "ledger": {"url": ledger_db, "spill_dir": str(tmp_path / "spill")},
                "pricing": {"file": str(prices)},
                "auth": {"admin_token": "tg-admin-token-0000"},
            }
        )
    )
    return path


def test_report_csv_is_the_library_csv(config: Path, ledger_db: str) -> None:
    out = run(cli(), "report", "-c", str(config), "-g", "team,month", "--format", "csv")
    assert out.exit_code == 0, out.output
    store = LedgerStore.from_url(ledger_db)
    want = to_csv(Reports(store.engine).report(ReportQuery(("team", "month"))))
    store.dispose()
    assert out.stdout_bytes == want.encode()  # RFC 4180 line ends (the runner's .stdout drops \r)
    assert out.stdout.splitlines()[1].startswith("research,2026-03,3,")


def test_report_table_prints_the_totals(config: Path) -> None:
    out = run(cli(), "report", "-c", str(config), "--group-by", "key")
    assert out.exit_code == 0, out.output
    assert "TOTAL" in out.stdout and "key-a" in out.stdout
    assert format_usd(3 * 1_500_000 + 2 * 9_000) in out.stdout


def test_report_json_for_one_month(config: Path, tmp_path: Path) -> None:
    target = tmp_path / "march.json"
    out = run(
        cli(), "report", "-c", str(config), "--month", "2026-03", "-f", "json", "-o", str(target)
    )
    assert out.exit_code == 0, out.output
    body = json.loads(target.read_text())
    assert body["start"] == "2026-03-01T00:00:00+00:00"
    assert body["end"] == "2026-04-01T00:00:00+00:00"
    assert body["totals"]["requests"] == 3  # key-b's requests fall in April
    assert body["totals"]["cost_nusd"] == 4_500_000


def test_report_refuses_bad_input(config: Path) -> None:
    assert run(cli(), "report", "-c", str(config), "-g", "colour").exit_code == 2
    assert run(cli(), "report", "-c", str(config), "--start", "soon").exit_code == 2
    assert run(cli(), "report", "-c", str(config), "-f", "xml").exit_code == 2


def test_report_on_an_unreachable_database_hides_the_password() -> None:
    url = f"postgresql://finance:s3cret-pw@127.0.0.1:{free_port()}/ledger"
    out = run(cli(), "report", "--db", url)
    assert out.exit_code == 1
    assert "unavailable" in out.output and "s3cret-pw" not in out.output


def test_prices_list_marks_the_version_in_force(config: Path) -> None:
    out = run(cli(), "prices", "list", "-c", str(config), "--at", "2026-02-15")
    assert out.exit_code == 0, out.output
    lines = {ln.split("│")[1].strip(): ln for ln in out.stdout.splitlines() if "big@" in ln}
    assert "yes" in lines["big@2026-01-01"] and "yes" not in lines["big@2026-03-01"]
    assert "reference (counterfactual) model: big" in out.stdout


def test_prices_derive_prints_an_entry_and_appends_it(config: Path, tmp_path: Path) -> None:
    args = ["prices", "derive", "--gpu-hourly", "2.00", "--gpus", "2", "--requests-per-s", "4"]
    args += ["--prompt-tokens", "500", "--completion-tokens", "200", "--utilization", "0.5"]
    out = run(cli(), *args, "--model", "big", "--effective", "2026-06-01")
    assert out.exit_code == 0, out.output
    entry = yaml.safe_load(out.stdout)[0]
    assert entry["prompt_per_mtok"] == 0.505051 and entry["completion_per_mtok"] == 1.515152
    prices = Path(yaml.safe_load(config.read_text())["pricing"]["file"])
    out = run(cli(), *args, "--model", "big", "--effective", "2026-06-01", "--append", str(prices))
    assert out.exit_code == 0, out.output
    book = PriceBook.load(prices)
    later = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
    assert book.price("big", later).version == "big@2026-06-01"
    before = prices.read_text()
    again = run(
        cli(), *args, "--model", "big", "--effective", "2026-06-01", "--append", str(prices)
    )
    assert again.exit_code == 2 and "not appended" in again.output
    assert prices.read_text() == before  # a duplicate version never lands in the file


def test_prices_derive_reads_a_vllm_benchmark(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "completed": 200,
                "request_throughput": 4.0,
                "total_input_tokens": 100_000,
                "total_output_tokens": 40_000,
            }
        )
    )
    out = run(cli(), "prices", "derive", "--gpu-hourly", "2", "--gpus", "2", "--bench", str(bench),
              "--utilization", "0.5", "--cached-ratio", "0.5")  # fmt: skip
    assert out.exit_code == 0, out.output
    entry = yaml.safe_load(out.stdout)[0]
    assert entry["prompt_per_mtok"] == 0.505051  # 500 + 200 tokens per request, as above
    assert entry["cached_prompt_per_mtok"] == 0.252526  # half-up
    assert run(cli(), "prices", "derive", "--gpu-hourly", "2").exit_code == 2


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    assert "not migrated" in run(cli(), "db", "current", "--db", url).stdout
    out = run(cli(), "db", "upgrade", "--db", url)
    assert out.exit_code == 0, out.output
    assert "revision" in out.stdout
    assert "not migrated" not in run(cli(), "db", "current", "--db", url).stdout


def test_reconcile_against_counters(config: Path, tmp_path: Path) -> None:
    settings = Settings.load(config)
    store = LedgerStore.from_url(settings.ledger.url)
    now = dt.datetime.now(dt.UTC)
    store.insert([make_record(100, key_id="key-z", finished_at=now, cost_nusd=777)])
    store.dispose()
    ok = run(cli(FixedCounters({"key-z": 777})), "reconcile", "-c", str(config), "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    bad = run(cli(FixedCounters({"key-z": 700})), "reconcile", "-c", str(config))
    assert bad.exit_code == 1
    assert "MISMATCH" in bad.stdout and "key-z" in bad.stdout


def test_reconcile_with_local_quotas_needs_the_gateway(config: Path) -> None:
    out = run(cli(), "reconcile", "-c", str(config))
    assert out.exit_code == 2 and "--gateway" in out.output


def test_report_range_matches_parse_when(config: Path) -> None:
    out = run(cli(), "report", "-c", str(config), "--start", "2026-03-01", "--end", "2026-03-01",
              "-f", "json")  # fmt: skip
    body = json.loads(out.stdout)
    assert body["end"] == parse_when("2026-03-01", end=True).isoformat()
    assert body["totals"]["requests"] == 3
