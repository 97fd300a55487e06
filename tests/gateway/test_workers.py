"""``server.workers: 2`` for real: a supervisor, two worker processes, a real Redis.

One gateway serves the first tests (both workers answer, one /metrics, the admin port,
a killed worker replaced); the drain test starts its own with a slow engine, and the
start-up failures (a taken port, a worker that cannot build its app) exit 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.standin.process import StandinProcess
from tests.quotas.redis_server import RedisServer
from tests.support import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    ROOT,
    EngineSpec,
    GatewayProcess,
    free_port,
    gateway_config,
    wait_for,
    write_config,
)

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
#: No keep-alive: every request is a new connection, which the kernel hashes to a worker.
CLOSE = {"connection": "close"}
OK = (("model", "small"), ("status", "200"), ("tier", "small"))


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(base_url + "/metrics", headers=CLOSE, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def chat(base_url: str, **extra: object) -> httpx.Response:
    return httpx.post(
        base_url + "/v1/chat/completions",
        headers=AUTH | CLOSE,
        json={
            "model": "small",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            **extra,
        },
        timeout=30,
    )


def workers_config(
    tmp: Path, engine: StandinProcess, model: str, redis: RedisServer, **server: object
) -> Path:
    cfg = gateway_config(
        tmp,
        [EngineSpec("e0", engine.base_url, "small", model)],
        server={"workers": 2, **server},
        quotas={"backend": "redis", "redis_url": redis.url},
        ledger={"partial_restore_ok": True},  # the workers share one SQLite file
    )
    return write_config(tmp, cfg)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(
    redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, int]]:
    tmp = tmp_path_factory.mktemp("workers")
    admin_port = free_port()
    with StandinProcess(model="fast", tpot_ms=1) as engine:
        port = free_port()
        path = workers_config(tmp, engine, "fast", redis, port=port, admin_port=admin_port)
        gw = GatewayProcess(path, port).start()
        try:
            assert gw.proc is not None
            wait_for(lambda: len(children(gw.proc.pid)) == 2, timeout=30)  # type: ignore[union-attr]
            yield gw, admin_port
        finally:
            gw.stop()


def test_both_workers_serve_and_every_scrape_shows_their_sum(
    gateway: tuple[GatewayProcess, int],
) -> None:
    gw, _ = gateway
    assert gw.proc is not None and len(children(gw.proc.pid)) == 2
    for _ in range(40):
        assert chat(gw.base_url).status_code == 200
    # Each scrape is answered by whichever worker the kernel picks: all must agree.
    for _ in range(12):
        assert scrape(gw.base_url)[("tollgate_requests_total", OK)] == 40

    # Both workers answered some of those 52 connections (snapshots: at most 1 s old).
    def both_served() -> bool:
        m = scrape(gw.base_url)
        counts = [m.get(("tollgate_worker_http_requests_total", (("worker", w),)), 0) for w in "01"]
        return all(c >= 5 for c in counts) and sum(counts) >= 52

    wait_for(both_served, timeout=10)


def test_the_admin_port_answers_and_the_client_port_has_no_admin(
    gateway: tuple[GatewayProcess, int],
) -> None:
    gw, admin_port = gateway
    admin = f"http://127.0.0.1:{admin_port}/admin/engines"
    for _ in range(4):
        r = httpx.get(admin, headers={"authorization": f"Bearer {ADMIN_TOKEN}"} | CLOSE, timeout=5)
        assert r.status_code == 200 and r.json()["engines"][0]["name"] == "e0"
    assert httpx.get(admin, timeout=5).status_code == 401
    r = httpx.get(
        gw.base_url + "/admin/engines", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert r.status_code == 404


def test_a_killed_worker_is_replaced_and_its_counts_stay(
    gateway: tuple[GatewayProcess, int],
) -> None:
    gw, _ = gateway
    assert gw.proc is not None
    supervisor = gw.proc.pid
    before = scrape(gw.base_url)[("tollgate_requests_total", OK)]
    assert before >= 40
    old = children(supervisor)
    victim = min(old)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(children(supervisor)) == 2 and victim not in children(supervisor), 20)
    new = children(supervisor) - old
    assert len(new) == 1
    # Its socket queues connections from the start; wait until it serves them.
    wait_for(lambda: gw.log.read_text().count("Application startup complete.") == 3, 60)
    for _ in range(10):
        assert chat(gw.base_url).status_code == 200
    after = scrape(gw.base_url)
    # The dead worker's requests are still counted (its files outlive it).
    assert after[("tollgate_requests_total", OK)] == before + 10
    restarts = [after.get(("tollgate_worker_restarts_total", (("worker", w),)), 0) for w in "01"]
    assert sorted(restarts) == [0, 1]
    assert "worker exited unexpectedly; restarting it" in gw.log.read_text()


def test_sigterm_drains_streams_on_every_worker_and_all_exit_zero(
    redis: RedisServer, tmp_path: Path
) -> None:
    with StandinProcess(model="slow", tpot_ms=60) as engine:
        port = free_port()
        path = workers_config(
            tmp_path, engine, "slow", redis, port=port, drain_seconds=20, unready_seconds=1
        )
        gw = GatewayProcess(path, port).start()
        assert gw.proc is not None
        wait_for(lambda: len(children(gw.proc.pid)) == 2, timeout=30)  # type: ignore[union-attr]
        workers = children(gw.proc.pid)
        results: list[list[str]] = []
        started = threading.Semaphore(0)

        def stream() -> None:
            lines: list[str] = []
            with httpx.stream(
                "POST",
                gw.base_url + "/v1/chat/completions",
                headers=AUTH | CLOSE,
                json={
                    "model": "small",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 50,
                    "stream": True,
                },
                timeout=30,
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        if not lines:
                            started.release()
                        lines.append(line)
            results.append(lines)

        threads = [threading.Thread(target=stream) for _ in range(12)]
        for t in threads:
            t.start()
        for _ in threads:
            assert started.acquire(timeout=10)
        # The streams, summed over both workers (a sibling's gauges are <= 1 s old).
        wait_for(lambda: scrape(gw.base_url)[("tollgate_in_flight_requests", ())] >= 12, 5)
        gw.terminate()
        # Readiness turns 503 on whichever worker answers, while streams still run.
        time.sleep(0.3)
        for _ in range(6):
            r = httpx.get(gw.base_url + "/health/ready", headers=CLOSE, timeout=5)
            assert r.status_code == 503 and r.json()["draining"] is True
        for t in threads:
            t.join(30)
        assert gw.wait(40) == 0
        assert len(results) == 12
        for lines in results:
            assert lines[-1] == "data: [DONE]"
            assert sum("tok" in line for line in lines) == 50  # every stream finished in full
        log = gw.log.read_text()
        assert "Traceback" not in log
        assert '"exit_codes":[0,0]' in log
        # Both workers were draining streams when they stopped accepting (12 connections
        # all hashed to one worker: p = 2 / 2**12).
        assert log.count("Waiting for connections to close") == 2
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.base_url + "/health", timeout=2)
        gw.stop()


def test_a_taken_port_fails_at_start_with_exit_1(redis: RedisServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        engine = EngineSpec("e0", f"http://127.0.0.1:{free_port()}", "small", "m")
        cfg = gateway_config(
            tmp_path,
            [engine],
            server={"workers": 2, "port": port},
            quotas={"backend": "redis", "redis_url": redis.url},
            ledger={"partial_restore_ok": True},  # the workers share one SQLite file
        )
        proc = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "-c", str(write_config(tmp_path, cfg))],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert b"cannot start the workers" in proc.stderr


def test_a_worker_failing_on_its_first_start_stops_the_gateway(
    redis: RedisServer, tmp_path: Path
) -> None:
    engine = EngineSpec("e0", f"http://127.0.0.1:{free_port()}", "small", "m")
    cfg = gateway_config(
        tmp_path,
        [engine],
        server={"workers": 2},
        quotas={"backend": "redis", "redis_url": redis.url},
        ledger={"partial_restore_ok": True},  # the workers share one SQLite file
    )
    path = write_config(tmp_path, cfg)
    (tmp_path / "prices.yaml").unlink()  # the config loads; building the app fails
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "-c", str(path)],
        cwd=ROOT,
        capture_output=True,
        timeout=90,
    )
    assert proc.returncode == 1
    assert b"worker failed on start; stopping the gateway" in proc.stderr
    assert b"restarting it" not in proc.stderr
