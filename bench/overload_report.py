"""The overload benchmark's figures, verdicts, report and plot (``bench.overload`` runs it).

Everything here works on plain dicts, so a report can be redrawn from ``overload.json``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench import markdown as md
from bench import plots, results, stats
from bench.phase import PhaseResult

#: Issue 13's targets: goodput share of capacity, refusal p99, accepted time-outs.
GOODPUT_SHARE = 0.9
#: What the overload control answers with.
REFUSAL = "503 gateway_overloaded"
REFUSAL_P99_MS = 5.0
#: A phase's rate was offered when this share of it was sent (and send lag p99 <= 20 ms).
SCHEDULE_HELD = 0.97
#: Other processes using more than this many cores make the figures noisy.
QUIET_CORES = 0.3


def summarize_phase(
    r: PhaseResult, *, load: float | None, capacity: float | None, timeout_s: float
) -> dict[str, Any]:
    """One phase's figures: goodput, refusals by code, latencies, time-outs.

    Goodput counts the successful answers that came while the load was offered (from
    the first intended send to one interval after the last), so a backlog answered
    after the load stopped does not count as capacity."""
    n, d = r.ok.size, r.duration
    latency = r.done - r.start
    in_time = r.ok & (latency <= timeout_s)
    refused = np.zeros(n, dtype=bool)
    refused[[i for i, c in r.codes.items() if c == REFUSAL]] = True
    late = int((r.ok & ~in_time).sum())
    unanswered = int(r.errors.get("timeout", 0))
    window = float(n / r.rate)
    during = in_time & (r.done <= r.intended[0] + window)
    goodput = float(during.sum()) / window
    wall = max(r.wall_s, 1e-9)
    core1 = sum(r.cpu.get(k, 0.0) for k in ("engine", "loadgen", "redis", "postgres")) / wall
    out: dict[str, Any] = {
        "load": load,
        "rate": round(r.rate, 1),
        "sent_rps": round(r.send_rate, 1),
        "requests": n,
        "duration_s": round(d, 3),
        "goodput_rps": round(goodput, 1),
        "goodput_share": round(goodput / capacity, 3) if capacity else None,
        "answered_in_time": int(in_time.sum()),
        "refusals_rps": round(float(refused.sum()) / d, 1),
        "answers_rps_by_code": {
            k: round(v / d, 1) for k, v in sorted(Counter(r.codes.values()).items())
        },
        "errors": dict(sorted(r.errors.items())),
        "failed": n - int(in_time.sum()),
        "refusal_ms": stats.percentiles(latency[refused]),
        "accepted_ms": stats.percentiles(latency[r.ok]),
        "accepted_timeouts": late + unanswered,
        "send_lag_p99_ms": stats.percentiles(r.send_lag, (99,))["p99"],
        "core1_cores": round(core1, 2),
        "gateway_cores": round(r.cpu.get("router", 0.0) / wall, 2),
        "foreign_cores": round(r.cpu.get("foreign", 0.0) / wall, 2),
    }
    if r.ok.any() and (r.first[r.ok] > 0).all():
        out["ttft_ms"] = stats.percentiles(r.ttft)
    return out


def judge(loads: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 13's three targets per kind, over every load measured."""
    out = []
    for kind, ps in loads.items():
        if not ps:
            continue
        worst = min(ps, key=lambda p: p["goodput_share"] or 0.0)
        share = worst["goodput_share"] or 0.0
        out.append({
            "kind": kind, "target": "goodput at every load", "limit": f">= {GOODPUT_SHARE:.0%} "
            "of capacity", "value": f"{share:.0%} (lowest, at {worst['load']:g}x)",
            "met": share >= GOODPUT_SHARE, "note": "",
        })  # fmt: skip
        refusing = [p for p in ps if p["refusal_ms"]["p99"] is not None]
        slow = max(refusing, key=lambda p: p["refusal_ms"]["p99"], default=None)
        out.append({
            "kind": kind, "target": "refusal latency p99", "limit": f"<= {REFUSAL_P99_MS:g} ms",
            "value": None if slow is None else
            f"{slow['refusal_ms']['p99']:.2f} ms (highest, at {slow['load']:g}x)",
            "met": None if slow is None else slow["refusal_ms"]["p99"] <= REFUSAL_P99_MS,
            "note": "no request was refused" if slow is None else "",
        })  # fmt: skip
        timeouts = sum(p["accepted_timeouts"] for p in ps)
        out.append({
            "kind": kind, "target": "accepted requests timed out at the client", "limit": "0",
            "value": str(timeouts), "met": timeouts == 0, "note": "",
        })  # fmt: skip
    return out


