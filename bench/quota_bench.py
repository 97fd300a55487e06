"""What a quota check costs: reserve + settle, local vs Redis on loopback, same run.

``python -m bench.quota_bench [--iterations 5000 --rate 300 --duration 20 --quick]``

1. **Sequential latency.** One reservation and its settlement at a time, for the local
   store and the Redis store (behind its failover wrapper, as in production), with a key
   in a team and all six limits set, so both scopes and every check run. Reported per
   call: reserve, settle, and the pair, p50/p99 in microseconds.
2. **Quotas on vs off at 300 req/s.** One uvloop event loop serves simulated requests at
   a fixed open-loop rate: each reserves, waits a fixed "engine" time, and settles. Blocks
   alternate ABBA between quotas off (``Unlimited``) and on (local or Redis), so both see
   the same machine. Measured: each request's latency from its scheduled arrival to its
   completion (so event-loop delay the store causes is included), and the check itself.
   Added latency = on - off.
3. **End to end, paired.** Two ``tollgate serve`` processes side by side before one
   stand-in engine, quotas off and in Redis, ABBA blocks at the same rate; three runs
   with fresh processes, reported one by one and as their median (``--paired-runs``,
   ``--placement`` to pin the processes).

A throwaway ``redis-server`` (AOF, fsync every second, loopback) is started unless
``--redis-url`` is given. Results: ``bench/results/quotas.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics

import uvloop

from bench import results
from bench.quota_e2e import PLACEMENTS, end_to_end, paired
from bench.quota_report import plot, write_markdown
from bench.quota_rig import Config
from bench.quota_scenarios import run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--redis-url", default=None)
    results.add_arguments(ap)
    ap.add_argument(
        "--no-e2e",
        action="store_true",
        help="skip the paired end-to-end runs (two gateway processes, ~95 s per run)",
    )
    ap.add_argument("--paired-runs", type=int, default=None, help="paired runs (3; quick: 1)")
    ap.add_argument(
        "--placement",
        choices=sorted(PLACEMENTS),
        default="free",
        help="where the paired runs' processes go (free: the kernel decides)",
    )
    ap.add_argument(
        "--overhead-e2e",
        action="store_true",
        help="also measure each store's gateway against the engine directly, in separate "
        "runs (bench.overhead; about 4 minutes; differences under ~0.2 ms are noise)",
    )
    args = ap.parse_args(argv)
    cfg = Config(
        iterations=500 if args.quick else args.iterations,
        rate=args.rate,
        duration=4.0 if args.quick else args.duration,
        blocks=4 if args.quick else 8,
        redis_url=args.redis_url,
    )
    data = uvloop.run(run(cfg))
    if not args.no_e2e:
        n_runs = args.paired_runs or (1 if args.quick else 3)
        runs = []
        for i in range(n_runs):
            print(f"paired run {i + 1}/{n_runs} ({args.placement})", flush=True)
            runs.append(paired(cfg, args.quick, args.placement))
        data["paired"] = {
            "placement": args.placement,
            "runs": runs,
            "added_p50_us_median": statistics.median(r["added_p50_us"] for r in runs),
            "added_p99_us_median": statistics.median(r["added_p99_us"] for r in runs),
        }
        data["target_met"]["paired_end_to_end_p50_median"] = (
            data["paired"]["added_p50_us_median"] <= 500
        )
    if args.overhead_e2e:
        data["end_to_end"] = end_to_end(cfg, args.quick)
        e2e_redis = data["end_to_end"]["rows"].get("unary_quotas_redis")
        if e2e_redis is not None:
            data["target_met"]["end_to_end_vs_off_p50"] = e2e_redis["vs_off_p50_us"] <= 500
    out = results.out_dir(args.quick, args.out)
    results.write_json(out / "quotas.json", data)
    write_markdown(data, out / "quotas.md")
    plot(data, out / "quotas.png")
    print((out / "quotas.md").read_text())


if __name__ == "__main__":
    main()
