"""The bench harness: its CLI, its shared helpers, and the throughput report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import cli, markdown, stats
from bench.phase import PhaseResult
from bench.throughput import Config, parse_args
from bench.throughput_report import judge, summarize, write_report
from bench.throughput_report import markdown as report_markdown


def test_cli_lists_every_scenario_and_refuses_an_unknown_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main([]) == 0
    listed = capsys.readouterr().out
    for name in ("throughput", "overhead", "quotas", "ledger", "routing", "soak"):
        assert f"  {name} " in listed
    assert cli.main(["no-such-scenario"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_every_registered_scenario_has_a_main() -> None:
    import importlib

    for name, scenario in cli.SCENARIOS.items():
        module = importlib.import_module(f"bench.{scenario.module}")
        assert callable(getattr(module, "main", None)), name


def test_throughput_cli_parses_quick_and_workers(tmp_path: Path) -> None:
    cfg = parse_args(["--quick", "--workers", "1,2", "--out", str(tmp_path), "--no-router"])
    assert cfg.quick and cfg.duration == 3.0 and cfg.workers == (1, 2)
    assert cfg.out_dir == tmp_path and not cfg.include_router
    assert parse_args([]).duration == 15.0
    assert str(parse_args(["--quick"]).out_dir).endswith("bench/results/quick")
    with pytest.raises(SystemExit):
        parse_args(["--workers", "0"])


def test_phases_run_lowest_rate_first_unary_before_stream() -> None:
    cfg = Config(unary_rates=(2000.0, 300.0), stream_rates=(300.0,))
    assert cfg.phases() == [("unary", 300.0), ("stream", 300.0), ("unary", 2000.0)]


def test_stats_percentiles_added_and_interval() -> None:
    assert stats.percentiles([], (50, 99)) == {"p50": None, "p99": None}
    assert stats.percentiles([0.001, 0.003], (50,)) == {"p50": 2.0}
    base, other = np.full(200, 0.001), np.full(200, 0.0015)
    got = stats.added_with_ci(base, other, (50,))
    assert got == {"p50_ms": 0.5, "p50_ci95_ms": [0.5, 0.5]}
    assert stats.added([], other, 50) is None


def test_markdown_table_checks_its_shape() -> None:
    assert markdown.table(["a", "b"], [[1, None]], "lr") == ["| a | b |", "| --- | ---: |",
                                                             "| 1 | - |"]  # fmt: skip
    with pytest.raises(ValueError):
        markdown.table(["a", "b"], [[1]])
    assert markdown.interval(1.234, [1.0, 1.5]) == "+1.23 (+1.00 … +1.50)"


def _phase(rate: float, latency_s: float, *, errors: int = 0, cpu: float = 0.0) -> PhaseResult:
    n = 100
    intended = np.arange(n) / rate
    ok = np.ones(n, dtype=bool)
    ok[:errors] = False
    done = intended + latency_s
    return PhaseResult(
        target="t", rate=rate, duration=n / rate, intended=intended, sent=intended.copy(),
        first=intended + latency_s / 2, done=done, ok=ok,
        errors={"timeout": errors} if errors else {}, new_connections=0,
        wall_s=n / rate, cpu={"router": cpu * (n - errors)},
    )  # fmt: skip


def _raw() -> dict[str, Any]:
    def phases(lat: float, cpu: float, errors_at_top: int = 0) -> list[dict[str, Any]]:
        return [
            {"kind": "unary", "rate": 300.0, "result": _phase(300, lat, cpu=cpu)},
            {"kind": "stream", "rate": 300.0, "result": _phase(300, lat, cpu=cpu * 2)},
            {"kind": "unary", "rate": 2000.0,
             "result": _phase(2000, lat, cpu=cpu, errors=errors_at_top)},
        ]  # fmt: skip

    return {
        "direct": {"notes": {}, "phases": phases(0.0010, 0.0)},
        "vllm-router": {"notes": {}, "phases": phases(0.0012, 0.0002)},
        "tollgate": {"notes": {"workers": 1}, "phases": phases(0.0013, 0.0003, errors_at_top=5)},
    }


def _data() -> dict[str, Any]:
    return {
        "generated_at": "2026-12-03 12:00:00 UTC",
        "git": {"commit": "abc1234", "gateway_uncommitted": []},
        "machine": {"cores": 2, "cpu": "test CPU"},
        "settings": {"quick": True, "engine": "raw", "completion_tokens": 16,
                     "duration_s_per_phase": 3.0, "warmup_s_per_phase": 1.0,
                     "unary_rates_rps": [300.0, 2000.0], "stream_rates_rps": [300.0]},
        "engine_check": {"rate_rps": 2000.0, "raw": {
            "ok": 100, "requests": 100, "errors": {}, "achieved_rps": 2000.0,
            "p50_ms": 0.1, "p99_ms": 0.5, "engine_cpu_ms_per_request": 0.05}},
        "metering_check": {"ledger_rows": 300, "redis_keys": 12},
        "skipped": {},
        "targets": summarize(_raw()),
    }  # fmt: skip


def test_summarize_measures_added_latency_against_direct() -> None:
    targets = summarize(_raw())
    unary = targets["tollgate"]["phases"][0]
    assert unary["added_ms"]["p50_ms"] == pytest.approx(0.3)
    assert unary["cpu_ms_per_request"]["router"] == pytest.approx(0.3)
    assert "added_ms" not in targets["direct"]["phases"][0]
    assert targets["tollgate"]["phases"][2]["errors"] == {"timeout": 5}


def test_judge_marks_each_target_met_or_missed() -> None:
    rows = {r["target"]: r for r in judge(_data())}
    assert rows["CPU ms per unary request"]["met"] is True  # 0.3 <= 0.4
    assert rows["CPU ms per stream"]["met"] is True  # 0.6 <= 0.8
    assert rows["CPU ms per stream"]["vllm_router"] == pytest.approx(0.4)
    assert rows["2,000 unary requests/s per worker, 0 errors"]["met"] is False  # 5 failed
    assert rows["1,000 streams/s per worker, 0 errors"]["met"] is None  # not offered
    assert rows["added p50 at 300/s"]["met"] is True  # 0.3 <= 2 x 0.2
    assert rows["added p50 at 300/s"]["vllm_router"] == pytest.approx(0.2)
    assert rows["added p50 at 2000/s"]["met"] is False  # requests failed
    assert rows["added TTFT p50 at 300/s"]["met"] is True


def test_report_renders_markdown_and_plot(tmp_path: Path) -> None:
    data = _data()
    data["verdicts"] = judge(data)
    write_report(data, tmp_path)
    text = (tmp_path / "throughput.md").read_text()
    assert "| tollgate | 2,000 unary requests/s per worker, 0 errors |" in text
    assert "**missed**" in text and "| met |" in text
    assert "300 ledger rows" in text
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert report_markdown(data)[0].startswith("# Request-path throughput")
