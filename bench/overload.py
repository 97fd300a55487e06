"""Overload control: one gateway worker offered 1x, 1.5x, 2x and 4x its capacity (issue 13).

``python -m bench overload [--quick] [--max-in-flight N] [--max-loop-lag-ms MS]``

The rig of ``bench throughput`` (imported, not copied): the 0 ms stub engine (16 tokens),
redis-server and PostgreSQL, a fully metered ``tollgate serve`` with one worker on core 0
and everything else on core 1.

1. **Capacity**, per kind (unary, streams): a ramp of open-loop rates against the gateway
   with its overload control off (``max_in_flight`` far out of reach, ``max_loop_lag_ms:
   0``). A rate is carried when every request succeeds with p99 under ``P99_BOUND_MS``;
   capacity is the highest rate carried (one refining step between the last rate carried
   and the first one not).
2. **Loads**: the gateway restarted with the control on (its defaults unless told), then
   1x, 1.5x, 2x and 4x that capacity, open loop, each request timed from its intended
   send time; a request unanswered ``CLIENT_TIMEOUT_S`` after it was due timed out.
3. **Sweep** (full run, only when a target is missed): other ``max_in_flight`` /
   ``max_loop_lag_ms`` pairs at 2x and 4x, to see which the measurement supports.

Results: ``bench/results/overload.{md,json,png}`` (``--quick``: ``results/quick/``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from bench import machine, results, throughput
from bench.overload_report import judge, pick_best, summarize_phase, verdict_lines, write_report
from bench.phase import PhaseResult
from bench.throughput import engine_process, metering_check, phase, sidecars, target
from gateway.config import ServerSettings

KINDS = ("unary", "stream")
#: Offered load, as multiples of the measured capacity.
LOADS = (1.0, 1.5, 2.0, 4.0)
#: A rate is "carried" only with p99 under this (and no errors).
P99_BOUND_MS = 50.0
#: A client gives up on a request this long after its intended send time.
CLIENT_TIMEOUT_S = 10.0
#: The control off, to measure what the worker itself carries.
CONTROL_OFF = {"max_in_flight": 10**6, "max_loop_lag_ms": 0.0}
#: (max_in_flight, max_loop_lag_ms) pairs tried when the defaults miss a target.
SWEEP = ((64, 50.0), (16, 50.0), (1024, 10.0), (64, 10.0), (16, 10.0))
SWEEP_LOADS = (2.0, 4.0)

#: Runs one (kind, rate) phase on the current gateway.
Runner = Callable[[str, float], PhaseResult]


@dataclass(frozen=True)
class Config:
    """One run's shape; ``parse_args`` fills it from the command line."""

    quick: bool = False
    duration: float = 10.0
    ramp_duration: float = 4.0
    sweep_duration: float = 5.0
    warmup: float = 1.0
    ramp_start: dict[str, float] = field(default_factory=lambda: {"unary": 300, "stream": 300})
    ramp_factor: float = 1.2
    ramp_steps: int = 12
    max_in_flight: int = ServerSettings.model_fields["max_in_flight"].default
    max_loop_lag_ms: float = ServerSettings.model_fields["max_loop_lag_ms"].default
    sweep: str = "auto"
    tokens: int = 16
    out_dir: Path = results.RESULTS

    def rig(self) -> throughput.Config:
        """The throughput harness's settings that its ``phase`` and ``target`` read."""
        return throughput.Config(
            duration=self.duration, warmup=self.warmup, tokens=self.tokens,
            drain_s=CLIENT_TIMEOUT_S, quick=self.quick, out_dir=self.out_dir,
        )  # fmt: skip

    @property
    def settings(self) -> dict[str, Any]:
        return {"max_in_flight": self.max_in_flight, "max_loop_lag_ms": self.max_loop_lag_ms}

    def sweeps(self, missed: bool) -> bool:
        return self.sweep == "always" or (self.sweep == "auto" and missed and not self.quick)


def ramp(carried: Callable[[float], bool], start: float, factor: float, steps: int) -> float | None:
    """The highest rate ``carried`` says yes to: up by ``factor`` from ``start`` until a
    no, then one step at the geometric mean of the last yes and the first no; down by
    ``factor`` from ``start`` when even it fails. None if nothing is carried."""
    good: float | None = None
    bad: float | None = None
    rate = start
    for _ in range(steps):
        if carried(rate):
            good = rate
            if bad is not None:
                break
            rate = round(rate * factor)
        else:
            bad = rate
            if good is not None:
                break
            rate = round(rate / factor)
            if rate < 10:
                return None
    if good is not None and bad is not None and bad / good > 1.05:
        middle = round(math.sqrt(good * bad))
        if middle not in (good, bad) and carried(middle):
            good = middle
    return good


