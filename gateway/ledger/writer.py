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

This module is the event-loop side (the queue, the hand-off and the background loop);
:mod:`gateway.ledger.drain` writes, spills and replays in the worker thread, and
:mod:`gateway.ledger.writer_stats` exports the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from gateway.config import LedgerSettings
from gateway.ledger.drain import Drain, RowSink
from gateway.ledger.journal import Journal
from gateway.ledger.record import LedgerRecord
from gateway.ledger.spill import SpillDir, encode
from gateway.ledger.writer_stats import WriterCollector, WriterStats

log = logging.getLogger("tollgate.ledger")


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
        self._batch = settings.batch_size
        self._max = settings.queue_max
        self._interval = settings.flush_interval_s
        self._shutdown_timeout = settings.shutdown_timeout_s
        self._spill = SpillDir(settings.spill_dir)
        self._journal = Journal(settings.spill_dir) if settings.journal else None
        self._drain = Drain(
            sink,
            self._spill,
            self._journal,
            batch_size=settings.batch_size,
            interval_s=settings.flush_interval_s,
            retry_max_s=settings.retry_max_s,
            auto_migrate=settings.auto_migrate,
            replay_batches_per_cycle=replay_batches_per_cycle,
            orphan_scan_s=orphan_scan_s,
        )
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
        self._hot_unsynced = False
        self._warned_full = False
        # Counters bumped on the event loop; those bumped in the worker thread are the
        # drain's (``+=`` is not atomic across threads), summed in :meth:`stats`.
        self._accepted = 0
        self._spilled_hot = 0
        self._dropped = 0
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
        self._drain.replay_wanted = True
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
        await asyncio.to_thread(self._drain.prepare, self._shutdown_timeout)
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

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
            await asyncio.to_thread(self._drain.spill_batch, left)
        self._drain.release_replay()
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
            drain = self._drain
            replaying = drain.db_up and (drain.replaying or drain.replay_wanted)
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
                self._drain.failures += 1
                log.exception("ledger writer cycle failed")
                await asyncio.sleep(self._interval)

    async def _cycle(self) -> None:
        drain = self._drain
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
        if not drain.db_up and now < drain.retry_at:
            # Database down: keep memory small and records durable until the retry.
            batch = self._take(len(self._queue))
            if batch:
                await self._handle(drain.spill_batch, batch)
            return
        # Drain what is queued (in batches), then do a slice of replay.
        while self._queue and (drain.db_up or time.monotonic() >= drain.retry_at):
            batch = self._take(self._batch)
            await self._handle(drain.write_live, batch)
            if len(self._queue) < self._batch and not (self._closing or self._flush_requested):
                break
        if (drain.db_up or time.monotonic() >= drain.retry_at) and (
            drain.replaying or drain.replay_wanted or now >= drain.next_orphan_scan
        ):
            await asyncio.to_thread(drain.replay_some)

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

    # ------------------------------------------------------------------ observability

    def stats(self) -> WriterStats:
        drain = self._drain
        return WriterStats(
            queue_depth=len(self._queue),
            queue_capacity=self._max,
            accepted=self._accepted,
            written=drain.written,
            duplicates=drain.duplicates,
            spilled=self._spilled_hot + drain.spilled,
            replayed=drain.replayed,
            rejected=drain.rejected,
            dropped=self._dropped + drain.dropped,
            failures=drain.failures,
            spill_pending_bytes=drain.spill_pending_bytes(),
            database_up=drain.db_up,
        )
