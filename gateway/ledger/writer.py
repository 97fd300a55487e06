"""The ledger writer: batched, asynchronous, bounded, durable and idempotent.

:meth:`LedgerWriter.record` is called on the request path and never blocks: it appends
to a bounded in-memory queue, or, when the queue is full, appends the record to the
spill file (a buffered write of one line). A background task takes batches off the
queue and inserts them in a worker thread, so the event loop never waits for the
database::

    record() ──► queue (≤ queue_max) ──► batch insert (thread) ──► database
        │ full                               │ database down
        ▼                                    ▼
      spill file  ◄──────────────────────────┘   (JSONL, fsync'd per batch)
        │ database back
        └──► replay, a few batches per cycle, interleaved with live batches

Before a record waits in memory it is also appended to the write-ahead journal
(:mod:`gateway.ledger.journal`; one ``write`` per event-loop turn), which is forgotten
once the record is in the database or fsync'd in the spill file: a process killed
outright (SIGKILL, OOM) loses nothing it had accepted; the next start replays it.

Every insert is ``ON CONFLICT (request_id) DO NOTHING``: a batch whose commit was lost
in flight and then spilled, or a spill file replayed twice, is never counted twice.
While the database is down the writer backs off (up to ``retry_max_s``) and moves
queued records to the spill file each cycle, so a crash then loses nothing. On
shutdown (:meth:`aclose`) it flushes within ``shutdown_timeout_s`` and spills the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import LedgerSettings
from gateway.ledger.journal import Journal
from gateway.ledger.record import LedgerRecord
from gateway.ledger.spill import ReplayFile, SpillDir, encode
from gateway.ledger.store import LedgerRejectedError, LedgerUnavailableError

log = logging.getLogger("tollgate.ledger")


class RowSink(Protocol):
    """Where batches go: :class:`~gateway.ledger.store.LedgerStore` (or a test fake)."""

    def insert(self, records: Sequence[LedgerRecord]) -> int:
        """Insert idempotently; return how many rows were new."""
        ...

    def migrate(self) -> None: ...

    def ping(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the writer's counters (also exported to Prometheus)."""

    queue_depth: int
    queue_capacity: int
    accepted: int
    written: int
    duplicates: int
    spilled: int
    replayed: int
    rejected: int
    dropped: int
    failures: int
    spill_pending_bytes: int
    database_up: bool

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class LedgerWriter:
    """A :class:`~gateway.ledger.record.Recorder` that stores records in the ledger database."""

    def __init__(
        self,
        sink: RowSink,
        settings: LedgerSettings,
        *,
        registry: CollectorRegistry | None = None,
        replay_batches_per_cycle: int = 8,
        orphan_scan_s: float = 30.0,
    ) -> None:
        self._sink = sink
        self._batch = settings.batch_size
        self._max = settings.queue_max
        self._interval = settings.flush_interval_s
        self._retry_max = settings.retry_max_s
        self._shutdown_timeout = settings.shutdown_timeout_s
        self._auto_migrate = settings.auto_migrate
        self._replay_batches = replay_batches_per_cycle
        self._orphan_scan_s = orphan_scan_s
        self._spill = SpillDir(settings.spill_dir)
        self._journal = Journal(settings.spill_dir) if settings.journal else None
        self._queue: deque[LedgerRecord] = deque()
        # Sequence numbers, for the journal's watermark: every record below it is in the
        # database, fsync'd in a spill file, set aside or counted as dropped.
        self._seq = 0
        self._queue_seqs: deque[int] = deque()
        self._busy_from: int | None = None  # first seq of the batch being handled
        self._hot_seqs: list[int] = []  # spilled on the request path, not yet fsync'd
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._flush_requested = False
        self._schema_ready = not settings.auto_migrate
        self._db_up = True
        self._backoff = self._interval
        self._retry_at = 0.0
        self._replay: ReplayFile | None = None
        self._replay_iter: Iterator[list[LedgerRecord]] | None = None
        self._replay_wanted = True  # files from an earlier run may be waiting
        self._next_orphan_scan = 0.0
        self._hot_unsynced = False
        self._warned_full = False
        # Counters. Those bumped on the event loop and in the worker thread are kept
        # apart (``+=`` is not atomic across threads) and summed in :meth:`stats`.
        self._accepted = 0
        self._spilled_hot = 0
        self._dropped = 0
        self._spilled_bg = 0
        self._dropped_bg = 0
        self._written = 0
        self._duplicates = 0
        self._replayed = 0
        self._rejected = 0
        self._failures = 0
        if registry is not None:
            registry.register(WriterCollector(self))

    # ------------------------------------------------------------------ request path

    def record(self, rec: LedgerRecord) -> None:
        """Accept one record without blocking (called once per request)."""
        self._accepted += 1
        if self._closed:
            self._record_late(rec)
            return
        seq = self._seq
        self._seq += 1
        if self._journal is not None:
            self._journal.append(encode(rec), seq)
        queue = self._queue
        if len(queue) < self._max:
            queue.append(rec)
            self._queue_seqs.append(seq)
            if len(queue) == self._batch:
                self._wake.set()
            return
        self._spill_hot(rec, seq)

    def _spill_hot(self, rec: LedgerRecord, seq: int) -> None:
        try:
            self._spill.append(encode(rec))
        except OSError:
            self._dropped += 1
            log.exception("ledger record lost: queue full and spill file not writable")
            return
        self._hot_seqs.append(seq)
        self._spilled_hot += 1
        self._hot_unsynced = True
        self._replay_wanted = True
        if not self._warned_full:
            self._warned_full = True
            log.warning(
                "ledger queue full: records go to the spill file",
                extra={"queue_max": self._max, "spill_dir": str(self._spill.directory)},
            )

    def _record_late(self, rec: LedgerRecord) -> None:
        try:
            self._spill.write_sealed_now(encode(rec))
            self._spilled_hot += 1
        except OSError:
            self._dropped += 1
            log.exception("ledger record lost after shutdown: spill file not writable")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Migrate and replay what an earlier run spilled (both bounded), then run.

        Replaying first means the database holds every settled request before anyone
        reads it at start-up (the quota store rebuilds spend from it). A database that
        is down does not stop the start: the writer spills until it is back.
        """
        await asyncio.to_thread(self._prepare)
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    def _prepare(self) -> None:
        self._spill.open()
        try:
            if not self._schema_ready:
                self._sink.migrate()
                self._schema_ready = True
        except LedgerUnavailableError as exc:
            self._mark_down(exc)
            return
        deadline = time.monotonic() + self._shutdown_timeout
        while self._db_up and time.monotonic() < deadline:
            self._replay_some()
            if self._replay is None and not self._replay_wanted:
                break

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is in the database or the spill file.

        Returns False if ``timeout`` passed first (a database that hangs).
        """
        if self._task is None or self._task.done():
            return not self._queue
        self._flush_requested = True
        self._drained.clear()
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Flush (bounded by ``shutdown_timeout_s``), spill the rest, release the files."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        task = self._task
        timed_out = False
        if task is not None:
            try:
                async with asyncio.timeout(self._shutdown_timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                timed_out = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._closed = True
        left = list(self._queue)
        self._queue.clear()
        self._queue_seqs.clear()
        if timed_out:
            # A worker thread may still be busy with the spill file: write apart.
            log.warning("ledger flush timed out at shutdown", extra={"spilled": len(left)})
            if left:
                await asyncio.to_thread(
                    self._spill.write_sealed_now, b"".join(encode(r) for r in left)
                )
                self._spilled_hot += len(left)
            if self._journal is not None:
                self._journal.close(0)  # keep it all: replayed (idempotently) at next start
            return
        if left:
            await asyncio.to_thread(self._spill_batch, left)
        if self._replay is not None:
            self._spill.release(self._replay)
            self._replay = self._replay_iter = None
        await asyncio.to_thread(self._spill.close)
        self._hot_seqs.clear()  # closing fsync'd them
        if self._journal is not None:
            self._journal.close(self.watermark())

    # ------------------------------------------------------------------ background loop

    async def _run(self) -> None:
        while True:
            queue = self._queue
            if not queue and (self._closing or self._flush_requested):
                self._flush_requested = False
                self._drained.set()
                if self._closing:
                    return
            replaying = self._db_up and (self._replay is not None or self._replay_wanted)
            if len(queue) < self._batch and not (
                self._closing or self._flush_requested or replaying
            ):
                if not queue:
                    self._drained.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self._cycle()
            except Exception:
                # Never let the writer die: the records involved were spilled first.
                self._failures += 1
                log.exception("ledger writer cycle failed")
                await asyncio.sleep(self._interval)

    async def _cycle(self) -> None:
        now = time.monotonic()
        if self._hot_unsynced:
            self._hot_unsynced = False
            syncing, self._hot_seqs = self._hot_seqs, []
            self._busy_from = syncing[0] if syncing else None
            try:
                await asyncio.to_thread(self._spill.sync)
            finally:
                self._busy_from = None
        if self._warned_full and len(self._queue) < self._max // 2:
            self._warned_full = False
        if not self._db_up and now < self._retry_at:
            # Database down: keep memory small and records durable until the retry.
            batch = self._take(len(self._queue))
            if batch:
                await self._handle(self._spill_batch, batch)
            return
        # Drain what is queued (in batches), then do a slice of replay.
        while self._queue and (self._db_up or time.monotonic() >= self._retry_at):
            batch = self._take(self._batch)
            await self._handle(self._write_live, batch)
            if len(self._queue) < self._batch and not (self._closing or self._flush_requested):
                break
        if (self._db_up or time.monotonic() >= self._retry_at) and (
            self._replay is not None or self._replay_wanted or now >= self._next_orphan_scan
        ):
            await asyncio.to_thread(self._replay_some)

    def _take(self, n: int) -> list[LedgerRecord]:
        """Up to ``n`` records off the queue; the caller must hand them to :meth:`_handle`."""
        queue, seqs = self._queue, self._queue_seqs
        k = min(n, len(queue))
        if k:
            self._busy_from = seqs[0]
        for _ in range(k):
            seqs.popleft()
        return [queue.popleft() for _ in range(k)]

    async def _handle(
        self, fn: Callable[[list[LedgerRecord]], None], batch: list[LedgerRecord]
    ) -> None:
        """Write or spill a batch in the worker thread, then let the journal forget it."""
        try:
            await asyncio.to_thread(fn, batch)
        finally:
            self._busy_from = None
        if self._journal is not None:
            self._journal.release(self.watermark())

    def _journal_paths(self) -> set[Path]:
        return self._journal.paths() if self._journal is not None else set()

    def watermark(self) -> int:
        """The lowest sequence number not yet durable outside the journal."""
        candidates = [self._seq]
        if self._busy_from is not None:
            candidates.append(self._busy_from)
        if self._queue_seqs:
            candidates.append(self._queue_seqs[0])
        if self._hot_seqs:
            candidates.append(self._hot_seqs[0])
        return min(candidates)

    # ------------------------------------------------------------------ worker thread

    def _insert(self, batch: Sequence[LedgerRecord]) -> int:
        if not self._schema_ready:
            self._sink.migrate()
            self._schema_ready = True
        new = self._sink.insert(batch)
        self._written += new
        self._duplicates += len(batch) - new
        return new

    def _write_live(self, batch: list[LedgerRecord]) -> None:
        try:
            self._insert(batch)
        except LedgerUnavailableError as exc:
            self._mark_down(exc)
            self._spill_batch(batch)
            return
        except LedgerRejectedError:
            if not self._isolate(batch):
                return
        except Exception as exc:
            # Unexpected (a bug, a driver oddity): keep the records, back off, retry.
            log.exception("ledger write failed unexpectedly; spilling the batch")
            self._mark_down(exc)
            self._spill_batch(batch)
            return
        self._mark_up()

    def _isolate(self, batch: list[LedgerRecord]) -> bool:
        """Insert one by one, setting refused rows aside. False if the database went away."""
        for i, rec in enumerate(batch):
            try:
                self._insert([rec])
            except LedgerRejectedError as exc:
                self._rejected += 1
                log.error("ledger row refused", extra={"request_id": rec.request_id, "err": exc})
                self._spill.reject(encode(rec))
            except LedgerUnavailableError as exc:
                self._mark_down(exc)
                self._spill_batch(batch[i:])
                return False
        return True

    def _spill_batch(self, batch: list[LedgerRecord]) -> None:
        try:
            self._spilled_bg += self._spill.append_durably(batch)
        except OSError:
            self._dropped_bg += len(batch)
            log.exception("ledger records lost: spill file not writable")
            return
        self._replay_wanted = True

    def _mark_down(self, exc: BaseException) -> None:
        self._failures += 1
        if self._db_up:
            log.warning("ledger database unavailable; spilling", extra={"err": str(exc.__cause__)})
        else:
            self._backoff = min(self._backoff * 2, self._retry_max)
        self._db_up = False
        self._retry_at = time.monotonic() + self._backoff

    def _mark_up(self) -> None:
        if not self._db_up:
            log.info("ledger database back; replaying the spill")
        self._db_up = True
        self._backoff = self._interval

    def _replay_some(self) -> None:
        if not self._db_up:
            try:  # probe before touching the files
                self._sink.ping()
            except LedgerUnavailableError as exc:
                self._mark_down(exc)
                return
            self._mark_up()
        if self._replay is None and not self._open_next_replay():
            return
        assert self._replay is not None and self._replay_iter is not None
        for _ in range(self._replay_batches):
            batch = next(self._replay_iter, None)
            if batch is None:
                self._spill.finish(self._replay)
                self._replay = self._replay_iter = None
                self._replay_wanted = True  # look for the next file
                return
            try:
                self._insert(batch)
            except LedgerUnavailableError as exc:
                self._abandon_replay()
                self._mark_down(exc)
                return
            except LedgerRejectedError:
                if not self._isolate(batch):
                    # What was not inserted went to the open spill file; the rest of this
                    # file is still on disk and will be replayed again (idempotently).
                    self._abandon_replay()
                    return
            except Exception as exc:
                # Keep the file (it is only removed once every batch went in) and retry.
                log.exception("ledger replay failed unexpectedly")
                self._abandon_replay()
                self._mark_down(exc)
                return
            self._replayed += len(batch)

    def _open_next_replay(self) -> bool:
        self._replay_wanted = False
        self._next_orphan_scan = time.monotonic() + self._orphan_scan_s
        self._spill.seal()
        for path in self._spill.pending(self._journal_paths()):
            claimed = self._spill.claim(path)
            if claimed is not None:
                self._replay = claimed
                self._replay_iter = claimed.batches(self._batch)
                return True
        return False

    def _abandon_replay(self) -> None:
        if self._replay is not None:
            self._spill.release(self._replay)
        self._replay = self._replay_iter = None
        self._replay_wanted = True

    # ------------------------------------------------------------------ observability

    def stats(self) -> WriterStats:
        return WriterStats(
            queue_depth=len(self._queue),
            queue_capacity=self._max,
            accepted=self._accepted,
            written=self._written,
            duplicates=self._duplicates,
            spilled=self._spilled_hot + self._spilled_bg,
            replayed=self._replayed,
            rejected=self._rejected,
            dropped=self._dropped + self._dropped_bg,
            failures=self._failures,
            spill_pending_bytes=self._spill.pending_bytes(self._journal_paths()),
            database_up=self._db_up,
        )


class WriterCollector(Collector):
    """Exports :meth:`LedgerWriter.stats` at scrape time (nothing on the request path)."""

    def __init__(self, writer: LedgerWriter) -> None:
        self._writer = writer

    def collect(self) -> Iterator[Metric]:
        s = self._writer.stats()
        gauges = {
            "queue_depth": ("Records waiting in the ledger writer's queue.", s.queue_depth),
            "queue_capacity": ("Capacity of the ledger writer's queue.", s.queue_capacity),
            "spill_pending_bytes": (
                "Bytes of spilled ledger records waiting for replay.",
                s.spill_pending_bytes,
            ),
            "database_up": ("1 if the last ledger write succeeded.", int(s.database_up)),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"tollgate_ledger_{name}", doc, value=value)
        counters = {
            "records_accepted": ("Records handed to the ledger writer.", s.accepted),
            "records_written": ("Records newly inserted in the ledger database.", s.written),
            "records_duplicate": ("Records already present (idempotent skips).", s.duplicates),
            "records_spilled": ("Records written to the spill file.", s.spilled),
            "records_replayed": ("Records replayed from spill files.", s.replayed),
            "records_rejected": ("Records the database refused (set aside).", s.rejected),
            "records_dropped": ("Records lost (queue full and spill unwritable).", s.dropped),
            "write_failures": ("Failed attempts to write to the ledger database.", s.failures),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"tollgate_ledger_{name}", doc, value=value)
