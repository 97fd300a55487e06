"""The throughput scenario's figures, its verdicts on issue 12's targets, and its report.

:func:`summarize` turns raw phases into JSON-able figures (added latency is each target
minus *direct* at the same rate and kind, with a bootstrap interval); :func:`judge` and
:func:`write_report` read only those figures, so a report can be redrawn from the JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench import markdown as md
from bench import plots, results, stats
from bench.phase import PhaseResult

ROUTER = "vllm-router"
#: Issue 12's limits for one gateway worker.
CPU_UNARY_MS = 0.4
CPU_STREAM_MS = 0.8
UNARY_RPS = 2000.0
STREAM_RPS = 1000.0
ADDED_FACTOR = 2.0
#: Other processes may use at most this many cores for a run to count as quiet.
QUIET_CORES = 0.15
#: A rate counts as carried when this share of it was answered, with no errors.
HELD = 0.98


def summarize(raw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    direct = {(p["kind"], p["rate"]): p["result"] for p in raw.get("direct", {}).get("phases", [])}
    out: dict[str, Any] = {}
    for name, t in raw.items():
        phases = []
        for p in t["phases"]:
            r: PhaseResult = p["result"]
            s = phase_summary(r, p["kind"] == "stream")
            s |= {"kind": p["kind"], "rate": p["rate"], "idle_wait_s": p.get("idle_wait_s")}
            base = direct.get((p["kind"], p["rate"]))
            if name != "direct" and base is not None:
                s["added_ms"] = stats.added_with_ci(base.latency, r.latency)
                if p["kind"] == "stream":
                    s["added_ttft_ms"] = stats.added_with_ci(base.ttft, r.ttft, seed=1)
            phases.append(s)
        out[name] = {"notes": t.get("notes", {}), "phases": phases}
    return out


def phase_summary(r: PhaseResult, stream: bool) -> dict[str, Any]:
    ok = int(r.ok.sum())
    span = float(r.done[r.ok].max() - r.intended.min()) if ok else 0.0
    wall = max(r.wall_s, 1e-9)
    out: dict[str, Any] = {
        "requests": int(r.ok.size),
        "ok": ok,
        "errors": dict(r.errors),
        "error_rate": round(1 - ok / max(r.ok.size, 1), 4),
        "achieved_rps": round(ok / span, 1) if span > 0 else 0.0,
        "send_rate_rps": round(r.send_rate, 1),
        "latency_ms": stats.percentiles(r.latency, (50, 90, 99, 100)),
        "send_lag_p99_ms": stats.percentiles(r.send_lag, (99,))["p99"],
        "cpu_ms_per_request": {k: round(v * 1000 / max(ok, 1), 3) for k, v in r.cpu.items()},
        "core_share": {k: round(v / wall, 3) for k, v in r.cpu.items()},
    }
    if stream:
        out["ttft_ms"] = stats.percentiles(r.ttft, (50, 90, 99))
    return out


# ---------------------------------------------------------------------------- verdicts


def ordered(data: dict[str, Any]) -> list[str]:
    """Target names in run order (the JSON sorts its keys): direct, vllm-router, tollgate…"""
    rank = {"direct": 0, ROUTER: 1}
    return sorted(data["targets"], key=lambda n: (rank.get(n, 2), n))


def color(data: dict[str, Any], name: str) -> str:
    return plots.COLORS[ordered(data).index(name) % len(plots.COLORS)]


def _phase(data: dict[str, Any], target: str, kind: str, rate: float) -> dict[str, Any] | None:
    t = data["targets"].get(target)
    if t is None:
        return None
    return next((p for p in t["phases"] if p["kind"] == kind and p["rate"] == rate), None)


def carried(p: dict[str, Any] | None) -> bool:
    return p is not None and not p["errors"] and p["achieved_rps"] >= HELD * p["rate"]


def _cpu(data: dict[str, Any], target: str, kind: str) -> tuple[float | None, str]:
    """The worst CPU per request over the phases the target carried (else its lowest)."""
    phases = [p for p in data["targets"][target]["phases"] if p["kind"] == kind]
    if not phases:
        return None, "not measured"
    good = [p for p in phases if carried(p)]
    pick = max(good, key=lambda p: p["cpu_ms_per_request"].get("router", 0)) if good else phases[0]
    values = [v for p in phases if (v := p["cpu_ms_per_request"].get("router")) is not None]
    spread = (
        f"{min(values, default=0):.3f} to {max(values, default=0):.3f} over {len(values)} rates"
    )
    where = f"at {pick['rate']:g}/s" + ("" if good else ", not carried")
    return pick["cpu_ms_per_request"].get("router"), f"{where}; {spread}"


def judge(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of issue 12, for each gateway target, marked met or missed."""
    rows: list[dict[str, Any]] = []
    gateways = [n for n in ordered(data) if n.startswith("tollgate")]
    router = ROUTER in data["targets"]
    for g in gateways:
        workers = int(data["targets"][g].get("notes", {}).get("workers", 1))

        def add(
            name: str, value: Any, limit: Any, met: bool | None, ref: Any, note: str, g: str = g
        ) -> None:
            rows.append({"gateway": g, "target": name, "value": value, "limit": limit,
                         "met": met, "vllm_router": ref, "note": note})  # fmt: skip

        for kind, limit in (("unary", CPU_UNARY_MS), ("stream", CPU_STREAM_MS)):
            v, note = _cpu(data, g, kind)
            ref = _cpu(data, ROUTER, kind)[0] if router else None
            per = "per unary request" if kind == "unary" else "per stream"
            add(f"CPU ms {per}", v, f"≤ {limit}", None if v is None else v <= limit, ref, note)
        for kind, rate in (("unary", UNARY_RPS), ("stream", STREAM_RPS)):
            p, ref_p = _phase(data, g, kind, rate), _phase(data, ROUTER, kind, rate)
            what = "unary requests/s" if kind == "unary" else "streams/s"
            value = None if p is None else f"{p['achieved_rps']:g}/s, {_errors(p)}"
            ref = None if ref_p is None else f"{ref_p['achieved_rps']:g}/s, {_errors(ref_p)}"
            met = None if p is None or workers != 1 else carried(p)
            note = "judged on one worker" if workers != 1 else ""
            add(f"{rate:,.0f} {what} per worker, 0 errors", value, f"{rate:g}/s", met, ref, note)
        for kind, key in (("unary", "added_ms"), ("stream", "added_ttft_ms")):
            label = "added p50" if kind == "unary" else "added TTFT p50"
            rates = data["settings"]["unary_rates_rps" if kind == "unary" else "stream_rates_rps"]
            for rate in rates:
                p, ref_p = _phase(data, g, kind, rate), _phase(data, ROUTER, kind, rate)
                v = None if p is None else p.get(key, {}).get("p50_ms")
                ref = None if ref_p is None else ref_p.get(key, {}).get("p50_ms")
                lim = None if ref is None else round(ADDED_FACTOR * ref, 3)
                met = None if v is None or lim is None else v <= lim and not (p or {})["errors"]
                note = "" if p is None or not p["errors"] else "requests failed"
                if ref is not None and ref <= 0:
                    note = (note + "; " if note else "") + "vllm-router adds nothing measurable"
                add(f"{label} at {rate:g}/s", v, f"≤ 2 x vllm-router ({lim})", met, ref, note)
    return rows


