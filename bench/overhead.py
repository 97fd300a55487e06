"""Gateway overhead: the latency the gateway adds over calling the engine directly.

``python -m bench.overhead [--rate 300 --duration 20 --quick --profile]``

One run starts a stand-in engine and, per variant, a gateway (``tollgate serve``, one
worker) in front of it, then drives both paths from this process with the same open-loop
load (:mod:`bench.loadgen`): *direct* (client → stand-in) and *gateway* (client →
gateway → stand-in). Both paths meet the same engine behaviour (fixed TTFT and time per
token), so the difference of their latency percentiles is what the gateway adds.

Each variant alternates the paths in blocks, ABBA (direct, gateway, gateway, direct),
so slow drift of the machine does not favour either path. Results go to
``bench/results/overhead.{json,md,png}`` (see :mod:`bench.report`).

On a 2-core machine the three processes share the cores; by default the gateway gets
core 0 and the stand-in and load generator share core 1 (``--pin none`` leaves placement
to the kernel). The gateway's CPU time per request is measured too: it bounds how many
requests per second one worker can carry.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import machine
from bench.overhead_config import VARIANTS, BenchConfig
from bench.overhead_measure import PROMPT, measure, targets_for
from bench.results import add_arguments, git_state, out_dir, stamp, write_json
from bench.rig import CLIENT_MODEL, HOST, Rig, ledger_rows
from bench.summary import Targets, summarize_variant

PACKAGES = ("uvicorn", "starlette", "fastapi", "httpx", "httpcore", "uvloop", "httptools",
            "orjson", "pydantic", "aiohttp")  # fmt: skip


def run(cfg: BenchConfig) -> dict[str, Any]:
    from bench import profiling, report

    started = time.time()
    report_data: dict[str, Any] = {
        "generated_at": stamp(),
        "git": git_state(),
        "machine": machine.describe(PACKAGES),
        "settings": settings_of(cfg),
        "targets": Targets().__dict__,
        "variants": {},
        "skipped": {},
    }
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
        rig = Rig(cfg, Path(tmp))
        try:
            rig.start_standin()
            report_data["settings"]["pinning"] = rig.pinning
            headline = [n for n in cfg.variants if VARIANTS[n].headline]
            for rate in (cfg.rate, *cfg.extra_rates):
                for name in headline:
                    run_scenario(rig, name, rate, report_data)
            costs = [n for n in cfg.variants if not VARIANTS[n].headline]
            if costs:
                rate = cfg.variant_rate or healthy_rate(cfg, report_data["variants"])
                report_data["settings"]["variant_rate_rps"] = rate
                for name in costs:
                    run_scenario(rig, name, rate, report_data)
                    if rate != cfg.rate and "unary" in cfg.variants:
                        # the reference without the option, at the same rate, if not run yet
                        run_scenario(rig, "unary", rate, report_data)
            if cfg.profile:
                _wait_quiet(cfg)
                with rig.gateway_for(VARIANTS["unary"]):
                    report_data["profile"] = profiling.profile_gateway(
                        rig, targets_for(rig, VARIANTS["unary"])["gateway"], "unary",
                        cfg.profile_rate, max(5.0, cfg.duration / 2), cfg.out_dir,
                    )  # fmt: skip
        finally:
            rig.stop()
    report_data["elapsed_s"] = round(time.time() - started, 1)
    write_json(cfg.out_dir / "overhead.json", report_data)
    report.write_markdown(report_data, cfg.out_dir / "overhead.md")
    report.plot(report_data, cfg.out_dir / "overhead.png")
    return report_data


def _wait_quiet(cfg: BenchConfig) -> None:
    load = machine.wait_for_quiet(cfg.quiet_cores, 0)
    if load < cfg.quiet_cores:
        return
    print(
        f"   the machine is busy ({load:.2f} cores used by other processes); waiting up to "
        f"{cfg.wait_quiet_s:.0f} s for it to drop below {cfg.quiet_cores:g}",
        flush=True,
    )
    load = machine.wait_for_quiet(cfg.quiet_cores, cfg.wait_quiet_s)
    if load >= cfg.quiet_cores:
        print(f"   still busy ({load:.2f} cores); measuring anyway, results flagged", flush=True)


def run_scenario(rig: Rig, name: str, rate: float, report_data: dict[str, Any]) -> None:
    """Start a gateway for the variant, measure both paths, store the summary."""
    cfg = rig.cfg
    key = name if rate == cfg.rate else f"{name}@{rate:g}"
    if key in report_data["variants"]:
        return
    variant = VARIANTS[name]
    print(f"== {key}: {variant.description}, {rate:g} requests/s", flush=True)
    _wait_quiet(cfg)
    with rig.gateway_for(variant) as vdir:
        if name == "unary_ledger" and not _ledger_works(rig, vdir):
            why = "the gateway wrote no ledger rows with ledger.enabled: true (no writer wired)"
            print(f"   skipped: {why}", flush=True)
            report_data["skipped"][key] = why
            return
        blocks = uvloop.run(measure(rig, variant, rate))
        summary = summarize_variant(cfg, variant, blocks, rate)
        if name == "unary_ledger":
            summary["ledger_rows"] = ledger_rows(vdir)
        report_data["variants"][key] = summary


def healthy_rate(cfg: BenchConfig, done: dict[str, Any]) -> float:
    """The rate for the cost variants (access log, ledger): the bench rate if the plain
    gateway carried it without failures, else the highest extra rate it carried, so the
    variants show their own cost instead of overload noise."""
    carried: list[float] = [
        v["rate_rps"]
        for v in done.values()
        if v.get("variant") == "unary" and v["gateway_error_rate"] <= 0.001
    ]
    if not carried or cfg.rate in carried:
        return cfg.rate
    return max(carried)


def _ledger_works(rig: Rig, vdir: Path) -> bool:
    """Probe: do a few requests with the ledger on produce rows?"""
    import httpx

    from tests.support import CLIENT_KEY

    url = f"http://{HOST}:{rig.gateway_port}/v1/chat/completions"
    body = {"model": CLIENT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            client.post(url, json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (ledger_rows(vdir) or 0) >= 5:
            return True
        time.sleep(0.2)
    return False


def settings_of(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "rate_rps": cfg.rate,
        "extra_rates_rps": list(cfg.extra_rates),
        "profile_rate_rps": cfg.profile_rate,
        "duration_s_per_path": cfg.duration,
        "blocks_per_path": cfg.blocks,
        "block_order": "ABBA (direct, gateway, gateway, direct)",
        "warmup_s_per_path": cfg.warmup,
        "arrivals": cfg.arrivals,
        "quick": cfg.quick,
        "engine": {
            "kind": "stand-in (engines.standin)",
            "ttft_ms": cfg.ttft_ms,
            "tpot_ms": cfg.tpot_ms,
            "max_tokens": cfg.max_tokens,
            "max_num_seqs": cfg.max_num_seqs,
            "unary_latency_ms": cfg.engine_unary_ms,
        },
        "gateway": {
            "command": "python -m gateway.cli serve -c CONFIG (uvicorn, uvloop, httptools)",
            "workers": 1,
            "auth": "static key",
            "quotas": "local store unless the variant says otherwise; the key has all six "
            "limits (set far above the load) and is in a team, so both scopes are checked",
            "access_log": "off unless the variant says on",
            "ledger": "off unless the variant says on",
        },
        "quiet_cores": cfg.quiet_cores,
        "nice": cfg.nice,
        "loadgen": (
            "open loop, one uvloop process, raw HTTP/1.1 keep-alive over asyncio protocols "
            "+ httptools; latency from the intended send time"
        ),
        "request": {"endpoint": "/v1/chat/completions", "prompt": PROMPT},
    }


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=300.0, help="requests per second (300)")
    p.add_argument("--duration", type=float, help="seconds per path per variant (20; quick 4)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per path (3; quick 1)")
    p.add_argument("--blocks", type=int, default=2, help="blocks per path, alternated ABBA")
    p.add_argument("--arrivals", choices=("uniform", "poisson"), default="uniform")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--tpot-ms", type=float, default=2.0)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument(
        "--pin",
        choices=("gateway0", "none"),
        default="gateway0",
        help="gateway0: gateway on core 0, stand-in and load generator on core 1",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    add_arguments(p, "about one minute in all (for CI), to bench/results/quick/")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also sample the gateway with py-spy under the unary load",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds to wait for other processes to go quiet before each variant (300; quick 30)",
    )
    p.add_argument(
        "--extra-rates",
        help="also run unary and stream at these rates, e.g. 100,200 (default 100,200; "
        "quick: none)",
    )
    p.add_argument(
        "--variant-rate",
        type=float,
        help="rate for the access-log and ledger variants (default: the bench rate "
        "if the gateway carries it, else the highest extra rate it carries)",
    )
    p.add_argument("--profile-rate", type=float, default=150.0,
                   help="requests/s while py-spy samples the gateway (150)")  # fmt: skip
    p.add_argument(
        "--nice",
        type=int,
        help="run the gateway, stand-in and load generator at this nice value (e.g. -10, "
        "root only) so that unrelated work on a shared machine disturbs them less",
    )
    a = p.parse_args(argv)
    names = tuple(v.strip() for v in a.variants.split(",") if v.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    pin = a.pin if machine.can_pin() else "none"
    if a.extra_rates is None:
        extra: tuple[float, ...] = () if a.quick else (100.0, 200.0)
    else:
        extra = tuple(float(r) for r in a.extra_rates.split(",") if r.strip())
    return BenchConfig(
        rate=a.rate,
        duration=a.duration if a.duration is not None else (4.0 if a.quick else 20.0),
        warmup=a.warmup if a.warmup is not None else (1.0 if a.quick else 3.0),
        blocks=a.blocks,
        arrivals=a.arrivals,
        ttft_ms=a.ttft_ms,
        tpot_ms=a.tpot_ms,
        max_tokens=a.max_tokens,
        pin=pin,
        variants=names,
        out_dir=out_dir(a.quick, a.out),
        profile=a.profile,
        quick=a.quick,
        wait_quiet_s=a.wait_quiet if a.wait_quiet is not None else (30.0 if a.quick else 300.0),
        drain_s=5.0 if a.quick else 30.0,
        nice=a.nice,
        extra_rates=extra,
        profile_rate=a.profile_rate,
        variant_rate=a.variant_rate,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    data = run(cfg)
    from bench.report import verdict_lines

    print()
    for line in verdict_lines(data):
        print(line)
    print(f"\nwrote {cfg.out_dir}/overhead.json, overhead.md, overhead.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