def score(verdicts: list[dict[str, Any]], loads: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """Rank a setting: targets met, then the lowest goodput share, then the refusal p99."""
    met = sum(1 for v in verdicts if v["met"] is not False)
    ps = [p for kind in loads.values() for p in kind]
    share = min((p["goodput_share"] or 0.0 for p in ps), default=0.0)
    refusal = max((p["refusal_ms"]["p99"] or 0.0 for p in ps), default=0.0)
    return [met, round(share, 3), -round(refusal, 3)]


def pick_best(
    settings: dict[str, Any], loads: dict[str, list[dict[str, Any]]], sweep: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The best of the loads' settings and the sweep's, judged on the sweep's loads only."""
    if not sweep:
        return None
    sweep_loads = {p["load"] for s in sweep for kind in s["loads"].values() for p in kind}
    same = {k: [p for p in ps if p["load"] in sweep_loads] for k, ps in loads.items()}
    ranked: list[dict[str, Any]] = [{"settings": settings, "score": score(judge(same), same)}]
    ranked += [{"settings": s["settings"], "score": score(s["verdicts"], s["loads"])}
               for s in sweep]  # fmt: skip
    ranked.sort(key=lambda c: c["score"], reverse=True)
    return {"settings": ranked[0]["settings"], "ranking": ranked,
            "rule": "most targets met at the sweep's loads, then the highest lowest goodput "
            "share, then the lowest refusal p99"}  # fmt: skip


def verdict_lines(data: dict[str, Any]) -> list[str]:
    out = []
    for v in data["verdicts"]:
        mark = {True: "MET   ", False: "MISSED", None: "  -   "}[v["met"]]
        out.append(f"{mark} {v['kind']}: {v['target']}: {v['value']} (limit {v['limit']})")
    if data.get("best"):
        out.append(f"best settings in the sweep: {_pair(data['best']['settings'])}")
    return out


# ---------------------------------------------------------------------------- report


def write_report(data: dict[str, Any], out_dir: Path) -> None:
    results.write_markdown(out_dir / "overload.md", markdown(data))
    plot(data, out_dir / "overload.png")


def _pair(s: dict[str, Any]) -> str:
    return f"`max_in_flight: {s['max_in_flight']}`, `max_loop_lag_ms: {s['max_loop_lag_ms']:g}`"


def markdown(data: dict[str, Any]) -> list[str]:
    s, g = data["settings"], data["settings"]["gateway"]
    cap = {k: v["capacity_rps"] for k, v in data["capacity"].items()}
    lines = [
        "# Overload control: one worker at 1x to 4x its capacity (issue 13)",
        "",
        f"Generated {data['generated_at']} by `python -m bench overload"
        f"{' --quick' if s['quick'] else ''}` at `{data['git']['commit']}` on "
        f"{data['machine']['cores']} x {data['machine']['cpu']}, in {data['elapsed_s']:g} s.",
        "",
        *(
            [
                "**Quick run** (short phases, coarse ramp, no sweep): a smoke test, not the "
                "verdict.",
                "",
            ]
            if s["quick"]
            else []
        ),
        f"One fully metered gateway worker ({s['gateway_config']}) on core 0; the 0 ms stub "
        f"engine ({s['completion_tokens']} tokens), the load generator, Redis and PostgreSQL "
        f"on core 1. Overload control under test: {_pair(g)}"
        f"{' (the gateway defaults)' if g['defaults'] else ''}. Open loop, "
        f"{s['phase_s']:g} s per load after {s['warmup_s_per_phase']:g} s of warm-up at the "
        "same rate; every latency from the request's intended send time. A client gives up "
        f"{s['client_timeout_s']:g} s after that; an accepted request timed out if it was "
        "answered later or not at all. Goodput: successful answers within the client "
        "timeout that came while the load was offered, per second. Refused: 503 "
        "`gateway_overloaded`, the overload control's answer; any other status is listed "
        "by its code. Sent/s and send lag: whether the load generator (on core 1 with the "
        "engine, Redis and PostgreSQL) kept to its schedule.",
        "",
        "![goodput and latency against offered load](overload.png)",
        "",
        "## Capacity",
        "",
        f"Rule: {s['capacity_rule']}; {s['ramp_phase_s']:g} s per step, on a gateway of its "
        "own (same config). Unary: "
        f"**{_rps(cap.get('unary'))}**; streams: **{_rps(cap.get('stream'))}**.",
        "",
    ]
    ramp_rows = [
        [kind, f"{p['rate']:g}", f"{p['goodput_rps']:g}", p["failed"],
         md.num(p["accepted_ms"]["p50"]), md.num(p["accepted_ms"]["p99"]),
         "yes" if p["carried"] else "no"]
        for kind, c in data["capacity"].items() for p in c["steps"]
    ]  # fmt: skip
    lines += md.table(["kind", "offered/s", "answered/s", "failed", "p50 ms", "p99 ms",
                       "carried"], ramp_rows, "lrrrrrl")  # fmt: skip
    lines += ["", "## Issue 13's targets", ""]
    lines += md.table(
        ["kind", "target", "limit", "measured", "verdict", "note"],
        [[v["kind"], v["target"], v["limit"], v["value"], md.verdict(v["met"]), v["note"]]
         for v in data["verdicts"]],
    )  # fmt: skip
    for kind, ps in data["loads"].items():
        if ps:
            lines += ["", f"## {kind.capitalize()} per load ({_rps(cap.get(kind))} = 1x)", ""]
            lines += load_table(ps, kind == "stream")
    lines += sweep_section(data)
    lines += ["", "## Checks", "", *checks(data)]
    return lines


def _rps(v: float | None) -> str:
    return "not measured" if v is None else f"{v:g}/s"


def load_table(ps: list[dict[str, Any]], stream: bool) -> list[str]:
    rows = []
    for p in ps:
        other = {k: v for k, v in p["answers_rps_by_code"].items() if k != REFUSAL}
        lost = {k: v for k, v in p["errors"].items() if not k.startswith("http_")}
        row = [
            f"{p['load']:g}x", f"{p['rate']:g}", f"{p['sent_rps']:g}", f"{p['goodput_rps']:g}",
            f"{(p['goodput_share'] or 0):.0%}", f"{p['refusals_rps']:g}",
            ", ".join([*(f"{k}: {v:g}/s" for k, v in other.items()),
                       *(f"{k}: {v} requests" for k, v in lost.items())]) or "-",
            f"{md.num(p['refusal_ms']['p50'])} / {md.num(p['refusal_ms']['p99'])}",
            f"{md.num(p['accepted_ms']['p50'])} / {md.num(p['accepted_ms']['p99'])}",
        ]  # fmt: skip
        if stream:
            t = p.get("ttft_ms") or {}
            row.append(f"{md.num(t.get('p50'))} / {md.num(t.get('p99'))}")
        rows.append(
            [
                *row,
                p["accepted_timeouts"],
                md.num(p["gateway_cores"]),
                md.num(p.get("core1_cores")),
                md.num(p["send_lag_p99_ms"], 1),
            ]
        )
    header = [
        "load",
        "offered/s",
        "sent/s",
        "goodput/s",
        "of capacity",
        "refused/s",
        "other answers and errors",
        "refusal p50 / p99 ms",
        "accepted p50 / p99 ms",
    ]
    header += ["accepted TTFT p50 / p99 ms"] if stream else []
    header += ["accepted, timed out", "gateway cores", "core 1 cores", "send lag p99 ms"]
    return md.table(header, rows, "lrrrrrlrr" + ("r" if stream else "") + "rrrr")  # fmt: skip


def sweep_section(data: dict[str, Any]) -> list[str]:
    sweep, best = data.get("sweep") or [], data.get("best")
    if not sweep or not best:
        met = all(v["met"] is not False for v in data["verdicts"])
        why = "every target was met" if met else "not run (quick run, or `--sweep never`)"
        return ["", "## Other settings", "", f"No sweep: {why}."]
    out = ["", "## Other settings (sweep)", "",
           f"The loads' settings and {len(sweep)} other pairs at "
           f"{', '.join(f'{x:g}x' for x in data['settings']['sweep']['loads_x_capacity'])} "
           f"capacity, {data['settings']['sweep']['phase_s']:g} s each, on a fresh gateway "
           f"per pair. Ranked by {best['rule']}.", ""]  # fmt: skip
    by = {_pair(s["settings"]): s["loads"] for s in sweep}
    by.setdefault(_pair(data["settings"]["gateway"]), data["loads"])
    loads = set(data["settings"]["sweep"]["loads_x_capacity"])
    rows = []
    for c in best["ranking"]:
        for kind, ps in by[_pair(c["settings"])].items():
            for p in (p for p in ps if p["load"] in loads):
                rows.append([_pair(c["settings"]), kind, f"{p['load']:g}x",
                             f"{(p['goodput_share'] or 0):.0%}", md.num(p["refusal_ms"]["p99"]),
                             md.num(p["accepted_ms"]["p99"]), p["accepted_timeouts"],
                             f"{c['score'][0]}"])  # fmt: skip
    out += md.table(["settings", "kind", "load", "goodput of capacity", "refusal p99 ms",
                     "accepted p99 ms", "accepted, timed out", "targets met (of 6)"],
                    rows, "lllrrrrr")  # fmt: skip
    out += ["", f"Best: {_pair(best['settings'])}."]
    for s in data.get("sweep_skipped") or []:
        out += ["", f"Skipped {_pair(s['settings'])}: its gateway failed ({s['why'][:200]})."]
    return out


def checks(data: dict[str, Any]) -> list[str]:
    phases = [p for ps in data["loads"].values() for p in ps]
    phases += [p for c in data["capacity"].values() for p in c["steps"]]
    phases += [p for s in data.get("sweep") or [] for ps in s["loads"].values() for p in ps]
    lag = max((p["send_lag_p99_ms"] or 0 for p in phases), default=0)
    foreign = max((p["foreign_cores"] for p in phases), default=0)
    m = data.get("metering_check", {})
    out = [
        f"Metering really ran: {m.get('ledger_rows', '?')} ledger rows in PostgreSQL, "
        f"{m.get('redis_keys', '?')} keys in Redis at the end.",
        f"Load generator send lag p99: at most {lag:.2f} ms over all phases. Other processes "
        f"on the machine used at most {foreign:.2f} cores in a phase.",
    ]
    behind = [
        f"{kind} {p['load']:g}x (sent {p['sent_rps']:g} of {p['rate']:g}/s, send lag p99 "
        f"{md.num(p['send_lag_p99_ms'], 0)} ms)"
        for kind, ps in data["loads"].items() for p in ps if not kept_schedule(p)
    ]  # fmt: skip
    if behind:
        out += ["", "**The load generator fell behind** at " + "; ".join(behind) + ". It "
                "shares core 1 with the engine, Redis and PostgreSQL; requests it sent late "
                "are charged from their intended time, so in these rows refusal and accepted "
                "latency, time-outs and connection errors measure the rig as much as the "
                "gateway. Only the loads it kept to schedule judge the control."]  # fmt: skip
    if foreign > QUIET_CORES:
        out += ["", f"**Not quiet**: other processes used up to {foreign:.2f} cores in a "
                "phase; the figures are noisier than on an idle machine."]  # fmt: skip
    return out


def kept_schedule(p: dict[str, Any]) -> bool:
    """Whether the load generator sent the phase's rate on time (within 3% and 20 ms p99)."""
    return p["sent_rps"] >= SCHEDULE_HELD * p["rate"] and (p["send_lag_p99_ms"] or 0) <= 20.0


def plot(data: dict[str, Any], path: Path) -> None:
    kinds = [k for k, ps in data["loads"].items() if ps]
    title = "Overload: one worker, " + _pair(data["settings"]["gateway"]).replace("`", "")
    with plots.figure(path, 2, max(len(kinds), 1), size=(5.4, 4.2), title=title) as (_, axes):
        for row, kind in enumerate(kinds):
            ps = data["loads"][kind]
            cap = data["capacity"][kind]["capacity_rps"]
            x = [p["load"] for p in ps]
            ax = axes[2 * row]
            ax.plot(x, [p["goodput_rps"] for p in ps], "-o", color=plots.COLORS[0], label="goodput")
            ax.plot(
                x,
                [p["refusals_rps"] for p in ps],
                "-s",
                color=plots.COLORS[1],
                label="refused (503)",
            )
            ax.axhline(cap, color="k", lw=1, label=f"capacity {cap:g}/s")
            ax.axhline(GOODPUT_SHARE * cap, color="k", ls=":", lw=1,
                       label=f"target {GOODPUT_SHARE:.0%}")  # fmt: skip
            ax.set_xlabel("offered load (x capacity)")
            ax.set_ylabel("per second")
            ax.set_title(f"{kind}: goodput and refusals")
            ax.legend(fontsize=7)
            ax.grid(True, alpha=0.25)
            ax = axes[2 * row + 1]
            for key, pct, style, color, label in (
                ("accepted_ms", "p50", "-o", plots.COLORS[0], "accepted p50"),
                ("accepted_ms", "p99", ":o", plots.COLORS[0], "accepted p99"),
                ("refusal_ms", "p99", "-s", plots.COLORS[1], "refusal p99"),
            ):
                ax.plot(x, [p[key][pct] or np.nan for p in ps], style, color=color, label=label)
            ax.axhline(REFUSAL_P99_MS, color="k", ls=":", lw=1, label="refusal target")
            ax.set_yscale("log")
            ax.set_xlabel("offered load (x capacity)")
            ax.set_ylabel("ms from intended send time")
            ax.set_title(f"{kind}: latency")
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.25)
