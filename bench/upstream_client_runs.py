"""The upstream-clients benchmark's runner: one stand-in engine, closed-loop workers per
client, mode and concurrency, and the client's CPU time per request.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench import machine, results
from bench.stats import percentiles
from bench.upstream_client_factories import FACTORIES, MODEL, MODES, Call, available_clients
from bench.upstream_client_report import recommend, summarize, transport_savings
from engines.standin.process import StandinProcess

ROOT = Path(__file__).resolve().parents[1]


RESULTS = results.RESULTS


@dataclass(frozen=True)
class Config:
    concurrency: tuple[int, ...] = (1, 16, 64, 256)
    duration: float = 5.0
    warmup: float = 1.0
    repeats: int = 2
    ttft_ms: float = 20.0
    tpot_ms: float = 2.0
    max_tokens: int = 16
    out_dir: Path = RESULTS
    quick: bool = False


async def closed_loop(call: Call, concurrency: int, duration: float) -> dict[str, Any]:
    """``concurrency`` workers calling back to back for ``duration`` seconds."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = await call()
            except Exception:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    p = percentiles(latencies, (50, 99), digits=6)
    return {
        "requests": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "p50_ms": p["p50"],
        "p99_ms": p["p99"],
    }


async def measure_one(
    client: str, url: str, mode: str, concurrency: int, cfg: Config, standin_pid: int
) -> dict[str, Any]:
    stream = mode == "stream"
    async with FACTORIES[client](url, concurrency, stream, cfg.max_tokens) as call:
        await closed_loop(call, concurrency, cfg.warmup)
        own, engine, busy = (
            time.process_time(),
            machine.cpu_seconds(standin_pid),
            machine.busy_seconds(),
        )
        r = await closed_loop(call, concurrency, cfg.duration)
        cpu = time.process_time() - own
        engine_cpu = machine.cpu_seconds(standin_pid) - engine
        foreign = max(0.0, machine.busy_seconds() - busy - cpu - engine_cpu)
    n = max(r["requests"], 1)
    r.update(
        throughput_rps=r["requests"] / r["wall_s"],
        client_cpu_us_per_request=cpu * 1e6 / n,
        client_core_share=cpu / r["wall_s"],
        engine_core_share=engine_cpu / r["wall_s"],
        foreign_core_share=foreign / r["wall_s"],
    )
    return r


def run(cfg: Config) -> dict[str, Any]:
    standin = StandinProcess(
        model=MODEL, ttft_ms=cfg.ttft_ms, tpot_ms=cfg.tpot_ms,
        max_num_seqs=max(cfg.concurrency) * 2,
    )  # fmt: skip
    url = standin.start()
    pid = int(standin._proc.pid)  # type: ignore[union-attr]
    pinned = machine.can_pin()
    if pinned:
        machine.pin(pid, {1})
        os.sched_setaffinity(0, {0})
    runs: list[dict[str, Any]] = []
    try:
        for concurrency in cfg.concurrency:
            for mode in MODES:
                for rep in range(cfg.repeats):
                    clients = available_clients()
                    order = clients if rep % 2 == 0 else tuple(reversed(clients))
                    for client in order:
                        r = uvloop.run(measure_one(client, url, mode, concurrency, cfg, pid))
                        r |= {
                            "client": client,
                            "mode": mode,
                            "concurrency": concurrency,
                            "repeat": rep,
                        }
                        runs.append(r)
                        print(
                            f"  {mode:6} c={concurrency:<4} {client:8} rep {rep + 1}: "
                            f"{r['throughput_rps']:7.0f} req/s  p50 {r['p50_ms'] or 0:7.2f} ms  "
                            f"p99 {r['p99_ms'] or 0:7.2f} ms  client CPU "
                            f"{r['client_cpu_us_per_request']:6.0f} µs/req  errors {r['errors']}"
                            f"  (others used {r['foreign_core_share']:.2f} cores)",
                            flush=True,
                        )
    finally:
        standin.stop()
    summary = summarize(runs)
    data: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine.describe(("httpx", "httpcore", "aiohttp", "uvloop", "anyio")),
        "settings": {
            "concurrency": list(cfg.concurrency),
            "duration_s": cfg.duration,
            "warmup_s": cfg.warmup,
            "repeats": cfg.repeats,
            "engine": {
                "ttft_ms": cfg.ttft_ms,
                "tpot_ms": cfg.tpot_ms,
                "max_tokens": cfg.max_tokens,
            },
            "pinning": "client core 0, stand-in core 1" if pinned else "not pinned",
            "loop": "uvloop",
        },
        "runs": runs,
        "summary": summary,
    }
    data["recommendation"] = recommend(summary)
    data["transports"] = transport_savings(summary)
    return data
