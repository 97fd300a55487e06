"""Request-path throughput: one gateway worker, fully metered, beside vllm-router.

``python -m bench throughput [--quick] [--workers 1,2] [--engine auto|raw|standin]``

One run, one target at a time, the same 0 ms vLLM-shaped engine behind each:

- **direct**: load generator → engine;
- **vllm-router** 0.1.17 (Rust, no metering), in the bench's own venv;
- **tollgate**: ``tollgate serve``, a key with rpm/tpm/concurrency/budget limits in a real
  redis-server, a PostgreSQL ledger, metrics on (and ``tollgate x2`` with ``--workers
  1,2``).

Open-loop load (:mod:`bench.loadgen`), each request timed from its intended send time:
unary at 300, 1,000 and 2,000/s, streams at 300 and 1,000/s, lowest rate first. The
router under test (vllm-router or one gateway worker) gets core 0; the engine, the load
generator, Redis and PostgreSQL share core 1. Its CPU time per request comes from
``/proc``. The engine is chosen by measurement: both engines are first driven directly
at the top rate, and ``auto`` keeps ``engines.standin`` only if it carries that rate.
Results: ``bench/results/throughput.{md,json,png}`` (``--quick``: ``results/quick/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import machine, results, vllm_router
from bench.loadgen import ConnectionPool, Target, open_loop
from bench.phase import PhaseResult
from bench.rig import CLIENT_MODEL, gateway_config
from bench.throughput_report import judge, summarize, verdict_lines, write_report
from tests.support import CLIENT_KEY, GatewayProcess, free_port, wait_http, write_config
from tests.support.postgres import PostgresCluster
from tests.support.redis_server import RedisServer

HOST = "127.0.0.1"
ENGINE_MODEL = "standin-bench"
PATH = "/v1/chat/completions"
#: How close to the raw stub the stand-in must stay at the top rate to be used (auto).
STANDIN_SLACK_P50_MS = 0.5
STANDIN_MAX_P99_MS = 5.0
PACKAGES = ("uvicorn", "fastapi", "starlette", "pydantic", "aiohttp", "redis", "psycopg",
            "sqlalchemy", "uvloop", "httptools", "orjson")  # fmt: skip


@dataclass(frozen=True)
class Config:
    unary_rates: tuple[float, ...] = (300.0, 1000.0, 2000.0)
    stream_rates: tuple[float, ...] = (300.0, 1000.0)
    duration: float = 15.0
    warmup: float = 2.0
    workers: tuple[int, ...] = (1,)
    engine: str = "auto"
    tokens: int = 16
    drain_s: float = 10.0
    include_router: bool = True
    quick: bool = False
    out_dir: Path = results.RESULTS

    def phases(self) -> list[tuple[str, float]]:
        """(kind, rate), lowest rate first, so an overload comes last."""
        both = [("unary", r) for r in self.unary_rates] + [("stream", r) for r in self.stream_rates]
        return sorted(both, key=lambda p: (p[1], p[0] == "stream"))


@dataclass
class Running:
    """A target while it runs: its port, the processes whose CPU counts as its own."""

    name: str
    port: int
    model: str
    pid: int | None  # None: the direct path (no router)
    notes: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- processes


@contextlib.contextmanager
def engine_process(kind: str, tokens: int) -> Iterator[tuple[int, int]]:
    """Start the stub (``raw``) or ``engines.standin`` on core 1; yield (port, pid)."""
    port = free_port()
    if kind == "raw":
        argv = ["-m", "bench.stub_engine", "--port", str(port), "--tokens", str(tokens)]
    else:
        argv = ["-m", "engines.standin", "--port", str(port), "--model", ENGINE_MODEL,
                "--max-num-seqs", "100000"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=results.ROOT, stdin=subprocess.DEVNULL,
        preexec_fn=_pinner({1}),
    )  # fmt: skip
    try:
        wait_http(f"http://{HOST}:{port}/health", 30)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _pinner(cpus: set[int]) -> Any:
    if not machine.can_pin():
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def sidecars(workdir: Path) -> Iterator[dict[str, Any]]:
    """redis-server (AOF, fsync every second) and PostgreSQL, both on core 1."""
    redis = RedisServer(workdir / "redis", appendfsync="everysec").start()
    pg = PostgresCluster()
    try:
        pg.start()
        db = pg.create_database()
        pids = {"redis": redis.proc.pid if redis.proc else 0, "postgres": _postmaster(pg)}
        if machine.can_pin():
            machine.pin(pids["redis"], {1})
            machine.pin(pids["postgres"], {1})  # backends fork from it, and inherit
        yield {"redis_url": redis.url, "ledger_url": pg.url(db), "pids": pids, "pg": pg, "db": db}
    finally:
        redis.stop()
        pg.destroy()


def _postmaster(pg: PostgresCluster) -> int:
    return int((pg.data / "postmaster.pid").read_text().split("\n", 1)[0])


@contextlib.contextmanager
def target(
    name: str,
    cfg: Config,
    engine_port: int,
    workdir: Path,
    side: dict[str, Any],
    server: dict[str, Any] | None = None,
) -> Iterator[Running]:
    """Start ``name`` (direct, vllm-router, tollgate, tollgate x2); ``server``: more
    settings of the gateway's ``server`` section."""
    engine_url = f"http://{HOST}:{engine_port}"
    if name == "direct":
        yield Running(name, engine_port, ENGINE_MODEL, None)
    elif name == "vllm-router":
        binary = vllm_router.ensure()
        port = free_port()
        proc = vllm_router.RouterProcess(
            binary, engine_url, port, free_port(), workdir / "vllm-router.log",
            {0} if machine.can_pin() else None,
        )  # fmt: skip
        with proc:
            yield Running(name, port, ENGINE_MODEL, proc.pid, {"argv": proc.argv[1:]})
    else:
        workers = 1 if name == "tollgate" else int(name.rsplit("x", 1)[1])
        tdir = workdir / name.replace(" ", "")
        tdir.mkdir(parents=True, exist_ok=True)
        gw = gateway_config(tdir, engine_url, {
            "server": {"workers": workers, **(server or {})},
            "quotas": {"backend": "redis", "redis_url": side["redis_url"]},
            "ledger": {"enabled": True, "url": side["ledger_url"]},
        })  # fmt: skip
        port = gw["server"]["port"]
        pin = {0} if workers == 1 and machine.can_pin() else None
        with GatewayProcess(write_config(tdir, gw), port, cpus=pin) as proc:
            assert proc.proc is not None
            yield Running(name, port, CLIENT_MODEL, proc.proc.pid, {"workers": workers})