class Bench:
    """The running rig: the engine, the sidecars, and one gateway at a time."""

    def __init__(self, cfg: Config, workdir: Path, engine: tuple[int, int], side: Any) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.engine_port, self.engine_pid = engine
        self.side = side
        self.gateways = 0

    @contextlib.contextmanager
    def gateway(self, server: dict[str, Any], duration: float) -> Iterator[Runner]:
        """Start a gateway with ``server`` settings; yield a function that runs one
        (kind, rate) phase on it, once the gateway is idle."""
        self.gateways += 1
        rig = replace(self.cfg.rig(), duration=duration)
        workdir = self.workdir / f"gateway{self.gateways}"
        with target("tollgate", rig, self.engine_port, workdir, self.side, server) as t:
            pids = {"router": t.pid or 0, "engine": self.engine_pid, **self.side["pids"]}

            def one(kind: str, rate: float) -> PhaseResult:
                machine.wait_idle([t.pid or 0])
                return uvloop.run(phase(t, kind, rate, duration, rig, pids))

            yield one


def measure_capacity(bench: Bench, cfg: Config) -> dict[str, Any]:
    """Ramp each kind on one gateway with the control off."""
    out: dict[str, Any] = {}
    with bench.gateway(CONTROL_OFF, cfg.ramp_duration) as one:
        for kind in KINDS:
            out[kind] = _ramp_kind(one, kind, cfg)
    return out


def _ramp_kind(one: Runner, kind: str, cfg: Config) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []

    def attempt(rate: float) -> bool:
        r = one(kind, rate)
        s = summarize_phase(r, load=None, capacity=None, timeout_s=CLIENT_TIMEOUT_S)
        ok = s["failed"] == 0 and (s["accepted_ms"]["p99"] or 1e9) <= P99_BOUND_MS
        s["carried"] = ok
        steps.append(s)
        print(f"   ramp {kind:6} {rate:6g}/s: {'carried' if ok else 'not carried'} "
              f"({s['goodput_rps']:.0f}/s ok, {s['failed']} failed, "
              f"p99 {s['accepted_ms']['p99']} ms)", flush=True)  # fmt: skip
        return ok

    def carried(rate: float) -> bool:
        # A shared machine has hiccups: a rate fails only when a second try fails too.
        return attempt(rate) or attempt(rate)

    cap = ramp(carried, cfg.ramp_start[kind], cfg.ramp_factor, cfg.ramp_steps)
    print(f"== capacity {kind}: {cap}/s", flush=True)
    return {"capacity_rps": cap, "steps": steps}


