"""Ledger cost on the request path, writer throughput, and zero loss.

``python -m bench.ledger_bench [--rate 300 --duration 20 --quick --backends sqlite,postgres]``

Three measurements, each on SQLite (WAL, the embedded default) and PostgreSQL (a
throwaway cluster, as in the tests):

1. **Ledger on vs off, same run, 300 req/s.** One uvloop event loop serves simulated
   requests at a fixed open-loop rate: each waits a fixed "engine" time, builds its
   ledger record exactly as the pipeline does, and hands it to the recorder. Blocks
   alternate ABBA between the ledger off (``NullRecorder``) and on (``LedgerWriter``
   with its batch inserts in a worker thread), so both see the same machine. Measured:
   the ``record()`` call itself, and each request's time from the engine's reply to its
   end, which includes any event-loop delay the writer causes (its batching on the
   loop, its thread holding the GIL). Added latency = on - off. Afterwards every record
   sent while on must be in the database exactly once.
2. **Writer throughput.** N records as fast as ``record()`` takes them; the time until
   all are committed, and the count and uniqueness check.
3. **Spill path.** ``record()`` when the queue is full (the append to the spill file),
   and the replay rate once the database is back.

Results: ``bench/results/ledger.{json,md}``. ``--dashboard`` also renders the spend
dashboard over demo data in headless Chromium to ``bench/results/dashboard.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import machine, results
from bench.ledger_report import dashboard_screenshot, notes, write_markdown
from bench.ledger_rig import TARGET_ADDED_P50_MS, Backend, Config
from bench.ledger_scenarios import on_vs_off, spill_path, throughput
from gateway.config import LedgerSettings


async def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"on_vs_off": {}, "throughput": {}, "spill": {}}
    for kind in cfg.backends:
        with Backend(kind, workdir) as backend:
            print(f"{kind}: ledger on vs off at {cfg.rate:g} req/s", flush=True)
            data["on_vs_off"][kind] = await on_vs_off(backend, cfg, workdir)
            print(f"{kind}: writer throughput", flush=True)
            data["throughput"][kind] = await throughput(backend, cfg, workdir)
            print(f"{kind}: spill path", flush=True)
            data["spill"][kind] = await spill_path(backend, cfg, workdir)
    return data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per backend")
    ap.add_argument("--backends", default="sqlite,postgres")
    results.add_arguments(ap)
    ap.add_argument("--dashboard", action="store_true", help="also write dashboard.png")
    args = ap.parse_args(argv)
    cfg = Config(
        rate=args.rate,
        duration=4.0 if args.quick else args.duration,
        throughput_records=20_000 if args.quick else 100_000,
        spill_records=5_000 if args.quick else 20_000,
        backends=tuple(b for b in args.backends.split(",") if b),
        out_dir=results.out_dir(args.quick, args.out),
        dashboard=args.dashboard,
    )
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tollgate-ledger-bench-") as tmp:
        workdir = Path(tmp)
        data = uvloop.run(run(cfg, workdir))
        if cfg.dashboard:
            dashboard_screenshot(cfg.out_dir / "dashboard.png", workdir)
    data = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine.describe(("sqlalchemy", "psycopg", "uvloop", "orjson")),
        "load_average": [round(v, 2) for v in load],
        "config": {
            "rate": cfg.rate,
            "duration": cfg.duration,
            "blocks": cfg.blocks,
            "engine_ms": cfg.engine_ms,
            "quick": args.quick,
            "writer": LedgerSettings().model_dump(
                include={"batch_size", "flush_interval_s", "queue_max"}
            ),
        },
        **data,
    }
    data["notes"] = notes(data)
    data["targets"] = {
        "added_p50_ms": TARGET_ADDED_P50_MS,
        "met": all(
            r["added_latency"]["p50_ms"] <= TARGET_ADDED_P50_MS for r in data["on_vs_off"].values()
        ),
        "zero_loss": all(
            r["zero_loss"]["lost"] == 0 and r["zero_loss"]["duplicates"] == 0
            for section in ("on_vs_off", "throughput", "spill")
            for r in data[section].values()
        ),
    }
    results.write_json(cfg.out_dir / "ledger.json", data)
    write_markdown(data, cfg.out_dir / "ledger.md")
    print(f"wrote {cfg.out_dir / 'ledger.json'} and ledger.md; targets: {data['targets']}")


if __name__ == "__main__":
    main()
