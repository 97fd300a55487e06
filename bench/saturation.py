"""Saturation scenario: static rules vs load-aware auto routing at the same offered load.

    python -m bench saturation [--rates 4,8] [--duration 40] [--quick] [--out DIR]

Two stand-in engines at realistic token rates (``engines.standin``):

* large: TTFT 150 ms, 30 ms per output token, 4 sequences at once (vLLM's max-num-seqs);
* small: TTFT 30 ms, 8 ms per output token, 16 sequences at once.

The gateway runs as its own process (``tollgate serve``). Clients send streaming chat
requests to the ``auto`` model, open loop (a fixed schedule at ``rate`` requests per
second, whatever the answers do), half "hard" (max_tokens 48: the rules send them to
large) and half "easy" (max_tokens 16: small). Each request is timed from its intended
send time, with an ``httpx`` async client. The large tier serves ~2.6 hard requests per
second, so at 8 req/s (4 hard/s) static rules overload it and its queue grows without
bound; load-aware routing (rules, then the ``load_aware`` override) moves hard requests
to small while large's queue is long.

Writes ``saturation.json`` / ``saturation.png`` and refreshes ``routing.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import plots, results
from bench.routing_bench import write_report
from bench.stats import percentiles
from engines.standin.process import StandinProcess
from tests import support

KEY = "tg-bench-saturation-key-01"
LARGE: dict[str, Any] = {"ttft_ms": 150, "tpot_ms": 30, "max_num_seqs": 4}
SMALL: dict[str, Any] = {"ttft_ms": 30, "tpot_ms": 8, "max_num_seqs": 16}
HARD_TOKENS, EASY_TOKENS = 48, 16
RULES = {"max_output_tokens_small": 32}
POLICIES: dict[str, dict[str, Any]] = {
    "static rules": {"policy": "rules", "params": RULES},
    "load-aware": {
        "policy": "chain",
        "params": {"steps": [{"use": "rules", **RULES}, {"use": "load_aware", "queue_high": 4}]},
    },
}


def gateway_config(tmp: Path, small: str, large: str, routing: dict[str, Any]) -> dict[str, Any]:
    engine = {"max_concurrency": 64, "max_queue": 512, "queue_timeout_s": 120}
    return support.gateway_config(
        tmp,
        [
            support.EngineSpec("small-0", small, "small", "standin-small", engine),
            support.EngineSpec("large-0", large, "large", "standin-large", engine),
        ],
        prices={"standin-small": (0.05, 0.2), "standin-large": (0.5, 1.5)},
        server={"access_log": False, "log_level": "WARNING"},
        auth={"static_keys": [{"key": KEY, "name": "bench"}], "key_store": False},
        timeouts={"connect_s": 2, "ttft_s": 300, "idle_s": 60, "total_s": 600},
        routing={**routing, "breaker": {"health_interval_s": 2, "metrics_interval_s": 0.25}},
        ledger={"enabled": False},
    )


@contextlib.contextmanager
def gateway(tmp: Path, cfg: dict[str, Any]) -> Iterator[str]:
    port = cfg["server"]["port"]
    with support.GatewayProcess(support.write_config(tmp, cfg), port, log_dir=tmp) as gw:
        yield gw.base_url


@dataclass(slots=True)
class Result:
    intended: float
    hard: bool
    ttft: float | None = None
    latency: float | None = None
    tier: str = ""
    reason: str = ""
    status: int = 0


async def one(client: httpx.AsyncClient, r: Result, start: float) -> None:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "summarize the tides report please"}],
        "max_tokens": HARD_TOKENS if r.hard else EASY_TOKENS,
        "stream": True,
    }
    delay = start + r.intended - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    t0 = start + r.intended
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        r.status = resp.status_code
        r.tier = resp.headers.get("x-tollgate-tier", "")
        r.reason = resp.headers.get("x-tollgate-route-reason", "")
        async for chunk in resp.aiter_raw():
            if r.ttft is None and b"data:" in chunk:
                r.ttft = time.perf_counter() - t0
    r.latency = time.perf_counter() - t0


async def load(base: str, rate: float, duration: float, seed: int) -> list[Result]:
    rng = random.Random(seed)
    n = int(rate * duration)
    reqs = [Result(intended=i / rate, hard=rng.random() < 0.5) for i in range(n)]
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    headers = {"authorization": f"Bearer {KEY}"}
    timeout = httpx.Timeout(connect=10, read=600, write=10, pool=600)
    async with httpx.AsyncClient(
        base_url=base, limits=limits, headers=headers, timeout=timeout
    ) as client:
        start = time.perf_counter() + 0.5
        tasks = [asyncio.create_task(one(client, r, start)) for r in reqs]
        # bounded: whatever is still running a while after the last arrival is cut off
        _, pending = await asyncio.wait(tasks, timeout=duration + 0.5 + 90)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return reqs


def summarize(reqs: list[Result]) -> dict[str, Any]:
    ok = [r for r in reqs if r.status == 200 and r.ttft is not None]
    out: dict[str, Any] = {
        "requests": len(reqs),
        "ok": len(ok),
        "failed": len(reqs) - len(ok),
        "large_share": round(sum(r.tier == "large" for r in ok) / max(1, len(ok)), 3),
        "moved_by_load": sum("load:" in r.reason for r in ok),
    }
    for label, group in (("all", ok), ("hard", [r for r in ok if r.hard]),
                         ("easy", [r for r in ok if not r.hard])):  # fmt: skip
        ttfts = [r.ttft for r in group if r.ttft is not None]
        lats = [r.latency for r in group if r.latency is not None]
        out[label] = {
            "ttft_ms": percentiles(ttfts, (50, 90, 99), digits=1),
            "latency_ms": percentiles(lats, (50, 90, 99), digits=1),
        }
    return out


def run(rates: list[float], duration: float, seed: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with (
        StandinProcess(model="standin-large", **LARGE) as large,
        StandinProcess(model="standin-small", **SMALL) as small,
        tempfile.TemporaryDirectory() as tmpdir,
    ):
        for rate in rates:
            for name, routing in POLICIES.items():
                tmp = Path(tmpdir) / f"{name.replace(' ', '_')}-{rate:g}"
                tmp.mkdir()
                cfg = gateway_config(tmp, small.base_url, large.base_url, routing)
                with gateway(tmp, cfg) as base:
                    print(f"rate {rate:g}/s, {name}: {duration:g}s ...", flush=True)
                    t = time.monotonic()
                    got = asyncio.run(load(base, rate, duration, seed))
                    wall = time.monotonic() - t
                s = summarize(got)
                print(f"  ttft p50 {s['all']['ttft_ms']['p50']} ms, p99 "
                      f"{s['all']['ttft_ms']['p99']} ms, large share {s['large_share']}, "
                      f"failed {s['failed']}", flush=True)  # fmt: skip
                runs.append({
                    "rate": rate, "policy": name, "wall_s": round(wall, 1), "summary": s,
                    "series": [[round(r.intended, 3), round(r.ttft, 4) if r.ttft else None,
                                r.tier, r.hard] for r in got],
                })  # fmt: skip
    return {
        "benchmark": "saturation: static rules vs load-aware auto routing",
        "engines": {"large": LARGE, "small": SMALL},
        "workload": {
            "arrivals": "open loop, uniform",
            "mix": "50% hard (max_tokens 48) / 50% easy (max_tokens 16), streaming",
            "duration_s": duration,
            "seed": seed,
            "rules": RULES,
            "load_aware": POLICIES["load-aware"]["params"]["steps"][1],
        },
        "load_average_at_start": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": runs,
    }


def plot(data: dict[str, Any], path: Path) -> None:
    rates = sorted({r["rate"] for r in data["runs"]})
    with plots.figure(path, len(rates) + 1, size=(5, 4.2)) as (_, axes):
        _draw(data, rates, axes)


def _draw(data: dict[str, Any], rates: list[float], axes: list[Any]) -> None:
    colors = {"static rules": "#d62728", "load-aware": "#1f77b4"}
    for ax, rate in zip(axes, rates, strict=False):
        for run in (r for r in data["runs"] if r["rate"] == rate):
            pts = [(t, f) for t, f, _, _ in run["series"] if f is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.6,
                       color=colors[run["policy"]], label=run["policy"])  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("request send time (s)")
        ax.set_ylabel("time to first token (s)")
        ax.set_title(f"{rate:g} req/s offered")
        ax.legend()
    ax = axes[-1]
    width = 0.35
    for i, policy in enumerate(colors):
        vals = [next((r["summary"]["all"]["ttft_ms"]["p99"] or 0) / 1000
                     for r in data["runs"] if r["rate"] == rate and r["policy"] == policy)
                for rate in rates]  # fmt: skip
        ax.bar([j + (i - 0.5) * width for j in range(len(rates))], vals, width,
               color=colors[policy], label=policy)  # fmt: skip
    ax.set_xticks(range(len(rates)), [f"{r:g} req/s" for r in rates])
    ax.set_yscale("log")
    ax.set_ylabel("p99 time to first token (s)")
    ax.set_title("p99 TTFT at the same offered load")
    ax.legend()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="static vs load-aware routing under saturation")
    ap.add_argument("--rates", default="4,8", help="offered loads, requests per second")
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=1)
    results.add_arguments(ap, "10 s per run")
    args = ap.parse_args(argv)
    out = results.out_dir(args.quick, args.out)
    duration = 10.0 if args.quick else args.duration
    data = run([float(r) for r in args.rates.split(",")], duration, args.seed)
    results.write_json(out / "saturation.json", data)
    plot(data, out / "saturation.png")
    write_report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
