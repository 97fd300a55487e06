"""Summaries of the overhead benchmark: percentiles, added latency, targets, checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import stats
from bench.overhead_config import BenchConfig, Variant
from bench.phase import PhaseResult
from bench.stats import percentiles_ms

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)
#: Percentiles kept in the JSON to redraw the curves without the raw samples.
CURVE = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 98, 99, 99.5, 99.7, 99.9, 99.95)


@dataclass(frozen=True)
class Targets:
    """The issue's targets for one worker on this 2-core machine at 300 requests/s."""

    added_p50_ms: float = 1.0
    added_p99_ms: float = 5.0
    added_ttft_p50_ms: float = 1.0


def merge(results: list[PhaseResult]) -> dict[str, np.ndarray]:
    return {
        "latency": np.concatenate([r.latency for r in results]),
        "ttft": np.concatenate([r.ttft for r in results]),
        "lag": np.concatenate([r.send_lag for r in results]),
    }


def path_summary(results: list[PhaseResult], stream: bool) -> dict[str, Any]:
    m = merge(results)
    n = sum(r.ok.size for r in results)
    ok = sum(int(r.ok.sum()) for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    wall = sum(r.wall_s for r in results)
    cpu = {
        k: sum(r.cpu.get(k, 0.0) for r in results)
        for k in ("gateway", "standin", "loadgen", "foreign")
    }
    out: dict[str, Any] = {
        "requests": n,
        "ok": ok,
        "errors": errors,
        "send_rate": round(min(r.send_rate for r in results), 1) if results else 0.0,
        "latency_ms": percentiles_ms(m["latency"], PERCENTILES),
        "latency_mean_ms": round(float(m["latency"].mean() * 1000), 3) if ok else None,
        "send_lag_ms": percentiles_ms(m["lag"], (50.0, 99.0, 100.0)),
        "new_connections": sum(r.new_connections for r in results),
        "cpu_core_share": {k: round(v / wall, 3) for k, v in cpu.items()},
        "cpu_ms_per_request": {k: round(v * 1000 / max(ok, 1), 3) for k, v in cpu.items()},
        "foreign_core_share_max_block": round(
            max((r.cpu.get("foreign", 0.0) / r.wall_s for r in results), default=0.0), 3
        ),
        "curve_ms": {"latency": percentiles_ms(m["latency"], CURVE)},
    }
    if stream:
        out["ttft_ms"] = percentiles_ms(m["ttft"], PERCENTILES)
        out["curve_ms"]["ttft"] = percentiles_ms(m["ttft"], CURVE)
    return out


def added(direct: np.ndarray, gateway: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """gateway - direct at p50 and p99, with a bootstrap 95% interval for each."""
    return stats.added_with_ci(direct, gateway, (50, 99), seed=seed)


def per_block_added(blocks: dict[str, list[PhaseResult]], key: str) -> list[dict[str, float]]:
    """Added p50/p99 from each (direct, gateway) block pair: how stable the estimate is."""
    out = []
    for d, g in zip(blocks["direct"], blocks["gateway"], strict=False):
        dv, gv = getattr(d, key), getattr(g, key)
        if dv.size and gv.size:
            out.append({f"p{p}_ms": stats.added(dv, gv, p) for p in (50, 99)})
    return out


def summarize_variant(
    cfg: BenchConfig, variant: Variant, blocks: dict[str, list[PhaseResult]], rate: float
) -> dict[str, Any]:
    t = Targets()
    direct = path_summary(blocks["direct"], variant.stream)
    gateway = path_summary(blocks["gateway"], variant.stream)
    md, mg = merge(blocks["direct"]), merge(blocks["gateway"])
    out: dict[str, Any] = {
        "variant": variant.name,
        "description": variant.description,
        "rate_rps": rate,
        "stream": variant.stream,
        "headline": variant.headline and rate == cfg.rate,
        "overrides": variant.overrides,
        "direct": direct,
        "gateway": gateway,
        "added_latency": added(md["latency"], mg["latency"]),
        "added_latency_per_block": per_block_added(blocks, "latency"),
    }
    added_lat = out["added_latency"]
    judged: dict[str, Any] = {}
    if variant.stream:
        out["added_ttft"] = added(md["ttft"], mg["ttft"], seed=1)
        out["added_ttft_per_block"] = per_block_added(blocks, "ttft")
        judged["added_ttft_p50_ms"] = (out["added_ttft"]["p50_ms"], t.added_ttft_p50_ms)
    else:
        judged["added_p50_ms"] = (added_lat["p50_ms"], t.added_p50_ms)
        judged["added_p99_ms"] = (added_lat["p99_ms"], t.added_p99_ms)
    # A target is not met while requests fail: latency covers successful requests only.
    failed = gateway["requests"] - gateway["ok"]
    out["gateway_error_rate"] = round(failed / max(gateway["requests"], 1), 4)
    out["targets"] = {
        k: {"value": v, "limit": lim, "met": v is not None and v <= lim and not failed}
        for k, (v, lim) in judged.items()
    }
    out["checks"] = checks(cfg, variant, direct, gateway, rate)
    return out


def checks(
    cfg: BenchConfig,
    variant: Variant,
    direct: dict[str, Any],
    gateway: dict[str, Any],
    rate: float,
) -> dict[str, Any]:
    """Is the harness trustworthy for this variant? (Not whether the gateway is fast.)"""
    engine_ms = cfg.ttft_ms if variant.stream else cfg.engine_unary_ms
    measured = (direct["ttft_ms"] if variant.stream else direct["latency_ms"])["p50"]
    return {
        "baseline_p50_ms": measured,
        "engine_configured_ms": engine_ms,
        "baseline_near_configured": measured is not None and measured - engine_ms <= 3.0,
        # The direct path must be clean; the gateway's errors are a result, not a harness fault.
        "direct_no_errors": not direct["errors"],
        "direct_rate_held": abs(direct["send_rate"] - rate) <= 0.03 * rate,
        "loadgen_send_lag_p99_ms": max(
            direct["send_lag_ms"]["p99"] or 0.0, gateway["send_lag_ms"]["p99"] or 0.0
        ),
        "loadgen_core_share": max(
            direct["cpu_core_share"]["loadgen"], gateway["cpu_core_share"]["loadgen"]
        ),
        "foreign_core_share_max": max(
            direct["foreign_core_share_max_block"], gateway["foreign_core_share_max_block"]
        ),
        "machine_quiet": max(
            direct["foreign_core_share_max_block"], gateway["foreign_core_share_max_block"]
        )
        <= cfg.quiet_cores,
    }
