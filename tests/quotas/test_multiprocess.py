"""Several OS processes, one Redis, one key: limits hold exactly across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.quotas.hammer import BUDGET_NUSD, RPM_LIMIT, WORST_NUSD
from tests.quotas.redis_server import RedisServer
from tests.support import ROOT

PROCESSES = 3


def run_children(url: str, mode: str) -> list[dict[str, int]]:
    start_at = time.time() + 2.0  # every child connected and waiting by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.quotas.hammer", url, mode, str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return results


def test_rpm_is_exact_across_processes(redis_server: RedisServer, redis_url: str) -> None:
    results = run_children(redis_url, "rpm")
    assert sum(r["admitted"] for r in results) == RPM_LIMIT
    assert sum(r["refused"] for r in results) == PROCESSES * 100 - RPM_LIMIT


def test_budget_never_overrun_across_processes(redis_server: RedisServer, redis_url: str) -> None:
    results = run_children(redis_url, "budget")
    spent = sum(r["spent"] for r in results)
    # Admission holds the worst case, so even racing processes cannot overspend...
    assert spent <= BUDGET_NUSD
    # ...and the budget was really used up (less than one request's worth left).
    assert BUDGET_NUSD - spent < WORST_NUSD
    client = redis_server.client()
    try:
        assert int(client.get("tg:q:{k:budget}:st") or 0) == spent  # settled to the nano
        assert int(client.get("tg:q:{k:budget}:held") or 0) == 0
        assert client.zcard("tg:q:{k:budget}:inf") == 0
    finally:
        client.close()
