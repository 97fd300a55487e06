"""The ledger writer: batching, never blocking, spilling, replay, idempotence, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config import LedgerSettings
from gateway.ledger.record import LedgerRecord
from gateway.ledger.spill import decode, encode
from gateway.ledger.store import LedgerRejectedError, LedgerStore, LedgerUnavailableError
from gateway.ledger.writer import LedgerWriter
from tests.ledger.factories import make_record, records


class MemorySink:
    """An idempotent in-memory table that can be taken down, slowed or made to refuse."""

    def __init__(self) -> None:
        self.rows: dict[str, LedgerRecord] = {}
        self.down = False
        self.refuse: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.lose_ack_once = False
        self.explode = 0

    def insert(self, records: Sequence[LedgerRecord]) -> int:
        self.gate.wait()
        self.calls += 1
        if self.explode:
            self.explode -= 1
            raise RuntimeError("a bug in the driver")
        if self.down:
            raise LedgerUnavailableError("down")
        if any(r.request_id in self.refuse for r in records):
            raise LedgerRejectedError("refused")
        new = 0
        for r in records:
            if r.request_id not in self.rows:
                self.rows[r.request_id] = r
                new += 1
        if self.lose_ack_once:  # committed, but the client never heard back
            self.lose_ack_once = False
            raise LedgerUnavailableError("connection lost after commit")
        return new

    def migrate(self) -> None:
        if self.down:
            raise LedgerUnavailableError("down")

    def ping(self) -> None:
        if self.down:
            raise LedgerUnavailableError("down")


class FlakyStore:
    """A real store that can be made unreachable."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.down = False

    def insert(self, records: Sequence[LedgerRecord]) -> int:
        if self.down:
            raise LedgerUnavailableError("down")
        return self.store.insert(records)

    def migrate(self) -> None:
        if self.down:
            raise LedgerUnavailableError("down")
        self.store.migrate()

    def ping(self) -> None:
        if self.down:
            raise LedgerUnavailableError("down")
        self.store.ping()


def settings(tmp_path: Path, **kw: Any) -> LedgerSettings:
    base: dict[str, Any] = {
        "spill_dir": str(tmp_path / "spill"),
        "batch_size": 50,
        "flush_interval_s": 0.05,
        "queue_max": 1000,
        "retry_max_s": 0.2,
        "shutdown_timeout_s": 5,
        "auto_migrate": False,
    }
    base.update(kw)
    return LedgerSettings(**base)


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def spilled_lines(directory: Path, pattern: str = "*.jsonl") -> list[bytes]:
    return [ln for p in sorted(directory.glob(pattern)) for ln in p.read_bytes().splitlines()]


async def test_records_are_written_in_batches(tmp_path: Path) -> None:
    sink = MemorySink()
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    for rec in records(120):
        w.record(rec)
    await w.flush()
    assert len(sink.rows) == 120
    assert sink.calls <= 4  # 50 + 50 + 20, not 120 inserts
    s = w.stats()
    assert (s.accepted, s.written, s.spilled, s.queue_depth) == (120, 120, 0, 0)
    await w.aclose()


