"""The overload scenario: its arguments, its capacity ramp, and its report from fixed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import overload, overload_report
from bench.phase import PhaseResult, error_code
from gateway.config import ServerSettings


def test_arguments_parse_with_the_gateway_defaults(tmp_path: Path) -> None:
    cfg = overload.parse_args(["--quick", "--out", str(tmp_path)])
    assert cfg.quick and cfg.duration == 3.0 and cfg.out_dir == tmp_path
    assert cfg.max_in_flight == ServerSettings().max_in_flight
    assert cfg.max_loop_lag_ms == ServerSettings().max_loop_lag_ms
    assert not cfg.sweeps(missed=True)  # a quick run never sweeps on its own
    full = overload.parse_args(["--max-in-flight", "64", "--max-loop-lag-ms", "10"])
    assert full.settings == {"max_in_flight": 64, "max_loop_lag_ms": 10.0}
    assert full.duration == 10.0 and full.sweeps(missed=True) and not full.sweeps(missed=False)
    assert full.rig().drain_s == overload.CLIENT_TIMEOUT_S
    with pytest.raises(SystemExit):
        overload.parse_args(["--max-in-flight", "0"])


def test_ramp_finds_the_highest_rate_carried() -> None:
    tried: list[float] = []

    def carried(rate: float) -> bool:
        tried.append(rate)
        return rate <= 700

    assert overload.ramp(carried, 200, 1.5, 12) == 675  # 200, 300, 450, 675, 1012, then 826
    assert tried == [200, 300, 450, 675, 1012, 826]
    assert overload.ramp(lambda r: r <= 100, 200, 2.0, 12) == 100  # down from a failing start
    assert overload.ramp(lambda r: False, 200, 2.0, 12) is None


def test_error_code_is_read_from_the_body_tail() -> None:
    tail = (
        b'retry shortly.","type":"service_unavailable","param":null,"code":"gateway_overloaded"}}'
    )
    assert error_code(tail[-64:]) == "gateway_overloaded"
    assert error_code(b"Internal Server Error") == "-"


def _phase(rate: float, n_ok: int, n_refused: int, *, late: int = 0) -> PhaseResult:
    n = n_ok + n_refused
    intended = np.arange(n) / rate
    ok = np.zeros(n, dtype=bool)
    ok[:n_ok] = True
    latency = np.where(ok, 0.002, 0.009)  # refusals: 9 ms, over the 5 ms target
    latency[:late] = 11.0  # answered after the client's 10 s
    return PhaseResult(
        target="tollgate", rate=rate, duration=n / rate, intended=intended,
        sent=intended.copy(), first=np.where(ok, intended + 0.001, 0.0),
        done=intended + latency, ok=ok,
        errors={"http_503": n_refused} if n_refused else {}, new_connections=0,
        wall_s=n / rate, cpu={"router": 0.5 * n / rate},
        status=np.where(ok, 200, 503).astype(np.int16),
        codes=dict.fromkeys(range(n_ok, n), "503 gateway_overloaded"),
    )  # fmt: skip


def _data() -> dict[str, object]:
    cap = 100.0
    summary = overload_report.summarize_phase
    loads = {
        "unary": [summary(_phase(100, 95, 5), load=1.0, capacity=cap, timeout_s=10),
                  summary(_phase(400, 80, 320, late=1), load=4.0, capacity=cap, timeout_s=10)],
        "stream": [summary(_phase(100, 100, 0), load=1.0, capacity=cap, timeout_s=10)],
    }  # fmt: skip
    step = summary(_phase(100, 100, 0), load=None, capacity=None, timeout_s=10) | {"carried": True}
    cfg = overload.Config(quick=True)
    return {
        "generated_at": "now", "git": {"commit": "abc1234"},
        "machine": {"cores": 2, "cpu": "test CPU"}, "elapsed_s": 1.0,
        "settings": overload.settings_of(cfg),
        "capacity": {"unary": {"capacity_rps": cap, "steps": [step]},
                     "stream": {"capacity_rps": cap, "steps": [step]}},
        "loads": loads, "verdicts": overload_report.judge(loads), "sweep": [], "best": None,
        "metering_check": {"ledger_rows": 7, "redis_keys": 3},
    }  # fmt: skip


def test_a_phase_is_summarized_into_goodput_refusals_and_timeouts() -> None:
    s = overload_report.summarize_phase(
        _phase(400, 80, 320, late=1), load=4.0, capacity=100, timeout_s=10
    )
    assert s["goodput_rps"] == 79.0 and s["goodput_share"] == 0.79  # the late one is not good
    assert s["refusals_rps"] == 320.0 and s["refusal_ms"]["p99"] == pytest.approx(9.0)
    assert s["answers_rps_by_code"] == {"503 gateway_overloaded": 320.0}
    assert s["accepted_timeouts"] == 1 and s["failed"] == 321
    assert s["gateway_cores"] == 0.5


def test_verdicts_and_report_render_from_a_fixed_result(tmp_path: Path) -> None:
    data = _data()
    got = {(v["kind"], v["target"]): v["met"] for v in data["verdicts"]}  # type: ignore[attr-defined]
    assert got[("unary", "goodput at every load")] is False  # 79% at 4x
    assert got[("unary", "refusal latency p99")] is False  # 9 ms
    assert got[("unary", "accepted requests timed out at the client")] is False
    assert got[("stream", "goodput at every load")] is True
    assert got[("stream", "refusal latency p99")] is None  # nothing refused
    assert got[("stream", "accepted requests timed out at the client")] is True
    overload_report.write_report(data, tmp_path)
    text = (tmp_path / "overload.md").read_text()
    assert "| unary | goodput at every load | >= 90% of capacity | 79% (lowest, at 4x) |" in text
    # load, offered, sent, goodput, share, refused/s, nothing else, refusal p50 / p99
    assert "| 4x | 400 | 400 | 79 | 79% | 320 | - | 9.00 / 9.00 |" in text
    assert "`max_in_flight: 1024`" in text and "No sweep: not run" in text
    assert (tmp_path / "overload.png").stat().st_size > 10_000


def test_the_best_setting_is_the_one_meeting_most_targets() -> None:
    data = _data()
    loads = data["loads"]
    good = {"unary": [dict(p, goodput_share=0.95, accepted_timeouts=0,
                           refusal_ms={"p50": 1.0, "p99": 3.0})
                      for p in loads["unary"]]}  # type: ignore[index]  # fmt: skip
    sweep = [{"settings": {"max_in_flight": 16, "max_loop_lag_ms": 10.0}, "loads": good,
              "verdicts": overload_report.judge(good)}]  # fmt: skip
    best = overload_report.pick_best(
        {"max_in_flight": 1024, "max_loop_lag_ms": 50.0},
        loads,  # type: ignore[arg-type]
        sweep,
    )
    assert best is not None and best["settings"]["max_in_flight"] == 16
    assert overload_report.pick_best({}, {}, []) is None