# ---------------------------------------------------------------------------- measuring


def body(model: str, stream: bool) -> bytes:
    b: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the throughput benchmark."}],
        "max_tokens": 16,
    }
    if stream:
        b |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(b)


async def phase(
    t: Running, kind: str, rate: float, duration: float, cfg: Config, pids: dict[str, int]
) -> PhaseResult:
    """Warm up, then one measured open-loop phase with the CPU of every process."""
    stream = kind == "stream"
    auth = (("Authorization", f"Bearer {CLIENT_KEY}"),)
    tgt = Target(t.name, HOST, t.port, PATH, body(t.model, stream), stream, auth)
    pool = ConnectionPool(HOST, t.port)
    try:
        await pool.warm(64)
        if cfg.warmup:
            await open_loop(pool, tgt, rate=rate, duration=cfg.warmup, drain_timeout=cfg.drain_s)
        gc.collect()
        await asyncio.sleep(0.2)
        tree = {k: pid for k, pid in pids.items() if pid}
        before = {k: machine.tree_cpu_seconds(pid) for k, pid in tree.items()}
        own, busy = time.process_time(), machine.busy_seconds()
        gc.disable()
        try:
            r = await open_loop(pool, tgt, rate=rate, duration=duration, drain_timeout=cfg.drain_s)
        finally:
            gc.enable()
        r.cpu = {k: machine.tree_cpu_seconds(pid) - before[k] for k, pid in tree.items()}
        r.cpu["loadgen"] = time.process_time() - own
        r.cpu["foreign"] = max(0.0, machine.busy_seconds() - busy - sum(r.cpu.values()))
        return r
    finally:
        pool.close()


