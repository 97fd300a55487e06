"""The overhead report: markdown table + interpretation, and the percentile plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import markdown as md
from bench import plots, results

NINES = (50, 90, 99, 99.9)


_f = md.num


def _ci(d: dict[str, Any], key: str) -> str:
    return md.interval(d.get(f"{key}_ms"), d.get(f"{key}_ci95_ms"))


def _label(name: str, v: dict[str, Any]) -> str:
    return f"{v.get('variant', name)} @ {v.get('rate_rps', 0):g}/s"


def verdict_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for name, v in data["variants"].items():
        for key, t in v["targets"].items():
            mark = "MET " if t["met"] else "MISSED"
            scope = "target" if v["headline"] else "(reference)"
            err = (
                f", {100 * v['gateway_error_rate']:.1f}% failed" if v["gateway_error_rate"] else ""
            )
            lines.append(
                f"{mark:6} {_label(name, v):24} {key:18} {_f(t['value'])} ms "
                f"(limit {t['limit']:g} ms{err}) {scope}"
            )
        bad = [k for k, ok in v["checks"].items() if ok is False]
        if bad:
            lines.append(f"WARN   {_label(name, v)}: harness check failed: {', '.join(bad)}")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"SKIP   {name}: {why}")
    return lines


def write_markdown(data: dict[str, Any], path: Path) -> None:
    s, m = data["settings"], data["machine"]
    variants = data["variants"]
    git = data["git"]
    dirty = (
        f" plus uncommitted changes to {len(git['gateway_uncommitted'])} gateway file(s)"
        if git["gateway_uncommitted"]
        else ""
    )
    out = [
        "# Gateway overhead",
        "",
        f"Generated {data['generated_at']} by `python -m bench overhead"
        f"{' --quick' if s['quick'] else ''}` in {data.get('elapsed_s', '?')} s, gateway at "
        f"commit `{git['commit']}`{dirty}.",
        "",
        f"Open-loop load at **{s['rate_rps']:g} requests/s** (the target rate), "
        f"{s['duration_s_per_path']:g} s per path per scenario, against a stand-in engine with "
        f"TTFT {s['engine']['ttft_ms']:g} ms, {s['engine']['tpot_ms']:g} ms per token and "
        f"{s['engine']['max_tokens']} output tokens (a non-streaming answer takes "
        f"{s['engine']['unary_latency_ms']:g} ms). *Added* = gateway path minus direct path at "
        "the same percentile, over the requests that succeeded; brackets: bootstrap 95% "
        "interval. A target counts as met only if no request failed.",
        "",
        "![latency percentiles, gateway vs direct](overhead.png)",
        "",
        "## Added by the gateway",
        "",
    ]
    rows: list[list[object]] = []
    for name, v in variants.items():
        tgt = "; ".join(
            f"{k.removeprefix('added_').removesuffix('_ms').replace('_', ' ')} ≤ {t['limit']:g}"
            f" ms: {'**met**' if t['met'] else '**missed**'}"
            for k, t in v["targets"].items()
        )
        if not v["headline"]:
            tgt = f"({tgt}; reference)"
        g = v["gateway"]
        rows.append([
            _label(name, v), _ci(v["added_latency"], "p50"), _ci(v["added_latency"], "p99"),
            _ci(v["added_ttft"], "p50") if v["stream"] else "-",
            f"{100 * v['gateway_error_rate']:.1f}%", tgt,
            f"{_f(g['cpu_ms_per_request']['gateway'])} ms",
            f"{100 * g['cpu_core_share']['gateway']:.0f}%",
        ])  # fmt: skip
    rows += [[name, f"skipped: {why}", "", "", "", "", "", ""]
             for name, why in data.get("skipped", {}).items()]  # fmt: skip
    out += md.table(
        ["scenario", "added p50 ms", "added p99 ms", "added TTFT p50 ms", "gateway failed",
         "targets", "gateway CPU / request", "gateway core busy"],
        rows,
    )  # fmt: skip
    out += ["", "## Latency by path", ""]
    rows = []
    for name, v in variants.items():
        for path_name in ("direct", "gateway"):
            p = v[path_name]
            lat, ttft = p["latency_ms"], p.get("ttft_ms", {})
            rows.append([
                _label(name, v), path_name, f"{p['ok']} / {p['requests']}", _f(lat["p50"]),
                _f(lat["p90"]), _f(lat["p99"]), _f(lat["p99.9"]), _f(lat["p100"]),
                _f(ttft.get("p50")), _f(ttft.get("p99")), _f(p["send_lag_ms"]["p99"]),
            ])  # fmt: skip
    out += md.table(
        ["scenario", "path", "ok / sent", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
         "TTFT p50 ms", "TTFT p99 ms", "send lag p99 ms"],
        rows,
    )  # fmt: skip
    out += ["", "## Interpretation", "", *interpretation(data)]
    if "profile" in data:
        out += [
            "",
            "## Where the gateway's CPU goes (py-spy)",
            "",
            *profile_section(data["profile"]),
        ]
    pin = "; ".join(f"{k}: {v}" for k, v in s.get("pinning", {}).items())
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    nice = f" Nice value {s['nice']} for the three processes." if s.get("nice") is not None else ""
    out += [
        "",
        "## Machine and settings",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}.",
        f"- Packages: {pk}.",
        f"- Pinning: {pin}.{nice}",
        f"- Gateway: {s['gateway']['command']}; {s['gateway']['workers']} worker; "
        f"{s['gateway']['auth']}; quotas {s['gateway']['quotas']}; access log and ledger off "
        "unless the scenario turns them on.",
        f"- Load generator: {s['loadgen']}. Arrivals {s['arrivals']}; blocks per path "
        f"{s['blocks_per_path']}, order {s['block_order']}; warm-up {s['warmup_s_per_path']:g} s "
        "per path.",
        f"- Request: POST {s['request']['endpoint']}, one short user message, max_tokens "
        f"{s['engine']['max_tokens']}; streams ask for `stream_options.include_usage`.",
        "",
        "Re-run: `python -m bench overhead` (about 8 minutes with the lower rates; `--quick` "
        "about 1 minute; `--profile` adds the py-spy section). Raw numbers: `overhead.json`.",
        "",
    ]
    results.write_markdown(path, out)


def interpretation(data: dict[str, Any]) -> list[str]:
    v = data["variants"]
    rate = data["settings"]["rate_rps"]
    lines: list[str] = []
    for kind, metric in (("unary", "added_latency"), ("stream", "added_ttft")):
        main = v.get(kind)
        if main is None:
            continue
        what = "Non-streaming" if kind == "unary" else "Streaming (time to first token)"
        met = all(t["met"] for t in main["targets"].values())
        g = main["gateway"]
        cpu = g["cpu_ms_per_request"]["gateway"]
        a = main[metric]
        text = (
            f"- **{what} at {rate:g}/s: targets {'met' if met else 'not met'}.** Added p50 "
            f"{_f(a['p50_ms'])} ms, p99 {_f(a['p99_ms'])} ms. The gateway used "
            f"{_f(cpu)} ms of CPU per request and {100 * g['cpu_core_share']['gateway']:.0f}% "
            "of its core."
        )
        if main["gateway_error_rate"] > 0.001:
            text += (
                f" **It was overloaded:** {100 * main['gateway_error_rate']:.1f}% of requests "
                "were refused (503 from its bounded engine queue) and the rest queued, so "
                "one worker cannot carry this rate on this machine."
            )
        lower = [
            (x["rate_rps"], x[metric], x["gateway_error_rate"])
            for x in v.values()
            if x.get("variant") == kind and x["rate_rps"] != rate
        ]
        if lower:
            text += (
                " At lower rates: "
                + "; ".join(
                    f"{r:g}/s added p50 {_f(b['p50_ms'])} ms, p99 {_f(b['p99_ms'])} ms"
                    + (f" ({100 * e:.1f}% failed)" if e > 0.001 else "")
                    for r, b, e in sorted(lower, key=lambda t: t[0])
                )
                + "."
            )
        lines.append(text)
    for x in v.values():
        label = {"unary_access_log": "access log", "unary_ledger": "ledger"}.get(
            x.get("variant", "")
        )
        if label is None:
            continue
        r = x["rate_rps"]
        unary = v.get("unary" if r == rate else f"unary@{r:g}")
        if unary is None:
            continue
        cpu_with = x["gateway"]["cpu_ms_per_request"]["gateway"]
        cpu_without = unary["gateway"]["cpu_ms_per_request"]["gateway"]
        if unary["gateway_error_rate"] > 0.001 or x["gateway_error_rate"] > 0.001:
            lines.append(
                f"- **{label.capitalize()} on, {r:g}/s:** the gateway was overloaded, so the "
                f"latency difference means little; CPU per request {_f(cpu_with)} ms with it "
                f"vs {_f(cpu_without)} ms without."
            )
            continue
        d50 = _delta(x["added_latency"]["p50_ms"], unary["added_latency"]["p50_ms"])
        d99 = _delta(x["added_latency"]["p99_ms"], unary["added_latency"]["p99_ms"])
        lines.append(
            f"- **{label.capitalize()} on, {r:g}/s:** added p50 changes by {_f(d50)} ms, added "
            f"p99 by {_f(d99)} ms and gateway CPU per request by "
            f"{_f(_delta(cpu_with, cpu_without), 3)} ms against the plain gateway at the same "
            "rate (separate gateway runs: differences under ~0.2 ms are noise)."
        )
    for name, why in data.get("skipped", {}).items():
        lines.append(f"- `{name}` was not measured: {why}.")
    checks = []
    for name, x in v.items():
        c = x["checks"]
        checks.append(
            f"{_label(name, x)}: direct p50 {_f(c['baseline_p50_ms'])} ms vs configured "
            f"{c['engine_configured_ms']:g} ms, send lag p99 "
            f"{_f(c['loadgen_send_lag_p99_ms'])} ms, load generator "
            f"{100 * c['loadgen_core_share']:.0f}% of a core, other processes ≤ "
            f"{c['foreign_core_share_max']:.2f} cores"
            + ("" if c["machine_quiet"] else " (**machine busy: numbers unreliable**)")
            + ("" if c["direct_no_errors"] else ", **direct errors**")
            + ("" if c["direct_rate_held"] else ", **rate not held**")
        )
    lines.append(
        "- **Harness checks** (the direct path should sit near the engine's configured "
        "latency, so the load generator is not what is measured): " + "; ".join(checks) + "."
    )
    lines.append(
        "- Send lag (a request leaving after its intended time) is charged to the request on "
        "both paths alike, so it cancels out of *added*; it widens both tails. Other "
        "processes on this shared 2-core machine can still add tail outliers to either path: "
        "read p99 with its interval."
    )
    return lines


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def profile_section(p: dict[str, Any]) -> list[str]:
    if "error" in p:
        return [f"Not profiled: {p['error']}."]
    out = [
        f"{p['samples']} samples over {p['seconds']:g} s of non-streaming load at "
        f"{p.get('rate_rps', 0):g}/s ({p['requests']} requests, "
        f"{_f(p.get('gateway_cpu_ms_per_request'))} ms of gateway CPU each with the sampler "
        f"attached); raw collapsed stacks in `{p['file']}`. Shares are of the gateway's busy "
        "time.",
        "",
    ]
    sections = (
        ("inclusive (on the stack)", p["inclusive"], "{}"),
        ("self time by module", p["self_by_module"][:12], "{}"),
        ("self time by function", p["self_by_function"][:12], "`{}`"),
    )
    for title, rows, name in sections:
        out += [
            *md.table([title, "share"], [[name.format(n), f"{pct}%"] for n, _, pct in rows]),
            "",
        ]
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    v = data["variants"]
    panels = [(n, m) for n, m in (("unary", "latency"), ("stream", "ttft")) if n in v]
    title = (
        f"Tollgate overhead: one worker, {data['machine']['cores']}-core {data['machine']['cpu']}"
    )
    with plots.figure(path, len(panels) + 1, title=title) as (_, axes):
        _draw(data, panels, axes)


def _draw(data: dict[str, Any], panels: list[tuple[str, str]], axes: list[Any]) -> None:
    import numpy as np

    v = data["variants"]
    rate = data["settings"]["rate_rps"]
    others = {"unary_access_log": ("#55a868", "access log on"),
              "unary_ledger": ("#c44e52", "ledger on")}  # fmt: skip
    greys = ["#8172b3", "#937860", "#da8bc3"]
    for ax, (name, metric) in zip(axes, panels, strict=False):
        _curve(ax, v[name]["direct"]["curve_ms"][metric], "#4c72b0", f"direct, {rate:g}/s")
        _curve(ax, v[name]["gateway"]["curve_ms"][metric], "#dd8452", f"gateway, {rate:g}/s")
        for x in v.values():
            other = others.get(x.get("variant", ""))
            if metric == "latency" and other is not None:
                color, label = other
                curve = x["gateway"]["curve_ms"]["latency"]
                _curve(ax, curve, color, f"gateway, {label}, {x['rate_rps']:g}/s", "--")
        lower = sorted(
            (x for x in v.values() if x.get("variant") == name and x["rate_rps"] != rate),
            key=lambda x: float(x["rate_rps"]),
        )
        for color, x in zip(greys, lower, strict=False):
            _curve(
                ax, x["gateway"]["curve_ms"][metric], color, f"gateway, {x['rate_rps']:g}/s", ":"
            )
        title = "Non-streaming latency" if metric == "latency" else "Streaming time to first token"
        ax.set_title(f"{title} (open loop)", fontsize=10)
        ax.set_xlabel("percentile")
        ax.set_ylabel("ms from intended send time (log scale)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="best")
    ax = axes[-1]
    order = {"stream": 0, "unary": 1, "unary_access_log": 2, "unary_ledger": 3}
    names = sorted(v, key=lambda n: (order.get(v[n].get("variant", n), 9), v[n]["rate_rps"]))
    x = np.arange(len(names))
    p50 = [v[n]["added_ttft" if v[n]["stream"] else "added_latency"]["p50_ms"] or 0 for n in names]
    p99 = [v[n]["added_ttft" if v[n]["stream"] else "added_latency"]["p99_ms"] or 0 for n in names]
    ax.bar(x - 0.2, p50, 0.4, label="added p50", color="#4c72b0")
    ax.bar(x + 0.2, p99, 0.4, label="added p99", color="#dd8452")
    t = data["targets"]
    ax.axhline(t["added_p50_ms"], color="#4c72b0", ls=":", lw=1.2, label="p50 target (1 ms)")
    ax.axhline(t["added_p99_ms"], color="#dd8452", ls=":", lw=1.2, label="p99 target (5 ms)")
    for xi, (a, b) in enumerate(zip(p50, p99, strict=True)):
        ax.text(xi - 0.2, a, _short_ms(a), ha="center", va="bottom", fontsize=6)
        ax.text(xi + 0.2, b, _short_ms(b), ha="center", va="bottom", fontsize=6)
    labels = [
        v[n].get("variant", n).replace("unary_", "unary\n")
        + ("\n(TTFT)" if v[n]["stream"] else "")
        + f"\n{v[n].get('rate_rps', rate):g}/s"
        + ("\nfailures" if v[n]["gateway_error_rate"] > 0.001 else "")
        for n in names
    ]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=min([0.0, *p50, *p99]) * 3, top=max([10.0, *p50, *p99]) * 3)
    ax.set_ylabel("ms added by the gateway (symlog)")
    ax.set_title("Added by the gateway (gateway minus direct)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def _short_ms(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _curve(ax: Any, curve: dict[str, float | None], color: str, label: str, ls: str = "-") -> None:
    import numpy as np

    points = sorted((float(k[1:]), val) for k, val in curve.items() if val is not None)
    ps = np.array([p for p, _ in points])
    ys = [val for _, val in points]
    # x axis in "nines": p0 -> 0, p90 -> 1, p99 -> 2, p99.9 -> 3
    xs = -np.log10(1 - ps / 100)
    ax.plot(xs, ys, ls, color=color, label=label, lw=1.8)
    ticks = [p for p in (0, *NINES) if p <= ps.max()]
    ax.set_xticks(-np.log10(1 - np.array(ticks) / 100), [f"p{p:g}" for p in ticks])
