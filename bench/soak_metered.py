"""Metered soak: one fully metered gateway worker at 80% of its capacity, open loop, for
30 minutes (issue 13 item 9).

``python -m bench soak --metered [--duration 1800] [--load 0.8] [--capacity RPS]``

The rig of ``bench throughput``: ``tollgate serve`` with one worker on core 0 (a key with
rpm/tpm/concurrency/budget limits far above the load in a real redis-server, a
PostgreSQL ledger with its journal, metrics on, access log off) in front of the
stand-in engine; the engine, redis-server, PostgreSQL and the load generator on core 1.

1. **Capacity**, at the start of the run: a ramp of short open-loop phases of the soak's
   own mix on a first gateway; a rate is carried with no errors and p99 under 50 ms
   (``bench.overload``'s rule and ramp). ``--capacity`` skips it.
2. **Soak**: a fresh gateway, a fresh ledger database and an emptied Redis, then
   ``--load`` x capacity, open loop (:mod:`bench.soak_load`), each request timed from its
   intended send time: unary chat, streams, and a small share of refusals (bad JSON, a
   wrong key). Every second: the gateway's RSS, the requests done; per bin (a minute):
   p50/p99 and errors. A progress line every 30 s.
3. **Accounting**, once the load has stopped: the ledger writer drained (its metrics),
   the ledger's rows counted in PostgreSQL against the answers the engine gave, and
   ``tollgate reconcile`` (Redis spend counters against the ledger) for the day and the
   month; the rows counted again after the gateway's shutdown.

Results: ``bench/results/soak_metered.{md,json,png}`` (``--quick``: ``results/quick/``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import machine, results, stats, throughput
from bench.loadgen import ConnectionPool
from bench.overload import P99_BOUND_MS, ramp
from bench.rig import CLIENT_MODEL, gateway_config
from bench.soak import rss_kib
from bench.soak_accounting import drain, flush_redis, ledger_rows, reconcile
from bench.soak_load import Kind, LoadResult, MixedLoad, http_request
from bench.soak_metered_markdown import write_report
from bench.soak_metered_report import Sample, summarize, verdict_lines
from tests.support import CLIENT_KEY, GatewayProcess, write_config

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
#: The mix: kind -> weight. Refusals stay a small share (4%).
MIX = {"chat": 56.0, "stream": 40.0, "bad_json": 2.0, "wrong_key": 2.0}
CLIENT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Config:
    """One run's shape; ``parse_args`` fills it from the command line."""

    duration_s: float = 1800.0
    load: float = 0.8
    capacity: float | None = None
    engine: str = "standin"
    tokens: int = 16
    ramp_s: float = 4.0
    ramp_start: float = 300.0
    ramp_factor: float = 1.25
    ramp_steps: int = 14
    progress_s: float = 30.0
    quick: bool = False
    out_dir: Path = results.RESULTS

    @property
    def bin_s(self) -> float:
        """Minutes in a long run; 10 s bins in a short one, so it still has a few."""
        return 60.0 if self.duration_s >= 600 else 10.0

    @property
    def warmup_s(self) -> float:
        """Caches, pools, the allocator's arenas: 5 minutes, or a quarter of a short run."""
        return min(300.0, self.duration_s / 4)


def kinds(port: int) -> dict[str, Kind]:
    def body(stream: bool) -> bytes:
        b: dict[str, Any] = {
            "model": CLIENT_MODEL,
            "messages": [{"role": "user", "content": "Say hello to the soak."}],
            "max_tokens": 16,
        }
        if stream:
            b |= {"stream": True, "stream_options": {"include_usage": True}}
        return orjson.dumps(b)

    def req(data: bytes, key: str = CLIENT_KEY) -> bytes:
        return http_request(HOST, port, PATH, data, key)

    return {
        "chat": Kind("chat", req(body(False)), False),
        "stream": Kind("stream", req(body(True)), True),
        "bad_json": Kind("bad_json", req(b'{"model": "small", "messages": ['), False, 400),
        "wrong_key": Kind(
            "wrong_key", req(body(False), "tg-soak-wrong-key-00000000000000"), False, 401
        ),
    }


# ---------------------------------------------------------------------------- processes


@dataclass
class Gateway:
    proc: GatewayProcess
    config: Path

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid


@contextlib.contextmanager
def metered_gateway(
    workdir: Path, engine_port: int, redis_url: str, ledger_url: str
) -> Iterator[Gateway]:
    """``tollgate serve``, one worker on core 0, Redis quotas, PostgreSQL ledger."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = gateway_config(
        workdir,
        f"http://{HOST}:{engine_port}",
        {
            "server": {"workers": 1},
            "quotas": {"backend": "redis", "redis_url": redis_url},
            "ledger": {"enabled": True, "url": ledger_url, "spill_dir": str(workdir / "spill")},
        },
    )
    path = write_config(workdir, cfg)
    pin = {0} if machine.can_pin() else None
    with GatewayProcess(path, cfg["server"]["port"], cpus=pin) as proc:
        yield Gateway(proc, path)


# ---------------------------------------------------------------------------- phases


def load(gw: Gateway, rate: float, duration: float, bin_s: float) -> LoadResult:
    """One open-loop phase of the mix, no sampling (the capacity ramp's)."""

    async def go() -> LoadResult:
        pool = ConnectionPool(HOST, gw.proc.port)
        try:
            await pool.warm(64)
            return await MixedLoad(
                pool,
                kinds(gw.proc.port),
                MIX,
                rate=rate,
                duration_s=duration,
                bin_s=bin_s,
                timeout_s=CLIENT_TIMEOUT_S,
            ).run()
        finally:
            pool.close()

    return uvloop.run(go())


def ramp_step(gw: Gateway, cfg: Config, rate: float) -> dict[str, Any]:
    machine.wait_idle([gw.pid])
    r = load(gw, rate, cfg.ramp_s, cfg.ramp_s)
    gen = tuple(k for k, v in kinds(0).items() if v.generation)
    p99 = _p99_ms(r.latencies(gen))
    sent = sum(r.sent.values())
    ok = r.failed == 0 and p99 is not None and p99 <= P99_BOUND_MS
    print(
        f"   ramp {rate:6.0f}/s: {'carried' if ok else 'not carried'} ({sent} sent, "
        f"{r.failed} failed, p99 {p99} ms)",
        flush=True,
    )
    return {
        "rate": rate,
        "carried": ok,
        "sent": sent,
        "failed": r.failed,
        "errors": r.errors,
        "p99_ms": p99,
    }


def measure_capacity(gw: Gateway, cfg: Config) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []

    def carried(rate: float) -> bool:
        # A shared machine has hiccups: a rate fails only when a second try fails too.
        for _ in range(2):
            steps.append(ramp_step(gw, cfg, rate))
            if steps[-1]["carried"]:
                return True
        return False

    cap = ramp(carried, cfg.ramp_start, cfg.ramp_factor, cfg.ramp_steps)
    return {
        "capacity_rps": cap,
        "steps": steps,
        "rule": f"highest open-loop rate of the soak's mix with 0 errors and p99 <= "
        f"{P99_BOUND_MS:g} ms ({cfg.ramp_s:g} s phases, from {cfg.ramp_start:g}/s by "
        f"x{cfg.ramp_factor:g}, one refining step; a rate not carried is tried twice)",
    }


def soak(gw: Gateway, cfg: Config, rate: float) -> tuple[LoadResult, list[Sample]]:
    samples: list[Sample] = []
    own = os.getpid()
    gen = tuple(k for k, v in kinds(0).items() if v.generation)
    last = {"t": 0.0, "done": 0}

    async def go() -> LoadResult:
        pool = ConnectionPool(HOST, gw.proc.port)
        try:
            await pool.warm(64)
            mixed = MixedLoad(
                pool,
                kinds(gw.proc.port),
                MIX,
                rate=rate,
                duration_s=cfg.duration_s,
                bin_s=cfg.bin_s,
                timeout_s=CLIENT_TIMEOUT_S,
            )

            def sample(t: float, done: int, in_flight: int) -> None:
                s = Sample(round(t, 2), done, rss_kib(gw.pid), rss_kib(own), in_flight)
                samples.append(s)
                if t - last["t"] >= cfg.progress_s - 0.5:
                    b = mixed.bins[min(int((t - 1) / cfg.bin_s), len(mixed.bins) - 1)]
                    rps = (done - last["done"]) / max(t - last["t"], 1e-9)
                    last.update(t=t, done=done)
                    print(
                        f"  t={t:6.0f}s  done {done:>9,} ({rps:6.0f}/s)  errors "
                        f"{sum(mixed.errors.values()):>5}  in flight {in_flight:>4}  p99 "
                        f"(this bin) {_p99_ms(b.latencies(gen))} ms  gateway RSS "
                        f"{s.rss_kib / 1024:6.1f} MiB",
                        flush=True,
                    )

            return await mixed.run(sample)
        finally:
            pool.close()

    return uvloop.run(go()), samples


# ---------------------------------------------------------------------------- the run


def run(cfg: Config) -> dict[str, Any]:
    started = time.time()
    if machine.can_pin():
        os.sched_setaffinity(0, {1})
    with (
        tempfile.TemporaryDirectory(prefix="tollgate-soak-metered-") as tmp,
        throughput.engine_process(cfg.engine, cfg.tokens) as (engine_port, _),
        throughput.sidecars(Path(tmp)) as side,
    ):
        if cfg.capacity is None:
            print("== capacity: a ramp of the soak's mix on a first gateway", flush=True)
            with metered_gateway(
                Path(tmp) / "ramp", engine_port, side["redis_url"], side["ledger_url"]
            ) as gw:
                capacity = measure_capacity(gw, cfg)
        else:
            capacity = {"capacity_rps": cfg.capacity, "steps": [], "rule": "given (--capacity)"}
        cap = capacity["capacity_rps"]
        print(f"== capacity: {cap}/s", flush=True)
        if not cap:
            raise SystemExit("no rate was carried: nothing to soak at")
        rate = round(cfg.load * cap)
        flush_redis(side["redis_url"])
        db = side["pg"].create_database()
        ledger_url = side["pg"].url(db)
        print(
            f"== soak: {rate}/s ({cfg.load:g} x {cap}/s) for {cfg.duration_s:g} s, "
            f"a fresh gateway, ledger and Redis",
            flush=True,
        )
        with metered_gateway(Path(tmp) / "soak", engine_port, side["redis_url"], ledger_url) as gw:
            res, samples = soak(gw, cfg, rate)
            print("== load stopped: draining the ledger writer", flush=True)
            drain_info = drain(gw.proc.base_url)
            ledger = ledger_rows(side, db)
            recon = {p: reconcile(gw.config, p) for p in ("day", "month")}
        ledger_after_stop = ledger_rows(side, db)["rows"]
    data: dict[str, Any] = {
        "generated_at": results.stamp(),
        "git": results.git_state(),
        "machine": machine.describe(throughput.PACKAGES),
        "settings": settings_of(cfg),
        "capacity": capacity,
        "rate_rps": rate,
        "soak": summarize(res, kinds(0), samples, cfg.warmup_s),
        "drain": drain_info,
        "ledger": ledger,
        "ledger_rows_after_shutdown": ledger_after_stop,
        "reconcile": recon,
        "elapsed_s": round(time.time() - started, 1),
    }
    write_report(data, cfg.out_dir)
    return data


def _p99_ms(values: Any) -> float | None:
    return stats.percentiles(values, (99,))["p99"]


def settings_of(cfg: Config) -> dict[str, Any]:
    return {
        "quick": cfg.quick,
        "duration_s": cfg.duration_s,
        "load_x_capacity": cfg.load,
        "bin_s": cfg.bin_s,
        "warmup_s": cfg.warmup_s,
        "mix": MIX,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "engine": f"{cfg.engine} (bench.throughput.engine_process), 0 ms, "
        f"{cfg.tokens} completion tokens",
        "pinning": {
            "gateway (one worker)": "core 0",
            "engine, load generator, redis-server, PostgreSQL": "core 1",
        }
        if machine.can_pin()
        else "not pinned (fewer than 2 cores)",
        "gateway": "tollgate serve, one worker; static key with rpm/tpm/concurrency/budget "
        "limits (far above the load) in Redis; PostgreSQL ledger (journal on); metrics on; "
        "access log off; overload control at its defaults",
        "loadgen": "open loop, uniform arrivals, raw HTTP/1.1 keep-alive (bench.soak_load); "
        "latency from the intended send time; a request unanswered "
        f"{CLIENT_TIMEOUT_S:g} s after it was due is a time-out",
    }


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench soak --metered",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    results.add_arguments(p, "a 60 s soak after a coarse ramp, to bench/results/quick/")
    p.add_argument("--duration", type=float, help="seconds of soak (1800; quick 60)")
    p.add_argument("--load", type=float, default=0.8, help="share of capacity offered (0.8)")
    p.add_argument("--capacity", type=float, help="requests/s: skip the ramp and use this")
    p.add_argument(
        "--engine",
        choices=("standin", "raw"),
        default="standin",
        help="engines.standin (default) or the raw stub (bench/stub_engine.py)",
    )
    a = p.parse_args(argv)
    duration = a.duration if a.duration is not None else (60.0 if a.quick else 1800.0)
    if duration < 20:
        p.error("--duration must be at least 20 s")
    if not 0 < a.load <= 2:
        p.error("--load takes a share of capacity in (0, 2]")
    if a.capacity is not None and a.capacity <= 0:
        p.error("--capacity must be positive")
    return Config(
        duration_s=duration,
        load=a.load,
        capacity=a.capacity,
        engine=a.engine,
        ramp_s=2.0 if a.quick else 4.0,
        ramp_factor=1.4 if a.quick else 1.25,
        quick=a.quick,
        out_dir=results.out_dir(a.quick, a.out),
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    data = run(cfg)
    print("\n".join(["", *verdict_lines(data)]))
    print(f"\nwrote {cfg.out_dir}/soak_metered.md, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