async def test_record_does_not_wait_for_a_slow_database(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.gate.clear()  # every insert blocks until released
    w = LedgerWriter(sink, settings(tmp_path, queue_max=5000))
    await w.start()
    for rec in records(2000):
        w.record(rec)  # would hang here if it waited for the insert (the gate is shut)
    await asyncio.sleep(0.05)  # the writer has taken its first batch into the stuck insert
    assert sink.rows == {}
    assert w.stats().queue_depth >= 1900  # queued, not written, nothing dropped
    sink.gate.set()
    await w.aclose()
    assert len(sink.rows) == 2000
    await w.flush()
    assert len(sink.rows) == 2000
    await w.aclose()


async def test_a_full_queue_spills_to_disk_and_nothing_is_lost(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.gate.clear()
    w = LedgerWriter(sink, settings(tmp_path, queue_max=100))
    await w.start()
    for rec in records(400):
        w.record(rec)
    assert w.stats().spilled >= 250
    sink.gate.set()
    await wait_for(lambda: len(sink.rows) == 400)
    s = w.stats()
    assert s.written == 400 and s.dropped == 0
    await w.aclose()
    assert not list((tmp_path / "spill").glob("sealed-*"))  # replayed and removed


async def test_database_down_spills_durably_then_replays_exactly_once(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    for rec in records(300):
        w.record(rec)
    await w.flush()
    assert not sink.rows
    on_disk = {decode(ln).request_id for ln in spilled_lines(tmp_path / "spill")}
    assert len(on_disk) == 300  # durable while the database is away
    assert w.stats().database_up is False
    for rec in records(100, start=300):  # traffic goes on meanwhile
        w.record(rec)
    sink.down = False
    await wait_for(lambda: len(sink.rows) == 400)
    s = w.stats()
    assert s.database_up and s.failures >= 1 and s.replayed >= 300
    assert s.written == 400
    await w.aclose()
    assert spilled_lines(tmp_path / "spill") == []


async def test_a_lost_commit_acknowledgement_is_not_counted_twice(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.lose_ack_once = True
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    for rec in records(40):
        w.record(rec)
    await wait_for(lambda: w.stats().replayed >= 40)
    s = w.stats()
    assert len(sink.rows) == 40
    assert s.duplicates == 40  # the replay found them committed and skipped them
    await w.aclose()


async def test_an_unexpected_error_keeps_the_records(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.explode = 2  # the live batch, then the first replay attempt
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    for rec in records(30):
        w.record(rec)
    await wait_for(lambda: len(sink.rows) == 30)
    s = w.stats()
    assert s.failures >= 2 and s.dropped == 0
    await w.aclose()
    assert spilled_lines(tmp_path / "spill") == []


async def test_a_refused_row_is_set_aside_and_the_rest_written(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.refuse = {"req-00000003"}
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    for rec in records(10):
        w.record(rec)
    await w.flush()
    assert len(sink.rows) == 9
    assert w.stats().rejected == 1
    rejected = spilled_lines(tmp_path / "spill", "rejected-*.jsonl")
    assert [decode(ln).request_id for ln in rejected] == ["req-00000003"]
    await w.aclose()


async def test_shutdown_flushes_everything_queued(tmp_path: Path) -> None:
    sink = MemorySink()
    w = LedgerWriter(sink, settings(tmp_path, batch_size=100, flush_interval_s=30))
    await w.start()
    for rec in records(1000):
        w.record(rec)
    await w.aclose()
    assert len(sink.rows) == 1000
    assert w.stats().spilled == 0


async def test_shutdown_with_the_database_down_then_the_next_start_replays(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    sink.down = True
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    for rec in records(200):
        w.record(rec)
    await w.aclose()
    assert not sink.rows
    assert len(spilled_lines(tmp_path / "spill", "sealed-*.jsonl")) == 200
    assert not list((tmp_path / "spill").glob("open-*"))

    sink.down = False
    again = LedgerWriter(sink, settings(tmp_path))
    await again.start()  # replays before returning
    assert len(sink.rows) == 200
    assert again.stats().replayed == 200
    await again.aclose()
    assert spilled_lines(tmp_path / "spill") == []


async def test_a_crashed_process_spill_file_is_replayed_and_a_torn_line_kept(
    tmp_path: Path,
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    lines = b"".join(encode(r) for r in records(3))
    torn = encode(make_record(3))[:40]  # the crash cut the last write short
    (spill / "open-deadbeef-1.jsonl").write_bytes(lines + torn)
    sink = MemorySink()
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    assert sorted(sink.rows) == ["req-00000000", "req-00000001", "req-00000002"]
    assert not (spill / "open-deadbeef-1.jsonl").exists()
    assert spilled_lines(spill, "rejected-*.jsonl") == [torn]
    await w.aclose()


async def test_a_live_writers_spill_file_is_not_replayed_by_another(tmp_path: Path) -> None:
    down = MemorySink()
    down.down = True
    a = LedgerWriter(down, settings(tmp_path))
    await a.start()
    for rec in records(20):
        a.record(rec)
    await a.flush()
    up = MemorySink()
    b = LedgerWriter(up, settings(tmp_path))
    await b.start()
    assert not up.rows  # a's file is locked: a is alive and will replay it itself
    await b.aclose()
    down.down = False
    await wait_for(lambda: len(down.rows) == 20)
    await a.aclose()


async def test_records_arriving_after_close_are_kept(tmp_path: Path) -> None:
    sink = MemorySink()
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    await w.aclose()
    w.record(make_record(7))
    lines = spilled_lines(tmp_path / "spill", "sealed-*.jsonl")
    assert [decode(ln).request_id for ln in lines] == ["req-00000007"]


async def test_shutdown_is_bounded_when_the_database_hangs(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.gate.clear()
    w = LedgerWriter(sink, settings(tmp_path, shutdown_timeout_s=0.3))
    await w.start()
    for rec in records(120):
        w.record(rec)
    await asyncio.sleep(0.1)  # one batch is stuck in the hung insert
    assert await w.flush(timeout=0.1) is False  # an admin endpoint's flush does not hang
    t = time.monotonic()
    await w.aclose()
    assert time.monotonic() - t < 2
    kept = {decode(ln).request_id for ln in spilled_lines(tmp_path / "spill")}
    assert len(kept) >= 70  # everything not inside the hung insert
    sink.gate.set()


async def test_writer_metrics_are_exported(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    sink = MemorySink()
    w = LedgerWriter(sink, settings(tmp_path), registry=registry)
    await w.start()
    for rec in records(30):
        w.record(rec)
    await w.flush()
    text = generate_latest(registry).decode()
    assert "tollgate_ledger_records_written_total 30.0" in text
    assert "tollgate_ledger_queue_depth 0.0" in text
    assert "tollgate_ledger_database_up 1.0" in text
    await w.aclose()


async def test_the_schema_is_migrated_when_the_database_comes_up(
    tmp_path: Path, db_url: str
) -> None:
    store = LedgerStore.from_url(db_url)
    flaky = FlakyStore(store)
    flaky.down = True
    w = LedgerWriter(flaky, settings(tmp_path, auto_migrate=True))
    await w.start()
    for rec in records(25):
        w.record(rec)
    await w.flush()
    flaky.down = False
    await wait_for(lambda: w.stats().written == 25)
    assert store.count() == 25
    await w.aclose()
    store.dispose()


@pytest.mark.parametrize("outages", [1, 3])
async def test_outages_under_load_lose_nothing_and_write_nothing_twice(
    tmp_path: Path, store: LedgerStore, outages: int
) -> None:
    flaky = FlakyStore(store)
    w = LedgerWriter(flaky, settings(tmp_path, batch_size=40, queue_max=200))
    await w.start()
    n = 0
    for round_ in range(outages):
        for _ in range(5):
            for rec in records(60, start=n):
                w.record(rec)
            n += 60
            await asyncio.sleep(0.02)
        flaky.down = True
        for _ in range(5):
            for rec in records(60, start=n):
                w.record(rec)
            n += 60
            await asyncio.sleep(0.02)
        flaky.down = round_ == outages  # back up
    flaky.down = False
    await w.flush()
    await wait_for(lambda: store.count() == n, timeout=30)
    await w.aclose()
    assert sorted(store.request_ids()) == [f"req-{i:08d}" for i in range(n)]
    s = w.stats()
    assert s.written == n and s.dropped == 0 and s.rejected == 0