def _errors(p: dict[str, Any]) -> str:
    n = p["requests"] - p["ok"]
    return "0 errors" if not n else f"{n} errors ({p['error_rate']:.0%})"


def verdict_lines(data: dict[str, Any]) -> list[str]:
    out = []
    for r in data.get("verdicts") or judge(data):
        mark = {True: "MET   ", False: "MISSED", None: "  -   "}[r["met"]]
        out.append(f"{mark} {r['gateway']}: {r['target']}: {r['value']} (limit {r['limit']})")
    return out


# ---------------------------------------------------------------------------- report


def write_report(data: dict[str, Any], out_dir: Path) -> None:
    results.write_markdown(out_dir / "throughput.md", markdown(data))
    plot(data, out_dir / "throughput.png")


def markdown(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    lines = [
        "# Request-path throughput: Tollgate beside vllm-router (issue 12)",
        "",
        f"Generated {data['generated_at']} by `python -m bench throughput"
        f"{' --quick' if s['quick'] else ''}` at `{data['git']['commit']}` on "
        f"{data['machine']['cores']} x {data['machine']['cpu']}.",
        ""
        if not s["quick"]
        else "\n**Quick run** (short phases): a smoke test and trend, not the verdict.",
        "",
        f"Engine: `{s['engine']}` (0 ms, {s['completion_tokens']} tokens). Open loop, "
        f"{s['duration_s_per_phase']:g} s per phase after {s['warmup_s_per_phase']:g} s of "
        "warm-up; latency from each request's intended send time. Added = target minus the "
        "engine directly at the same rate (95% bootstrap interval). CPU ms per request: the "
        "router process (all threads and workers) from `/proc`, over requests answered.",
        "",
        "![latency against offered rate, and CPU per request](throughput.png)",
        "",
        "## Issue 12's targets",
        "",
    ]
    rows = data.get("verdicts") or judge(data)
    lines += md.table(
        ["gateway", "target", "limit", "vllm-router (same run)", "gateway", "verdict", "note"],
        [[r["gateway"], r["target"], r["limit"], _v(r["vllm_router"]), _v(r["value"]),
          md.verdict(r["met"]), r["note"]] for r in rows],
    )  # fmt: skip
    lines += ["", "## Every phase", ""]
    table = []
    for name in ordered(data):
        for p in data["targets"][name]["phases"]:
            added = p.get("added_ttft_ms" if p["kind"] == "stream" else "added_ms", {})
            first = p.get("ttft_ms", {}).get("p50") if p["kind"] == "stream" else None
            table.append([
                name, p["kind"], f"{p['rate']:g}", f"{p['achieved_rps']:g}", _errors(p),
                md.num(p["latency_ms"]["p50"]), md.num(p["latency_ms"]["p99"]), md.num(first),
                md.interval(added.get("p50_ms"), added.get("p50_ci95_ms")),
                md.num(added.get("p99_ms"), sign=True),
                md.num(p["cpu_ms_per_request"].get("router"), 3),
                md.num(p["core_share"].get("router"), 2),
            ])  # fmt: skip
    lines += md.table(
        ["target", "kind", "offered/s", "answered/s", "errors", "p50 ms", "p99 ms",
         "TTFT p50 ms", "added p50 (TTFT for streams) ms", "added p99 ms",
         "router CPU ms/req", "router cores"],
        table, "llrrlrrrrrrr",
    )  # fmt: skip
    lines += ["", "## Checks", "", *checks(data)]
    if data.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in data["skipped"].items())]
    return lines