def measure_loads(
    bench: Bench, server: dict[str, Any], capacity: dict[str, Any], loads: tuple[float, ...],
    duration: float,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Each kind at each multiple of its capacity, on one gateway with ``server``."""
    plan = [(kind, load) for kind in KINDS if capacity[kind]["capacity_rps"] for load in loads]
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with bench.gateway(server, duration) as one:
        for kind, load in plan:
            cap = capacity[kind]["capacity_rps"]
            r = one(kind, load * cap)
            s = summarize_phase(r, load=load, capacity=cap, timeout_s=CLIENT_TIMEOUT_S)
            out[kind].append(s)
            print(f"   {kind:6} {load:g}x ({r.rate:.0f}/s): goodput {s['goodput_rps']:.0f}/s "
                  f"({s['goodput_share']:.0%}), refused {s['refusals_rps']:.0f}/s p99 "
                  f"{s['refusal_ms']['p99']} ms, accepted p99 {s['accepted_ms']['p99']} ms, "
                  f"timed out {s['accepted_timeouts']}", flush=True)  # fmt: skip
    return out


#: How a gateway fails to start or stop on a starved machine (its health check times out).
GATEWAY_FAILURES = (TimeoutError, OSError, RuntimeError, subprocess.SubprocessError)
T = TypeVar("T")


def twice(what: str, step: Callable[[], T]) -> T:
    """Run ``step``; once more if its gateway failed to start or stop."""
    try:
        return step()
    except GATEWAY_FAILURES as exc:
        print(f"   {what}: {type(exc).__name__}: {exc}; once more", flush=True)
        return step()


def run(cfg: Config) -> dict[str, Any]:
    started = time.time()
    if machine.can_pin():
        os.sched_setaffinity(0, {1})
    sweep: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="tollgate-overload-") as tmp,
        engine_process("raw", cfg.tokens) as engine,
        sidecars(Path(tmp)) as side,
    ):
        bench = Bench(cfg, Path(tmp), engine, side)
        print("== capacity: ramp with the overload control off", flush=True)
        capacity = twice("capacity", lambda: measure_capacity(bench, cfg))
        print(f"== loads with max_in_flight {cfg.max_in_flight}, max_loop_lag_ms "
              f"{cfg.max_loop_lag_ms:g}", flush=True)  # fmt: skip
        loads = twice(
            "loads", lambda: measure_loads(bench, cfg.settings, capacity, LOADS, cfg.duration)
        )
        verdicts = judge(loads)
        if cfg.sweeps(any(v["met"] is False for v in verdicts)):
            for mif, lag in SWEEP:
                server = {"max_in_flight": mif, "max_loop_lag_ms": lag}
                print(f"== sweep: max_in_flight {mif}, max_loop_lag_ms {lag:g}", flush=True)
                try:
                    got = measure_loads(bench, server, capacity, SWEEP_LOADS, cfg.sweep_duration)
                except GATEWAY_FAILURES as exc:
                    skipped.append({"settings": server, "why": f"{type(exc).__name__}: {exc}"})
                    print(f"   skipped: {exc}", flush=True)
                    continue
                sweep.append({"settings": server, "loads": got, "verdicts": judge(got)})
        meter = metering_check(side)
    data: dict[str, Any] = {
        "generated_at": results.stamp(),
        "git": results.git_state(),
        "machine": machine.describe(throughput.PACKAGES),
        "settings": settings_of(cfg),
        "capacity": capacity,
        "loads": loads,
        "verdicts": verdicts,
        "sweep": sweep,
        "sweep_skipped": skipped,
        "best": pick_best(cfg.settings, loads, sweep),
        "metering_check": meter,
        "elapsed_s": round(time.time() - started, 1),
    }
    results.write_json(cfg.out_dir / "overload.json", data)
    write_report(data, cfg.out_dir)
    return data


def settings_of(cfg: Config) -> dict[str, Any]:
    return {
        "quick": cfg.quick,
        "gateway": {"max_in_flight": cfg.max_in_flight, "max_loop_lag_ms": cfg.max_loop_lag_ms,
                    "defaults": cfg.max_in_flight == Config.max_in_flight
                    and cfg.max_loop_lag_ms == Config.max_loop_lag_ms},
        "capacity_rule": f"highest open-loop rate with 0 errors and p99 <= {P99_BOUND_MS:g} ms, "
        "overload control off; ramp from "
        + ", ".join(f"{k} {v:g}/s" for k, v in cfg.ramp_start.items())
        + f" by x{cfg.ramp_factor:g}, one refining step; a rate not carried is tried "
        "once more (a hiccup of the shared machine is not the capacity)",
        "ramp_phase_s": cfg.ramp_duration,
        "loads_x_capacity": list(LOADS),
        "phase_s": cfg.duration,
        "warmup_s_per_phase": cfg.warmup,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "completion_tokens": cfg.tokens,
        "sweep": {"mode": cfg.sweep, "pairs": [list(p) for p in SWEEP],
                  "loads_x_capacity": list(SWEEP_LOADS), "phase_s": cfg.sweep_duration},
        "engine": "raw stub (bench/stub_engine.py), 0 ms",
        "pinning": {"gateway (one worker)": "core 0",
                    "engine, load generator, redis-server, PostgreSQL": "core 1"}
        if machine.can_pin() else "not pinned (fewer than 2 cores)",
        "gateway_config": "tollgate serve; static key with rpm/tpm/concurrency/budget limits "
        "(far above the load) in Redis; PostgreSQL ledger; metrics on; access log off",
        "loadgen": "open loop, uniform arrivals, raw HTTP/1.1 keep-alive (bench.loadgen); "
        "latency from the intended send time",
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    results.add_arguments(p, "2-3 s phases, a coarser ramp and no sweep: about 3 minutes")
    p.add_argument("--duration", type=float, help="seconds per load phase (10; quick 3)")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=Config.max_in_flight,
        help="server.max_in_flight for the loads (default: the gateway's)",
    )
    p.add_argument(
        "--max-loop-lag-ms",
        type=float,
        default=Config.max_loop_lag_ms,
        help="server.max_loop_lag_ms for the loads (default: the gateway's)",
    )
    p.add_argument(
        "--sweep",
        choices=("auto", "always", "never"),
        default="auto",
        help="try other settings: auto = in a full run when a target is missed",
    )
    a = p.parse_args(argv)  # fmt: skip
    if a.max_in_flight < 1 or a.max_loop_lag_ms < 0:
        p.error("--max-in-flight takes 1 or more, --max-loop-lag-ms 0 or more")
    if a.duration is not None and a.duration <= 0:
        p.error("--duration must be positive")
    return Config(
        quick=a.quick,
        duration=a.duration or (3.0 if a.quick else 10.0),
        ramp_duration=2.0 if a.quick else 4.0,
        sweep_duration=3.0 if a.quick else 5.0,
        warmup=0.5 if a.quick else 1.0,
        ramp_factor=1.4 if a.quick else 1.2,
        max_in_flight=a.max_in_flight,
        max_loop_lag_ms=a.max_loop_lag_ms,
        sweep=a.sweep,
        out_dir=results.out_dir(a.quick, a.out),
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    data = run(cfg)
    print("\n".join(["", *verdict_lines(data)]))
    print(f"\nwrote {cfg.out_dir}/overload.md, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
