"""The quota benchmark's end-to-end measurements: two gateway processes paired ABBA
(quotas off vs Redis) before one stand-in engine, and the runs against the engine
directly through :mod:`bench.overhead`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import machine
from bench.quota_rig import RESULTS, Config, pin, redis_server

#: The end-to-end section's variants (bench.overhead), reference first.
E2E_VARIANTS = ("unary_quotas_off", "unary", "unary_quotas_redis")


E2E_LABELS = {
    "unary_quotas_off": "quotas off",
    "unary": "local store",
    "unary_quotas_redis": "Redis store (loopback)",
}


def end_to_end(cfg: Config, quick: bool) -> dict[str, Any]:
    """The real gateway process at ``cfg.rate``: quotas off, local, Redis, each measured
    ABBA against the engine directly (bench.overhead); what quotas add is the difference
    of the gateway's added latency with and without them."""
    from bench import overhead

    out_dir = RESULTS / ("quick" if quick else "") / "quotas_e2e"
    bcfg = overhead.BenchConfig(
        rate=cfg.rate,
        duration=4.0 if quick else 20.0,
        warmup=1.0 if quick else 3.0,
        variants=E2E_VARIANTS,
        variant_rate=cfg.rate,
        out_dir=out_dir,
        wait_quiet_s=30.0 if quick else 300.0,
        quick=quick,
    )
    data = overhead.run(bcfg)
    variants = data["variants"]
    rows = {
        name: {
            "added_p50_ms": variants[name]["added_latency"]["p50_ms"],
            "added_p99_ms": variants[name]["added_latency"]["p99_ms"],
            "gateway_cpu_ms_per_request": variants[name]["gateway"]["cpu_ms_per_request"].get(
                "gateway"
            ),
            "failed": variants[name]["gateway"]["requests"] - variants[name]["gateway"]["ok"],
        }
        for name in E2E_VARIANTS
        if name in variants
    }
    off = rows["unary_quotas_off"]["added_p50_ms"]
    for row in rows.values():
        row["vs_off_p50_us"] = round((row["added_p50_ms"] - off) * 1000, 1)
    return {"rows": rows, "details": str(out_dir.relative_to(RESULTS) / "overhead.md")}


#: Where the paired comparison's processes run (CPU sets; None: the kernel decides).
#: "shared": both gateways and Redis on CPU 0, engine and load generator on CPU 1, so a
#: Redis round trip never wakes the other vCPU. "split": Redis on CPU 1 with the engine,
#: so every round trip does. "free": nothing pinned.
PLACEMENTS: dict[str, dict[str, set[int] | None]] = {
    "free": {"gateways": None, "redis": None, "engine": None, "loadgen": None},
    "shared": {"gateways": {0}, "redis": {0}, "engine": {1}, "loadgen": {1}},
    "split": {"gateways": {0}, "redis": {1}, "engine": {1}, "loadgen": {1}},
}


def paired(cfg: Config, quick: bool, placement: str = "free") -> dict[str, Any]:
    """Two gateway processes side by side, quotas off and in Redis, before one stand-in
    engine; blocks alternate ABBA between them at ``cfg.rate``, so both see the same
    machine. What Redis quotas add = Redis gateway - off gateway, at p50 and p99."""
    if placement != "free" and not machine.can_pin():
        raise SystemExit(f"placement {placement!r} needs two CPUs and sched_setaffinity")
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return uvloop.run(_paired(cfg, quick, PLACEMENTS[placement])) | {"placement": placement}
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)


