"""The metered soak's report and plot: ``soak_metered.{json,md,png}``, from the plain
figures :mod:`bench.soak_metered_report` computes (so they redraw from the JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench import markdown as md
from bench import plots, results
from bench.soak_metered_report import P99_WINDOW_S, judge, usd


def write_report(data: dict[str, Any], out: Path) -> None:
    """``soak_metered.{json,md,png}`` under ``out``; adds the verdicts to ``data``."""
    data["verdicts"] = judge(data)
    results.write_json(out / "soak_metered.json", data)
    results.write_markdown(out / "soak_metered.md", markdown(data))
    plot(data, out / "soak_metered.png")


def markdown(data: Mapping[str, Any]) -> list[str]:
    s, cap, st = data["soak"], data["capacity"], data["settings"]
    sent = sum(s["sent"].values())
    lines = [
        f"# Metered soak: one gateway worker at {st['load_x_capacity']:g}x its capacity, open loop",
        "",
        f"{data['generated_at']}, commit {data['git']['commit']}. {s['rate_rps']:g} requests/s "
        f"({st['load_x_capacity']:g} x the measured {cap['capacity_rps']:g}/s) for "
        f"{s['duration_s']:g} s: {sent:,} requests ("
        + ", ".join(f"{k} {v:,}" for k, v in s["sent"].items())
        + "). "
        f"{st['gateway']}. Engine: {st['engine']}.",
        "",
        "## Verdicts",
        "",
        *[
            f"- **{'PASS' if v['met'] else 'FAIL' if v['met'] is False else 'n/a'}** "
            f"{v['check']}: {v['detail']}"
            for v in data["verdicts"]
        ],
        "",
        f"Goodput {s['goodput_rps']:,} answered/s ({_share(s['goodput_share'])} of the chat and "
        f"stream requests sent); errors: {_errors(s['errors'])}. Latency of answered requests "
        f"over the whole soak: p50 {s['generation_ms']['p50']} ms, p99 "
        f"{s['generation_ms']['p99']} ms, p99.9 {s['generation_ms']['p99.9']} ms. The load "
        f"generator's own RSS: {s['loadgen_rss_mib']['start']} → "
        f"{s['loadgen_rss_mib']['end']} MiB.",
        "",
        "![gateway RSS and p99 over time](soak_metered.png)",
        "",
        f"## Per {_bin_name(s['bin_s'])}",
        "",
        "Requests by the bin of their intended send time; latency of right answers, from the "
        "intended send time.",
        "",
        *md.table(
            [
                "from (s)",
                "sent",
                "answered/s",
                "errors",
                "chat p50 / p99 ms",
                "stream p50 / p99 ms",
                "stream TTFT p99 ms",
                "all p99 ms",
                "RSS at end (MiB)",
            ],
            [
                [
                    f"{b['start_s']:g}",
                    f"{b['sent']:,}",
                    f"{b['goodput_rps']:,}",
                    sum(b["errors"].values()),
                    _pair(b["ms"].get("chat")),
                    _pair(b["ms"].get("stream")),
                    (b["ttft_ms"].get("stream") or {}).get("p99"),
                    b["generation_ms"]["p99"],
                    b["rss_mib_end"],
                ]
                for b in s["bins"]
            ],
            "rrrrrrrrr",
        ),
        "",
        "## Capacity",
        "",
        f"{cap['rule']}.",
        "",
    ]
    if cap["steps"]:
        lines += md.table(
            ["rate (/s)", "carried", "sent", "failed", "p99 ms"],
            [
                [
                    f"{x['rate']:g}",
                    "yes" if x["carried"] else "no",
                    x["sent"],
                    x["failed"],
                    x["p99_ms"],
                ]
                for x in cap["steps"]
            ],
            "rcrrr",
        )
        lines.append("")
    led, drain = data["ledger"], data["drain"]
    lines += [
        "## Accounting",
        "",
        f"After the load stopped, the ledger writer drained in {drain['waited_s']:g} s "
        f"(writer: " + ", ".join(f"{k} {v:,}" for k, v in drain["writer"].items()) + "). "
        f"Ledger rows in PostgreSQL ({led['database_mib']} MiB):",
        "",
        *md.table(
            ["status", "HTTP", "stream", "rows", "cost (USD)"],
            [
                [
                    g["status"],
                    g["http_status"],
                    "yes" if g["stream"] else "no",
                    f"{g['rows']:,}",
                    usd(g["cost_nusd"]),
                ]
                for g in led["groups"]
            ],
            "lrcrr",
        ),
        "",
        "Which requests must have a record: every request that reached the engine "
        "(`Pipeline._record`: a routed engine and an admitted request), whatever its end; "
        "refusals before admission (bad JSON 400, wrong key 401) have none. At 80% of "
        "capacity every such request should be an answered 200, so the check is ok rows == "
        "answered 200s, with any other row explained by a failed request.",
        "",
        "`tollgate reconcile --json` (the Redis spend counters against the ledger, per key):",
        "",
        *md.table(
            ["period", "exit", "counters", "ledger", "mismatched keys"],
            [
                [
                    p,
                    r.get("exit_code"),
                    usd(r.get("counter_total_nusd")),
                    usd(r.get("ledger_total_nusd")),
                    len(r.get("mismatches", [])),
                ]
                for p, r in data["reconcile"].items()
            ],
            "lrrrr",
        ),
        "",
        "## How it was measured",
        "",
        f"- Load: {st['loadgen']}; mix (weights) "
        + ", ".join(f"{k} {v:g}" for k, v in st["mix"].items())
        + ".",
        f"- Warm-up: the first {s['warmup_s']:g} s (excluded from the RSS slope and the "
        f"windows); p99 windows of up to {P99_WINDOW_S:g} s after it.",
        f"- Pinning: {_pinning(st['pinning'])}.",
        f"- Ran {data['elapsed_s']:g} s in all on {data['machine']['cpu']} "
        f"({data['machine']['cores']} cores).",
    ]
    return lines


def _pinning(p: Any) -> str:
    return "; ".join(f"{k} on {v}" for k, v in p.items()) if isinstance(p, dict) else str(p)


def _bin_name(bin_s: float) -> str:
    return "minute" if bin_s == 60 else f"{bin_s:g} s"


def _pair(p: Mapping[str, Any] | None) -> str:
    if not p or p.get("p50") is None:
        return "-"
    return f"{p['p50']:.2f} / {p['p99']:.2f}"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.3%}"


def _errors(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in errors.items()) or "none"


def plot(data: Mapping[str, Any], path: Path) -> None:
    s = data["soak"]
    t = [x["t_s"] for x in s["samples"]]
    rss = [x["rss_kib"] / 1024 for x in s["samples"]]
    with plots.figure(path, nrows=2, size=(8, 3.0)) as (_, (top, bottom)):
        top.plot(t, rss, color=plots.COLORS[0])
        top.axvline(s["warmup_s"], linestyle=":", color="grey", label="end of warm-up")
        top.set_ylabel("gateway RSS (MiB)")
        top.set_ylim(0, max(rss, default=1.0) * 1.15)
        top.set_title(f"Metered soak at {s['rate_rps']:g}/s")
        top.legend(loc="lower right")
        mids = [b["start_s"] + s["bin_s"] / 2 for b in s["bins"]]
        for i, name in enumerate(("chat", "stream")):
            ys = [(b["ms"].get(name) or {}).get("p99") for b in s["bins"]]
            bottom.plot(
                mids,
                [np.nan if y is None else y for y in ys],
                marker=".",
                color=plots.COLORS[i + 1],
                label=f"{name} p99",
            )
        for name, w in s["windows_ms"].items():
            bottom.axvspan(w["from_s"], w["to_s"], alpha=0.12, color="grey")
            bottom.text(w["from_s"], 0, f" {name}", fontsize=8, va="bottom")
        bottom.axvline(s["warmup_s"], linestyle=":", color="grey")
        bottom.set_xlabel("seconds into the soak")
        bottom.set_ylabel(f"p99 per {_bin_name(s['bin_s'])} (ms)")
        bottom.set_ylim(bottom=0)
        bottom.legend(loc="upper right")