def calibrate(cfg: Config) -> dict[str, Any]:
    """Drive each engine directly at the top unary rate: which one carries it?"""
    rate = max(cfg.unary_rates)
    out: dict[str, Any] = {"rate_rps": rate}
    for kind in ("standin", "raw"):
        with engine_process(kind, cfg.tokens) as (port, pid):
            t = Running("direct", port, ENGINE_MODEL, None)
            r = uvloop.run(phase(t, "unary", rate, min(cfg.duration, 4.0), cfg, {"engine": pid}))
        ok = int(r.ok.sum())
        out[kind] = {
            "ok": ok, "requests": int(r.ok.size), "errors": r.errors,
            "achieved_rps": round(ok / max(r.wall_s, 1e-9), 1),
            "p50_ms": _ms(r.latency, 50), "p99_ms": _ms(r.latency, 99),
            "engine_cpu_ms_per_request": round(r.cpu["engine"] * 1000 / max(ok, 1), 3),
        }  # fmt: skip
        print(f"   engine {kind}: {out[kind]}", flush=True)
    s, floor = out["standin"], out["raw"]["p50_ms"] or 0.0
    # Carrying the rate is not enough: a stand-in near saturation queues, and its queueing
    # would be added to every target's latency. It must stay near the stub's floor.
    out["standin_carries_top_rate"] = (
        not s["errors"]
        and s["achieved_rps"] >= 0.97 * rate
        and (s["p50_ms"] or 1e9) <= floor + STANDIN_SLACK_P50_MS
        and (s["p99_ms"] or 1e9) <= STANDIN_MAX_P99_MS
    )
    out["rule"] = (
        f"standin if it answers {rate:g}/s with no errors, p50 within "
        f"{STANDIN_SLACK_P50_MS} ms of the raw stub's and p99 <= {STANDIN_MAX_P99_MS} ms"
    )
    return out


def _ms(values: Any, p: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, p) * 1000), 3) if len(values) else None


def run(cfg: Config) -> dict[str, Any]:
    started = time.time()
    if machine.can_pin():
        os.sched_setaffinity(0, {1})
    print("== engine check: which 0 ms engine carries the top rate directly", flush=True)
    calibration = calibrate(cfg)
    engine = cfg.engine
    if engine == "auto":
        engine = "standin" if calibration["standin_carries_top_rate"] else "raw"
    names = ["direct", *(["vllm-router"] if cfg.include_router else [])]
    names += ["tollgate" if w == 1 else f"tollgate x{w}" for w in cfg.workers]
    raw: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    meter: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="tollgate-throughput-") as tmp,
        engine_process(engine, cfg.tokens) as (engine_port, engine_pid),
        sidecars(Path(tmp)) as side,
    ):
        for name in names:
            print(f"== {name} (engine: {engine})", flush=True)
            try:
                with target(name, cfg, engine_port, Path(tmp), side) as t:
                    pids = {"router": t.pid or 0, "engine": engine_pid, **side["pids"]}
                    raw[name] = {"notes": t.notes, "phases": measure(t, cfg, pids)}
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                skipped[name] = f"{type(exc).__name__}: {str(exc)[-400:]}"
                print(f"   skipped: {skipped[name]}", flush=True)
        meter = metering_check(side)
    data = {
        "generated_at": results.stamp(),
        "git": results.git_state(),
        "machine": machine.describe(PACKAGES),
        "settings": settings_of(cfg, engine),
        "engine_check": calibration,
        "metering_check": meter,
        "skipped": skipped,
        "targets": summarize(raw),
        "elapsed_s": round(time.time() - started, 1),
    }
    data["verdicts"] = judge(data)
    results.write_json(cfg.out_dir / "throughput.json", data)
    write_report(data, cfg.out_dir)
    return data


