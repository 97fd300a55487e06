"""The processes of the overhead benchmark: one stand-in engine, one gateway at a time."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import machine
from bench.overhead_config import BenchConfig, Variant
from engines.standin.process import StandinProcess

HOST = "127.0.0.1"
ENGINE_MODEL = "standin-bench"
CLIENT_MODEL = "small"
#: Every limit on, far above what the bench sends: every check runs, none refuses.
KEY_LIMITS = {
    "rpm": 10**9,
    "tpm": 10**12,
    "concurrency": 100_000,
    "budget_daily_usd": 10**6,
    "budget_monthly_usd": 10**6,
    "budget_total_usd": 10**6,
}


class Rig:
    """The stand-in engine (shared by all variants) and the current gateway process."""

    def __init__(self, cfg: BenchConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.standin = StandinProcess(
            model=ENGINE_MODEL,
            ttft_ms=cfg.ttft_ms,
            tpot_ms=cfg.tpot_ms,
            max_num_seqs=cfg.max_num_seqs,
        )
        self.gateway: Any = None
        self.gateway_port = 0
        self.pinning: dict[str, str] = {}

    @property
    def standin_pid(self) -> int:
        return self.standin.pid

    @property
    def gateway_pid(self) -> int:
        return int(self.gateway.proc.pid)

    def start_standin(self) -> None:
        self.standin.start()
        self._renice(self.standin_pid)
        self._renice(os.getpid())
        if self.cfg.pin == "gateway0":
            machine.pin(self.standin_pid, {1})
            os.sched_setaffinity(0, {1})
            self.pinning = {"gateway": "core 0", "stand-in": "core 1", "load generator": "core 1"}
        else:
            self.pinning = {"all": "not pinned (kernel placement over both cores)"}

    @contextlib.contextmanager
    def gateway_for(self, variant: Variant) -> Iterator[Path]:
        """Run ``tollgate serve`` with the variant's config; yield its directory."""
        from tests.support import GatewayProcess, write_config

        vdir = self.workdir / variant.name
        vdir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            overrides = dict(variant.overrides)
            if variant.redis:
                redis = stack.enter_context(self._redis(vdir / "redis"))
                overrides["quotas"] = {"backend": "redis", "redis_url": redis.url}
            cfg = gateway_config(vdir, self.standin.base_url, overrides)
            self.gateway_port = cfg["server"]["port"]
            self.gateway = GatewayProcess(write_config(vdir, cfg), self.gateway_port)
            self.gateway.start()
            self._renice(self.gateway_pid)
            if self.cfg.pin == "gateway0":
                machine.pin(self.gateway_pid, {0})
            try:
                yield vdir
            finally:
                self.gateway.stop()
                self.gateway = None

    @contextlib.contextmanager
    def _redis(self, data_dir: Path) -> Iterator[Any]:
        """A redis-server for the variant, on the stand-in's core (as a sidecar would be)."""
        from tests.support.redis_server import RedisServer

        server = RedisServer(data_dir, appendfsync="everysec").start()
        assert server.proc is not None
        self._renice(server.proc.pid)
        if self.cfg.pin == "gateway0":
            machine.pin(server.proc.pid, {1})
        try:
            yield server
        finally:
            server.stop()

    def _renice(self, pid: int) -> None:
        if self.cfg.nice is not None and not machine.renice(pid, self.cfg.nice):
            raise SystemExit(f"--nice {self.cfg.nice} is not permitted here (needs root)")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.standin.stop()


def gateway_config(workdir: Path, engine_url: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The bench's gateway config: static key, local unlimited quotas, access log and
    ledger off, production health-check intervals; ``overrides`` merged per section."""
    from tests.support import EngineSpec
    from tests.support import gateway_config as base_config

    sections: dict[str, dict[str, Any]] = {
        "server": {"host": HOST, "access_log": False, "log_level": "INFO"},
        "auth": {"key_store": False},
        "quotas": {"backend": "local"},
        "ledger": {"enabled": False},
        "routing": {"breaker": {"health_interval_s": 5.0, "metrics_interval_s": 1.0}},
    }
    for name, value in overrides.items():
        sections[name] = {**sections.get(name, {}), **value}
    engine = EngineSpec("bench-engine", engine_url, CLIENT_MODEL, ENGINE_MODEL)
    cfg: dict[str, Any] = base_config(workdir, [engine], **sections)  # type: ignore[arg-type]
    cfg["auth"]["static_keys"][0]["limits"] = KEY_LIMITS
    return cfg


def ledger_rows(workdir: Path) -> int | None:
    """Rows in the variant's SQLite ledger, or None when there is no ledger table."""
    db = workdir / "ledger.db"
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return int(conn.execute("SELECT count(*) FROM ledger_records").fetchone()[0])
    except sqlite3.Error:
        return None
