"""The upstream-clients benchmark's summary, recommendation and ``upstream_clients.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import markdown as md
from bench import results
from bench.upstream_client_factories import CLIENTS, MODES


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over repeats per (mode, concurrency, client)."""
    keys = sorted({(r["mode"], r["concurrency"], r["client"]) for r in runs},
                  key=lambda k: (MODES.index(k[0]), k[1], CLIENTS.index(k[2])))  # fmt: skip
    out = []
    for mode, c, client in keys:
        rs = [r for r in runs if (r["mode"], r["concurrency"], r["client"]) == (mode, c, client)]

        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            vals = [r[key] for r in rs if r[key] is not None]
            return round(float(sum(vals) / len(vals)), 2) if vals else None

        row: dict[str, Any] = {"mode": mode, "concurrency": c, "client": client}
        for key in ("throughput_rps", "p50_ms", "p99_ms", "client_cpu_us_per_request",
                    "client_core_share", "foreign_core_share"):  # fmt: skip
            row[key] = mean(key)
        row["errors"] = sum(r["errors"] for r in rs)
        out.append(row)
    return out


def recommend(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Pick by CPU per request at the concurrencies a gateway worker really runs (≥16)."""

    def cpu(mode: str, c: int, client: str) -> float | None:
        for s in summary:
            if (s["mode"], s["concurrency"], s["client"]) == (mode, c, client):
                value: float | None = s["client_cpu_us_per_request"]
                return value
        return None

    savings = []
    for s in summary:
        if s["client"] != "httpx" or s["concurrency"] < 16:
            continue
        h, a = s["client_cpu_us_per_request"], cpu(s["mode"], s["concurrency"], "aiohttp")
        if h and a:
            savings.append({"mode": s["mode"], "concurrency": s["concurrency"],
                            "httpx_us": h, "aiohttp_us": a,
                            "aiohttp_saves_pct": round(100 * (h - a) / h, 1)})  # fmt: skip
    worst = min((x["aiohttp_saves_pct"] for x in savings), default=0.0)
    choice = "aiohttp" if savings and worst >= 20.0 else "httpx"
    return {"choice": choice, "rule": "aiohttp only if it saves ≥20% client CPU per request in "
            "every mode at every concurrency ≥16", "savings": savings}  # fmt: skip


def transport_savings(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Client CPU per request of HttpTransport against AiohttpTransport, per cell."""
    cells = {(s["mode"], s["concurrency"], s["client"]): s for s in summary}
    out = []
    for (mode, c, client), s in cells.items():
        old = cells.get((mode, c, "gateway"))
        if client != "http" or old is None:
            continue
        new_us, old_us = s["client_cpu_us_per_request"], old["client_cpu_us_per_request"]
        out.append({"mode": mode, "concurrency": c, "http_us": new_us, "aiohttp_us": old_us,
                    "http_saves_pct": round(100 * (old_us - new_us) / old_us, 1)})  # fmt: skip
    return out


def write_markdown(data: dict[str, Any], path: Path) -> None:
    s, m, rec = data["settings"], data["machine"], data["recommendation"]
    out = [
        "# Upstream HTTP client: httpx (as the gateway configures it) vs aiohttp",
        "",
        f"Generated {data['generated_at']} by `python -m bench upstream-clients"
        f"{' --quick' if data.get('quick') else ''}`. Closed-loop workers against a stand-in "
        f"engine (TTFT {s['engine']['ttft_ms']:g} ms, {s['engine']['tpot_ms']:g} ms per token, "
        f"{s['engine']['max_tokens']} tokens), {s['duration_s']:g} s per cell, mean of "
        f"{s['repeats']} repeats in alternating order; {s['pinning']}; {s['loop']}.",
        "",
        "*Client CPU per request* is this process's CPU time divided by the requests it "
        "completed: what one upstream call costs the gateway's event loop. `raw` is the "
        "benchmark's own minimal client, shown as the floor.",
        "",
    ]
    out += md.table(
        ["mode", "concurrency", "client", "req/s", "p50 ms", "p99 ms", "client CPU µs/req",
         "client core busy", "errors"],
        [[r["mode"], r["concurrency"], r["client"], f"{r['throughput_rps']:.0f}",
          md.num(r["p50_ms"]), md.num(r["p99_ms"]), f"{r['client_cpu_us_per_request']:.0f}",
          f"{100 * r['client_core_share']:.0f}%", r["errors"]] for r in data["summary"]],
    )  # fmt: skip
    out += ["", "## Recommendation", "", f"**{rec['choice']}** (rule: {rec['rule']}).", ""]
    for x in rec["savings"]:
        out.append(
            f"- {x['mode']}, concurrency {x['concurrency']}: httpx {x['httpx_us']:.0f} µs, "
            f"aiohttp {x['aiohttp_us']:.0f} µs per request ({x['aiohttp_saves_pct']:.0f}% less)."
        )
    title = "## The gateway's transports: HttpTransport (`http`) vs AiohttpTransport (`gateway`)"
    out += ["", title, ""]
    for x in transport_savings(data["summary"]):
        out.append(
            f"- {x['mode']}, concurrency {x['concurrency']}: aiohttp transport "
            f"{x['aiohttp_us']:.0f} µs, http transport {x['http_us']:.0f} µs per request "
            f"({x['http_saves_pct']:.0f}% less)."
        )
    saturated = [
        r for r in data["summary"] if r["client"] == "httpx" and r["client_core_share"] >= 0.9
    ]
    if saturated:
        first = min(saturated, key=lambda r: r["concurrency"])
        out += [
            "",
            f"httpx saturates the client's core from concurrency {first['concurrency']} "
            f"({first['mode']}: {first['throughput_rps']:.0f} req/s, p50 "
            f"{first['p50_ms']:.0f} ms): its cost per request grows with the number of pooled "
            "connections, because httpcore's pool re-examines every connection (including a "
            "`poll()` of each idle socket via `has_expired()`) whenever a request is queued or "
            "released. In the gateway that feeds back: a burst opens connections, each request "
            "gets dearer, the queue grows. aiohttp's cost stays flat or falls with concurrency.",
        ]
    busy = max((r["foreign_core_share"] or 0.0) for r in data["runs"])
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    out += [
        "",
        "At concurrency 1 every client's figure includes the event loop's fixed cost spread "
        "over few requests; compare clients within a row group, not across concurrencies.",
        "",
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}; {pk}. "
        f"Other processes on this shared machine used up to {busy:.2f} cores during a cell "
        "(listed per run in the JSON); the differences above are far larger than that noise.",
        "",
    ]
    results.write_markdown(path, out)
