"""The metered soak: its arguments, its bounded open-loop load, its figures and verdicts."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import uvloop

from bench import cli, stub_engine
from bench.loadgen import ConnectionPool
from bench.soak_accounting import drained
from bench.soak_load import Kind, LoadResult, MixedLoad, http_request
from bench.soak_metered import parse_args
from bench.soak_metered_markdown import write_report
from bench.soak_metered_report import Sample, judge, rss_slope, summarize, windows
from tests.support import free_port


def test_arguments_default_to_thirty_minutes_and_refuse_nonsense(tmp_path: Path) -> None:
    full = parse_args([])
    assert (full.duration_s, full.load, full.bin_s, full.warmup_s) == (1800.0, 0.8, 60.0, 300.0)
    short = parse_args(["--duration", "90", "--capacity", "500", "--out", str(tmp_path)])
    assert (short.bin_s, short.warmup_s, short.capacity, short.out_dir) == (
        10.0, 22.5, 500.0, tmp_path,
    )  # fmt: skip
    assert parse_args(["--quick"]).duration_s == 60.0
    for bad in (["--duration", "5"], ["--load", "0"], ["--capacity", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "soak-metered" in cli.SCENARIOS


def test_rss_slope_sees_a_leak_and_ignores_the_warm_up() -> None:
    # 1 KiB per request after 10 s, a big jump during the warm-up
    leak = [Sample(t, t * 100, 150_000 + (0 if t < 10 else 50_000) + t * 100, 90_000, 3)
            for t in range(60)]  # fmt: skip
    assert rss_slope(leak, warmup_s=10) == pytest.approx(1000.0)
    flat = [Sample(t, t * 100, 150_000 + (t % 2) * 8, 90_000, 3) for t in range(60)]
    slope = rss_slope(flat, warmup_s=10)
    assert slope is not None and abs(slope) < 1
    assert rss_slope(flat[:12], warmup_s=10) is None  # two samples after the warm-up


def test_p99_windows_skip_the_warm_up_and_fit_short_runs() -> None:
    assert windows(30, 60.0, 300.0) == (range(5, 15), range(20, 30))
    assert windows(9, 10.0, 22.5) == (range(3, 6), range(6, 9))
    assert windows(3, 10.0, 22.5) is None


def _kinds(port: int) -> dict[str, Kind]:
    def req(body: bytes, key: str = "k") -> bytes:
        return http_request("127.0.0.1", port, "/v1/chat/completions", body, key)

    return {
        "chat": Kind("chat", req(b'{"model":"m","messages":[]}'), False),
        "stream": Kind("stream", req(b'{"model":"m","stream": true}'), True),
        # the stub answers everything with 200: a request wanting 401 is an error
        "wrong_key": Kind("wrong_key", req(b"{}", "nope"), False, 401),
    }


def _drive(rate: float, duration: float) -> tuple[LoadResult, list[tuple[float, int, int]]]:
    port = free_port()
    ticks: list[tuple[float, int, int]] = []

    async def go() -> LoadResult:
        server = asyncio.get_running_loop().create_task(stub_engine.serve(port, 4))
        await asyncio.sleep(0.2)
        pool = ConnectionPool("127.0.0.1", port)
        try:
            await pool.warm(8)
            mix = {"chat": 5.0, "stream": 4.0, "wrong_key": 1.0}
            load = MixedLoad(pool, _kinds(port), mix, rate=rate, duration_s=duration, bin_s=0.5)
            return await load.run(lambda t, done, fl: ticks.append((t, done, fl)))
        finally:
            pool.close()
            server.cancel()

    return uvloop.run(go()), ticks


def test_mixed_load_counts_every_request_once_in_the_bin_it_was_due() -> None:
    r, ticks = _drive(rate=400, duration=1.5)
    kinds = _kinds(0)
    assert sum(r.sent.values()) == 600 and sum(b.sent for b in r.bins) == 600
    assert len(r.bins) == 3 and all(b.sent == 200 for b in r.bins)
    assert r.right["chat"] == r.sent["chat"] > 0 and r.right["stream"] == r.sent["stream"] > 0
    assert r.errors == {"wrong_key http_200": r.sent["wrong_key"]} and r.right["wrong_key"] == 0
    assert r.answered(kinds) == r.sent["chat"] + r.sent["stream"]
    assert r.latencies(("chat", "stream")).size == r.answered(kinds)
    assert all(v.typecode == "f" for b in r.bins for v in b.latency.values())  # compact
    assert ticks and ticks[-1][1] <= 600 and ticks[0][0] >= 0.9
    s = summarize(r, kinds, [Sample(t, d, 1000, 1000, f) for t, d, f in ticks], 0.5)
    assert s["generation_failed"] == 0 and s["goodput_share"] == 1.0
    assert s["windows_ms"]["first"]["from_s"] == 0.5 and s["windows_ms"]["last"]["to_s"] == 1.5


def _data() -> dict[str, Any]:
    bins = [{"start_s": i * 10.0, "sent": 100, "right": {"chat": 50, "stream": 46},
             "errors": {}, "goodput_rps": 9.6,
             "ms": {"chat": {"p50": 1.0, "p99": 5.0}, "stream": {"p50": 1.2, "p99": 6.0}},
             "generation_ms": {"p50": 1.1, "p99": 6.0}, "ttft_ms": {"stream": {"p99": 4.0}},
             "rss_mib_end": 150.0} for i in range(9)]  # fmt: skip
    return {
        "generated_at": "now", "git": {"commit": "abc"},
        "machine": {"cpu": "cpu", "cores": 2},
        "settings": {"load_x_capacity": 0.8, "gateway": "g", "engine": "e", "loadgen": "l",
                     "mix": {"chat": 56.0}, "pinning": {"gateway": "core 0"}},
        "capacity": {"capacity_rps": 12.0, "rule": "r", "steps": [
            {"rate": 12.0, "carried": True, "sent": 48, "failed": 0, "p99_ms": 4.0}]},
        "soak": {"rate_rps": 10.0, "duration_s": 90.0, "bin_s": 10.0, "warmup_s": 22.5,
                 "sent": {"chat": 450, "stream": 414, "bad_json": 36},
                 "right": {"chat": 450, "stream": 414, "bad_json": 36}, "errors": {},
                 "answered": 864, "generation_kinds": ["chat", "stream"],
                 "generation_failed": 0, "goodput_rps": 9.6, "goodput_share": 1.0,
                 "generation_ms": {"p50": 1.1, "p99": 6.0, "p99.9": 7.0},
                 "windows_ms": {"first": {"from_s": 30.0, "to_s": 50.0, "p99": 6.0},
                                "last": {"from_s": 70.0, "to_s": 90.0, "p99": 6.6}},
                 "rss_slope_kib_per_1k": 0.4,
                 "rss_mib": {"start": 149.0, "after_warmup": 150.0, "end": 150.0, "max": 150.1},
                 "loadgen_rss_mib": {"start": 90.0, "end": 90.0}, "bins": bins,
                 "samples": [{"t_s": float(t), "requests": t * 10, "rss_kib": 153_600,
                              "loadgen_rss_kib": 92_160, "in_flight": 1} for t in range(90)]},
        "drain": {"drained": True, "waited_s": 0.3, "writer": {"accepted": 864, "written": 864}},
        "ledger": {"rows": 864, "ok_rows": 864, "cost_nusd": 5000, "database_mib": 1.0,
                   "groups": [{"status": "ok", "http_status": 200, "stream": False,
                               "rows": 864, "cost_nusd": 5000}]},
        "ledger_rows_after_shutdown": 864,
        "reconcile": {p: {"ok": True, "exit_code": 0, "counter_total_nusd": 5000,
                          "ledger_total_nusd": 5000, "mismatches": []} for p in ("day", "month")},
        "elapsed_s": 120.0,
    }  # fmt: skip


def test_verdicts_pass_on_a_clean_run_and_fail_on_each_fault() -> None:
    assert [v["met"] for v in judge(_data())] == [True, True, True, True]
    faults = {
        0: lambda d: d["soak"].update(rss_slope_kib_per_1k=120.0),
        1: lambda d: d["soak"]["windows_ms"]["last"].update(p99=9.5),
        2: lambda d: d["ledger"].update(ok_rows=863, rows=863),
        3: lambda d: d["reconcile"]["day"].update(ok=False, exit_code=1, mismatches=["k"]),
    }
    for index, fault in faults.items():
        d = copy.deepcopy(_data())
        fault(d)
        met = [v["met"] for v in judge(d)]
        assert met[index] is False and met.count(False) == 1, (index, met)
    d = copy.deepcopy(_data())
    d["ledger_rows_after_shutdown"] = 865  # a row written after the count: not drained
    assert judge(d)[2]["met"] is False


def test_report_and_plot_are_written(tmp_path: Path) -> None:
    d = _data()
    d["ledger"]["ok_rows"] = 800
    write_report(d, tmp_path)
    text = (tmp_path / "soak_metered.md").read_text()
    assert "**FAIL** ledger count == answered: 800 ok rows" in text
    assert "**PASS** p99 stable" in text and "| 30 | 100 |" in text
    assert (tmp_path / "soak_metered.png").stat().st_size > 10_000
    assert (tmp_path / "soak_metered.json").exists()


def test_drained_needs_every_accepted_record_written_and_nothing_pending() -> None:
    m = {
        "tollgate_ledger_records_accepted_total": 10.0,
        "tollgate_ledger_records_written_total": 9.0,
        "tollgate_ledger_records_duplicate_total": 1.0,
        "tollgate_ledger_queue_depth": 0.0,
        "tollgate_ledger_spill_pending_bytes": 0.0,
        "tollgate_quota_pending_settlements": 0.0,
    }
    assert drained(m)
    assert not drained({**m, "tollgate_ledger_records_written_total": 8.0})
    assert not drained({**m, "tollgate_quota_pending_settlements": 2.0})
    assert not drained({k: v for k, v in m.items() if k != "tollgate_ledger_queue_depth"})