async def _paired(cfg: Config, quick: bool, cpus: dict[str, set[int] | None]) -> dict[str, Any]:
    import numpy as np

    from bench.loadgen import ConnectionPool, Target, open_loop
    from bench.rig import ENGINE_MODEL, gateway_config
    from bench.summary import added
    from engines.standin.process import StandinProcess
    from tests.support import CLIENT_KEY, GatewayProcess
    from tests.support import write_config as write_gateway_config

    duration, blocks = (4.0, 4) if quick else (40.0, 8)
    engine_ms = 20.0
    body = orjson.dumps(
        {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    )
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-qb-")))
        engine = StandinProcess(model=ENGINE_MODEL, ttft_ms=engine_ms, tpot_ms=1, max_num_seqs=512)
        engine.start()
        stack.callback(engine.stop)
        pin(engine.pid, cpus["engine"])
        pin(os.getpid(), cpus["loadgen"])
        redis = stack.enter_context(redis_server(cfg.redis_url, cpus["redis"]))
        url = redis.url
        targets: dict[str, Target] = {}
        pids: dict[str, int] = {}
        for name, quotas in (
            ("off", {"enabled": False}),
            ("redis", {"backend": "redis", "redis_url": url}),
        ):
            wd = tmp / name
            wd.mkdir()
            gcfg = gateway_config(
                wd, engine.base_url, {"quotas": quotas, "server": {"log_level": "WARNING"}}
            )
            port = gcfg["server"]["port"]
            gw = GatewayProcess(write_gateway_config(wd, gcfg), port)
            stack.enter_context(gw)
            assert gw.proc is not None
            pids[name] = gw.proc.pid
            pin(gw.proc.pid, cpus["gateways"])
            auth = (("Authorization", f"Bearer {CLIENT_KEY}"),)
            targets[name] = Target(name, "127.0.0.1", port, "/v1/chat/completions", body,
                                   False, auth)  # fmt: skip
        pools = {n: ConnectionPool("127.0.0.1", t.port) for n, t in targets.items()}
        for pool in pools.values():
            await pool.warm(64)
        for name in targets:
            await open_loop(pools[name], targets[name], rate=cfg.rate, duration=2.0)
        got: dict[str, list[Any]] = {"off": [], "redis": []}
        order = [("off", "redis") if k % 2 == 0 else ("redis", "off") for k in range(blocks)]
        cpu = {"off": 0.0, "redis": 0.0, "redis-server": 0.0}
        for k, pair in enumerate(order):
            for name in pair:
                print(f"  paired: block {k + 1}/{blocks} {name}", flush=True)
                watched = {name: pids[name]}
                if name == "redis" and redis.pid is not None:
                    watched["redis-server"] = redis.pid
                before = {n: machine.cpu_seconds(p) for n, p in watched.items()}
                got[name].append(
                    await open_loop(pools[name], targets[name], rate=cfg.rate,
                                    duration=duration / blocks, seed=k)
                )  # fmt: skip
                for n, p in watched.items():
                    cpu[n] += machine.cpu_seconds(p) - before[n]
        for pool in pools.values():
            pool.close()
    lat = {n: np.concatenate([r.latency for r in rs]) for n, rs in got.items()}
    diff = added(lat["off"], lat["redis"])
    failed = {n: sum(int((~r.ok).sum()) for r in rs) for n, rs in got.items()}
    blocks_us = {
        n: [round(float(np.percentile(r.latency, 50)) * 1e6) for r in rs] for n, rs in got.items()
    }
    served = int(lat["off"].size)
    return {
        "block_p50_us": blocks_us,
        # CPU per request while a gateway served its blocks (10 ms ticks over ~12k requests).
        "cpu_us_per_request": {k: round(v / served * 1e6, 1) for k, v in cpu.items()},
        "requests_per_gateway": int(lat["off"].size),
        "off_p50_ms": round(float(np.percentile(lat["off"], 50)) * 1000, 3),
        "redis_p50_ms": round(float(np.percentile(lat["redis"], 50)) * 1000, 3),
        "added_p50_us": round(diff["p50_ms"] * 1000, 1),
        "added_p50_ci95_us": [round(x * 1000, 1) for x in diff["p50_ci95_ms"]],
        "added_p99_us": round(diff["p99_ms"] * 1000, 1),
        "failed": failed,
        "duration_s_per_gateway": duration,
        "engine_ms": engine_ms,
    }
