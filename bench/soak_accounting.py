"""The metered soak's accounting, once the load has stopped: the ledger writer drained
(read from the gateway's metrics), the ledger's rows in PostgreSQL, ``tollgate
reconcile`` (Redis spend counters against the ledger), and emptying Redis between runs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import results

HOST = "127.0.0.1"
#: The ledger writer and the quota settlements must be idle within this after the load.
DRAIN_TIMEOUT_S = 120.0


def scrape(base_url: str) -> dict[str, float]:
    """The gateway's unlabelled metrics (``name value``), for the drain check."""
    import httpx

    text = httpx.get(base_url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def drained(m: dict[str, float]) -> bool:
    """Every record handed to the ledger writer is in the database, nothing is spilled or
    queued, and no quota settlement waits for Redis."""

    def c(name: str) -> float:
        return m.get(f"tollgate_ledger_records_{name}_total", 0.0)

    settled = c("written") + c("duplicate") + c("rejected") + c("dropped")
    return (
        m.get("tollgate_ledger_queue_depth", 1.0) == 0
        and m.get("tollgate_ledger_spill_pending_bytes", 1.0) == 0
        and m.get("tollgate_quota_pending_settlements", 1.0) == 0
        and c("accepted") == settled
    )


def drain(base_url: str) -> dict[str, Any]:
    start = time.monotonic()
    m = scrape(base_url)
    while not drained(m) and time.monotonic() - start < DRAIN_TIMEOUT_S:
        time.sleep(0.25)
        m = scrape(base_url)
    keys = ("accepted", "written", "duplicate", "spilled", "replayed", "rejected", "dropped")
    return {
        "drained": drained(m),
        "waited_s": round(time.monotonic() - start, 2),
        "writer": {k: int(m.get(f"tollgate_ledger_records_{k}_total", 0)) for k in keys},
    }


def ledger_rows(side: dict[str, Any], db: str) -> dict[str, Any]:
    """The ledger's rows in PostgreSQL: in all, and by (status, http status, stream)."""
    import psycopg

    pg = side["pg"]
    with psycopg.connect(host=HOST, port=pg.port, user="postgres", dbname=db) as conn:
        rows = conn.execute(
            "SELECT status, http_status, stream, count(*), sum(cost_nusd) FROM ledger_records "
            "GROUP BY 1, 2, 3 ORDER BY 4 DESC"
        ).fetchall()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    groups = [
        {
            "status": s,
            "http_status": h,
            "stream": bool(st),
            "rows": int(n),
            "cost_nusd": int(c or 0),
        }
        for s, h, st, n, c in rows
    ]
    return {
        "rows": sum(g["rows"] for g in groups),
        "ok_rows": sum(g["rows"] for g in groups if g["status"] == "ok"),
        "cost_nusd": sum(g["cost_nusd"] for g in groups),
        "groups": groups,
        "database_mib": round(int(size[0]) / 2**20, 1) if size else None,
    }


def reconcile(config: Path, period: str) -> dict[str, Any]:
    """``tollgate reconcile --period PERIOD --json`` against this run's config."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "reconcile",
            "-c",
            str(config),
            "--period",
            period,
            "--json",
        ],
        cwd=results.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"ok": False, "exit_code": proc.returncode, "error": proc.stderr[-600:]}
    data["exit_code"] = proc.returncode
    return data


def flush_redis(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    try:
        r.flushall()
    finally:
        r.close()