def measure(t: Running, cfg: Config, pids: dict[str, int]) -> list[dict[str, Any]]:
    out = []
    for kind, rate in cfg.phases():
        waited = machine.wait_idle([p for p in (t.pid,) if p])
        r = uvloop.run(phase(t, kind, rate, cfg.duration, cfg, pids))
        ok = int(r.ok.sum())
        print(f"   {kind:6} {rate:6g}/s: {ok}/{r.ok.size} ok, errors {r.errors or 0}, "
              f"p50 {_ms(r.latency, 50)} ms, router CPU "
              f"{r.cpu.get('router', 0) * 1000 / max(ok, 1):.3f} ms/req", flush=True)  # fmt: skip
        out.append({"kind": kind, "rate": rate, "result": r, "idle_wait_s": round(waited, 1)})
    return out


def metering_check(side: dict[str, Any]) -> dict[str, Any]:
    """Did the metered gateway really write ledger rows and Redis counters?"""
    import psycopg
    import redis

    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        r = redis.Redis.from_url(side["redis_url"])
        out["redis_keys"] = int(r.dbsize())
        r.close()
    with contextlib.suppress(Exception):
        pg = side["pg"]
        with psycopg.connect(host=HOST, port=pg.port, user="postgres", dbname=side["db"]) as c:
            row = c.execute("SELECT count(*) FROM ledger_records").fetchone()
            out["ledger_rows"] = int(row[0]) if row else 0
    return out


def settings_of(cfg: Config, engine: str) -> dict[str, Any]:
    return {
        "quick": cfg.quick,
        "unary_rates_rps": list(cfg.unary_rates),
        "stream_rates_rps": list(cfg.stream_rates),
        "duration_s_per_phase": cfg.duration,
        "warmup_s_per_phase": cfg.warmup,
        "drain_timeout_s": cfg.drain_s,
        "engine": engine,
        "completion_tokens": cfg.tokens,
        "workers": list(cfg.workers),
        "pinning": {"router under test (one worker)": "core 0",
                    "engine, load generator, redis-server, PostgreSQL": "core 1",
                    "gateway with 2 workers": "not pinned"}
        if machine.can_pin() else "not pinned (fewer than 2 cores)",
        "vllm_router": f"vllm-router=={vllm_router.VERSION}, --policy round_robin, own venv "
        f"{vllm_router.venv_dir()}",
        "gateway": "tollgate serve; static key with rpm/tpm/concurrency/budget limits (far "
        "above the load) in Redis; PostgreSQL ledger (journal on); metrics on; access log off",
        "loadgen": "open loop, uniform arrivals, raw HTTP/1.1 keep-alive (bench.loadgen); "
        "latency from the intended send time",
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench throughput", description=__doc__)
    results.add_arguments(p, "3 s phases, about 2 minutes, to bench/results/quick/")
    p.add_argument("--duration", type=float, help="seconds per phase (15; quick 3)")
    p.add_argument("--unary-rates", default="300,1000,2000", help="requests/s, comma-separated")
    p.add_argument("--stream-rates", default="300,1000", help="streams/s, comma-separated")
    p.add_argument("--workers", default="1", help="gateway worker counts to measure, e.g. 1,2")
    p.add_argument("--engine", choices=("auto", "raw", "standin"), default="auto",
                   help="the 0 ms engine: raw asyncio stub, engines.standin, or auto "
                   "(standin if it carries the top rate directly)")  # fmt: skip
    p.add_argument("--no-router", action="store_true", help="skip vllm-router")
    a = p.parse_args(argv)

    def rates(text: str) -> tuple[float, ...]:
        return tuple(float(x) for x in text.split(",") if x.strip())

    workers = tuple(int(x) for x in a.workers.split(",") if x.strip())
    if not workers or min(workers) < 1:
        p.error("--workers takes counts of 1 or more, e.g. 1,2")
    return Config(
        unary_rates=rates(a.unary_rates),
        stream_rates=rates(a.stream_rates),
        duration=a.duration or (3.0 if a.quick else 15.0),
        warmup=1.0 if a.quick else 2.0,
        workers=workers,
        engine=a.engine,
        drain_s=5.0 if a.quick else 10.0,
        include_router=not a.no_router,
        quick=a.quick,
        out_dir=results.out_dir(a.quick, a.out),
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    data = run(cfg)
    print("\n".join(["", *verdict_lines(data)]))
    print(f"\nwrote {cfg.out_dir}/throughput.md, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
