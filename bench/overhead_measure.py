"""One variant of the overhead benchmark measured: the direct and gateway targets, and
their ABBA blocks of open-loop load, printed as they finish.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import orjson

from bench import machine
from bench.loadgen import ConnectionPool, Target, open_loop
from bench.overhead_config import Variant
from bench.phase import PhaseResult
from bench.rig import CLIENT_MODEL, ENGINE_MODEL, HOST, Rig
from bench.stats import percentiles_ms

PROMPT = "Summarise the benefits of a gateway in front of self-hosted engines."


def targets_for(rig: Rig, variant: Variant) -> dict[str, Target]:
    from tests.support import CLIENT_KEY

    def body(model: str) -> bytes:
        b: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": rig.cfg.max_tokens,
        }
        if variant.stream:
            b |= {"stream": True, "stream_options": {"include_usage": True}}
        return orjson.dumps(b)

    auth = (("Authorization", f"Bearer {CLIENT_KEY}"),)
    path = "/v1/chat/completions"
    return {
        "direct": Target("direct", HOST, rig.standin.port, path, body(ENGINE_MODEL),
                         variant.stream, auth),
        "gateway": Target("gateway", HOST, rig.gateway_port, path, body(CLIENT_MODEL),
                          variant.stream, auth),
    }  # fmt: skip


def block_order(blocks: int) -> list[str]:
    """ABBA...: direct, gateway, gateway, direct, direct, gateway, ..."""
    order: list[str] = []
    for j in range(blocks):
        order += ["direct", "gateway"] if j % 2 == 0 else ["gateway", "direct"]
    return order


async def measure(rig: Rig, variant: Variant, rate: float) -> dict[str, list[PhaseResult]]:
    cfg = rig.cfg
    targets = targets_for(rig, variant)
    pools = {name: ConnectionPool(HOST, t.port) for name, t in targets.items()}
    expected_in_flight = rate * (cfg.engine_unary_ms / 1000) * 3 + 16
    for pool in pools.values():
        await pool.warm(int(min(512, expected_in_flight)))
    results: dict[str, list[PhaseResult]] = {"direct": [], "gateway": []}
    try:
        for name in ("direct", "gateway"):
            warm = await open_loop(pools[name], targets[name], rate=rate, duration=cfg.warmup)
            if warm.errors and name == "direct":
                raise RuntimeError(f"{variant.name}: the stand-in failed in warm-up: {warm.errors}")
            if warm.errors:  # the gateway failing under load is a result, not a harness fault
                print(f"   gateway errors during warm-up: {warm.errors}", flush=True)
        order = block_order(cfg.blocks)
        block_s = cfg.duration / cfg.blocks
        for k, name in enumerate(order):
            gc.collect()
            await asyncio.sleep(0.3)
            label = f"{variant.name:<17} {rate:4g}/s {name:<7} block {k + 1}/{len(order)}"
            pids = {"gateway": rig.gateway_pid, "standin": rig.standin_pid}
            before = {p: machine.cpu_seconds(pid) for p, pid in pids.items()}
            own = time.process_time()
            busy = machine.busy_seconds()
            gc.disable()
            try:
                result = await open_loop(
                    pools[name], targets[name], rate=rate, duration=block_s,
                    arrivals=cfg.arrivals, seed=k, progress=_printer(label),
                    drain_timeout=cfg.drain_s,
                )  # fmt: skip
            finally:
                gc.enable()
            result.cpu = {p: machine.cpu_seconds(pid) - before[p] for p, pid in pids.items()}
            result.cpu["loadgen"] = time.process_time() - own
            # CPU used by anything else on the machine (other users, kernel threads)
            result.cpu["foreign"] = max(
                0.0, machine.busy_seconds() - busy - sum(result.cpu.values())
            )
            results[name].append(result)
            _print_block(label, result)
    finally:
        for pool in pools.values():
            pool.close()
    return results


def _printer(label: str) -> Any:
    def show(s: dict[str, Any]) -> None:
        if s["elapsed"] < 0.5:
            return
        p50 = f"{s['p50_ms']:6.2f}" if s["p50_ms"] is not None else "     -"
        p99 = f"{s['p99_ms']:6.2f}" if s["p99_ms"] is not None else "     -"
        print(
            f"  {label}  t={s['elapsed']:4.1f}s  sent {s['sent']:5d}  done {s['finished']:5d}"
            f"  in flight {s['in_flight']:3d}  errors {s['errors']}  "
            f"last 1 s: p50 {p50} ms  p99 {p99} ms",
            flush=True,
        )

    return show


def _print_block(label: str, r: PhaseResult) -> None:
    p = percentiles_ms(r.latency, (50, 99))
    print(
        f"  {label}  done: {int(r.ok.sum())}/{r.ok.size} ok, p50 {p['p50']} ms, "
        f"p99 {p['p99']} ms, errors {r.errors or 0}",
        flush=True,
    )
