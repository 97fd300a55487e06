"""The ledger benchmark's set-up: its config, the database backends (SQLite, a
throwaway PostgreSQL), synthetic ledger records and the zero-loss check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import percentiles
from gateway.config import LedgerSettings
from gateway.ledger.record import LedgerRecord
from gateway.ledger.store import LedgerStore

ROOT = Path(__file__).resolve().parents[1]


RESULTS = ROOT / "bench" / "results"


TARGET_ADDED_P50_MS = 0.3


@dataclass(frozen=True)
class Config:
    rate: float = 300.0
    duration: float = 20.0  # per backend, split in ABBA blocks (half on, half off)
    blocks: int = 4
    engine_ms: float = 20.0
    throughput_records: int = 100_000
    spill_records: int = 20_000
    backends: tuple[str, ...] = ("sqlite", "postgres")
    out_dir: Path = RESULTS
    dashboard: bool = False


def new_record(i: int, tag: str) -> LedgerRecord:
    """What ``Pipeline.record`` builds for a request (same field work, same types)."""
    now = dt.datetime.now(dt.UTC)
    return LedgerRecord(
        request_id=f"{tag}-{i:08d}",
        started_at=now - dt.timedelta(milliseconds=20),
        finished_at=now,
        key_id="key-bench",
        key_prefix="tg-benchxx",
        team="bench",
        endpoint="chat",
        requested_model="auto",
        engine="small-0",
        tier="small",
        upstream_model="smollm2-135m-awq",
        route_reason="short_prompt",
        stream=bool(i % 2),
        prompt_tokens=120 + i % 50,
        completion_tokens=16,
        cached_tokens=0,
        usage_estimated=False,
        latency_ms=round(20.0 + (i % 7) * 0.1, 3),
        ttft_ms=round(5.0 + (i % 5) * 0.1, 3),
        status="ok",
        http_status=200,
        error_code=None,
        cost_nusd=(120 + i % 50) * 50 + 16 * 200,
        counterfactual_nusd=(120 + i % 50) * 500 + 16 * 1500,
        price_version="smollm2-135m-awq@2026-01-01",
    )


def pcts_us(ns: Sequence[int] | np.ndarray) -> dict[str, float | None]:
    """Nanoseconds in, microseconds out."""
    return percentiles(
        ns, (50, 99, 99.9, 100), scale=1e-3, digits=2, names=("p50", "p99", "p99.9", "max")
    )


def pcts_ms(s: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    return percentiles(s, (50, 99, 100), names=("p50", "p99", "max"))


class Backend:
    """A ledger database for one measurement: a SQLite file or a throwaway PostgreSQL."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self._cluster: Any = None
        self._n = 0

    def __enter__(self) -> Backend:
        if self.kind == "postgres":
            from tests.support.postgres import PostgresCluster

            self._cluster = PostgresCluster()
            self._cluster.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cluster is not None:
            self._cluster.destroy()

    def fresh_url(self) -> str:
        self._n += 1
        if self.kind == "sqlite":
            return f"sqlite:///{self.workdir}/ledger-{self._n}.db"
        return str(self._cluster.url(self._cluster.create_database()))


def writer_settings(url: str, spill: Path, **kw: Any) -> LedgerSettings:
    return LedgerSettings(url=url, spill_dir=str(spill), **kw)


def verify(store: LedgerStore, prefix: str, expected: int) -> dict[str, int]:
    ids = [i for i in store.request_ids() if i.startswith(prefix)]
    return {
        "expected": expected,
        "stored": len(ids),
        "distinct": len(set(ids)),
        "lost": expected - len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
    }