def _v(value: Any) -> str:
    return md.num(value, 3) if isinstance(value, float) else md.cell(value)


def checks(data: dict[str, Any]) -> list[str]:
    e = data["engine_check"]
    rows = [
        [kind, e[kind]["achieved_rps"], _errors({**e[kind], "error_rate": 0}),
         md.num(e[kind]["p50_ms"], 3), md.num(e[kind]["p99_ms"], 3),
         md.num(e[kind]["engine_cpu_ms_per_request"], 3)]
        for kind in ("standin", "raw") if kind in e
    ]  # fmt: skip
    out = [
        f"Which engine carries {e['rate_rps']:g}/s directly (load generator on its core)? "
        f"Rule: {e.get('rule', '-')}; used: `{data['settings']['engine']}`.",
        "",
    ]
    out += md.table(["engine", "answered/s", "errors", "p50 ms", "p99 ms", "engine CPU ms/req"],
                    rows, "lrlrrr")  # fmt: skip
    m = data.get("metering_check", {})
    out += [
        "",
        f"Metering really ran: {m.get('ledger_rows', '?')} ledger rows in PostgreSQL, "
        f"{m.get('redis_keys', '?')} keys in Redis after the gateway phases.",
    ]
    lag = [p["send_lag_p99_ms"] or 0 for t in data["targets"].values() for p in t["phases"]]
    core1 = [
        sum(p["core_share"].get(k, 0) for k in ("engine", "loadgen", "redis", "postgres"))
        for t in data["targets"].values() for p in t["phases"]
    ]  # fmt: skip
    foreign = [
        p["core_share"].get("foreign", 0) for t in data["targets"].values() for p in t["phases"]
    ]
    out.append(
        f"Load generator send lag p99: at most {max(lag, default=0):.2f} ms. Core 1 (engine, "
        f"load generator, Redis, PostgreSQL) busiest at {max(core1, default=0):.2f} of a core; "
        f"other processes at most {max(foreign, default=0):.2f} cores."
    )
    if max(foreign, default=0) > QUIET_CORES:
        out += ["", f"**Not quiet**: other processes used up to {max(foreign):.2f} cores in a "
                "phase; the figures are noisier than on an idle machine."]  # fmt: skip
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    with plots.figure(path, 3, size=(5.2, 4.6), title="Throughput: one worker, 0 ms engine") as (
        _,
        axes,
    ):
        for ax, kind, key in ((axes[0], "unary", "latency_ms"), (axes[1], "stream", "ttft_ms")):
            for name in ordered(data):
                ps = [p for p in data["targets"][name]["phases"] if p["kind"] == kind]
                if not ps:
                    continue
                x = [p["rate"] for p in ps]
                c = color(data, name)
                ax.plot(x, [p[key]["p50"] for p in ps], "-o", color=c, label=f"{name} p50")
                ax.plot(x, [p[key]["p99"] for p in ps], ":", color=c, label=f"{name} p99")
                bad = [p for p in ps if not carried(p)]
                ax.scatter([p["rate"] for p in bad], [p[key]["p50"] or np.nan for p in bad],
                           marker="x", s=80, color="k", zorder=5)  # fmt: skip
            ax.set_yscale("log")
            ax.set_xlabel("offered requests/s (x: errors or rate not held)")
            ax.set_ylabel("ms" + (" to first token" if kind == "stream" else ""))
            ax.set_title("unary latency" if kind == "unary" else "stream time to first token")
            ax.grid(True, which="both", alpha=0.25)
            ax.legend(fontsize=7)
        ax = axes[2]
        names = [n for n in ordered(data) if n != "direct"]
        labels, width = [], 0.8 / max(len(names), 1)
        phases = [(p["kind"], p["rate"]) for p in data["targets"][ordered(data)[0]]["phases"]]
        for i, name in enumerate(names):
            vals = [(_phase(data, name, k, r) or {}).get("cpu_ms_per_request", {}).get("router")
                    for k, r in phases]  # fmt: skip
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(phases))]
            ax.bar(xs, [v or 0 for v in vals], width, color=color(data, name), label=name)
        labels = [f"{k}\n{r:g}/s" for k, r in phases]
        ax.set_xticks(range(len(phases)), labels, fontsize=7)
        ax.axhline(CPU_UNARY_MS, color="k", ls=":", lw=1, label=f"unary target {CPU_UNARY_MS}")
        ax.axhline(CPU_STREAM_MS, color="k", ls="--", lw=1, label=f"stream target {CPU_STREAM_MS}")
        ax.set_ylabel("router CPU ms per request")
        ax.set_title("CPU per request")
        ax.legend(fontsize=7)
