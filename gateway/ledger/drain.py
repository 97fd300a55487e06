"""The ledger writer's worker-thread side: where a batch goes once it is off the queue.

A batch is inserted (idempotently) when the database is up; rows the database refuses
are set aside one by one; when the database is down the batch goes to the spill file
and the retry backs off up to ``retry_max_s``. When the database is back, spill files
(this run's, and those an earlier run left) are replayed a few batches at a time. The
:class:`~gateway.ledger.writer.LedgerWriter` calls these methods in a worker thread and
reads the flags (``db_up``, ``retry_at``, ``replay_wanted``) on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

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


class Drain:
    """Writes, isolates, spills and replays batches for the ledger writer (worker thread)."""

    def __init__(
        self,
        sink: RowSink,
        spill: SpillDir,
        journal: Journal | None,
        *,
        batch_size: int,
        interval_s: float,
        retry_max_s: float,
        auto_migrate: bool,
        replay_batches_per_cycle: int,
        orphan_scan_s: float,
    ) -> None:
        self._sink = sink
        self._spill = spill
        self._journal = journal
        self._batch = batch_size
        self._interval = interval_s
        self._retry_max = retry_max_s
        self._replay_batches = replay_batches_per_cycle
        self._orphan_scan_s = orphan_scan_s
        self._schema_ready = not auto_migrate
        self.db_up = True
        self._backoff = self._interval
        self.retry_at = 0.0
        self._replay: ReplayFile | None = None
        self._replay_iter: Iterator[list[LedgerRecord]] | None = None
        self.replay_wanted = True  # files from an earlier run may be waiting
        self.next_orphan_scan = 0.0
        # Counters bumped in the worker thread (the writer sums them with its own).
        self.spilled = 0
        self.dropped = 0
        self.written = 0
        self.duplicates = 0
        self.replayed = 0
        self.rejected = 0
        self.failures = 0

    @property
    def replaying(self) -> bool:
        """A spill file is claimed and being replayed."""
        return self._replay is not None

    def prepare(self, timeout_s: float) -> None:
        """Open the spill, migrate, and replay an earlier run's spill for up to ``timeout_s``."""
        self._spill.open()
        try:
            if not self._schema_ready:
                self._sink.migrate()
                self._schema_ready = True
        except LedgerUnavailableError as exc:
            self._mark_down(exc)
            return
        deadline = time.monotonic() + timeout_s
        while self.db_up and time.monotonic() < deadline:
            self.replay_some()
            if self._replay is None and not self.replay_wanted:
                break

    def release_replay(self) -> None:
        """Give back the spill file being replayed (at shutdown): it stays for next time."""
        if self._replay is not None:
            self._spill.release(self._replay)
            self._replay = self._replay_iter = None

    def _journal_paths(self) -> set[Path]:
        return self._journal.paths() if self._journal is not None else set()

    def spill_pending_bytes(self) -> int:
        return self._spill.pending_bytes(self._journal_paths())

    def _insert(self, batch: Sequence[LedgerRecord]) -> int:
        if not self._schema_ready:
            self._sink.migrate()
            self._schema_ready = True
        new = self._sink.insert(batch)
        self.written += new
        self.duplicates += len(batch) - new
        return new

    def write_live(self, batch: list[LedgerRecord]) -> None:
        try:
            self._insert(batch)
        except LedgerUnavailableError as exc:
            self._mark_down(exc)
            self.spill_batch(batch)
            return
        except LedgerRejectedError:
            if not self._isolate(batch):
                return
        except Exception as exc:
            # Unexpected (a bug, a driver oddity): keep the records, back off, retry.
            log.exception("ledger write failed unexpectedly; spilling the batch")
            self._mark_down(exc)
            self.spill_batch(batch)
            return
        self._mark_up()

    def _isolate(self, batch: list[LedgerRecord]) -> bool:
        """Insert one by one, setting refused rows aside. False if the database went away."""
        for i, rec in enumerate(batch):
            try:
                self._insert([rec])
            except LedgerRejectedError as exc:
                self.rejected += 1
                log.error("ledger row refused", extra={"request_id": rec.request_id, "err": exc})
                self._spill.reject(encode(rec))
            except LedgerUnavailableError as exc:
                self._mark_down(exc)
                self.spill_batch(batch[i:])
                return False
        return True

    def spill_batch(self, batch: list[LedgerRecord]) -> None:
        try:
            self.spilled += self._spill.append_durably(batch)
        except OSError:
            self.dropped += len(batch)
            log.exception("ledger records lost: spill file not writable")
            return
        self.replay_wanted = True

    def _mark_down(self, exc: BaseException) -> None:
        self.failures += 1
        if self.db_up:
            log.warning("ledger database unavailable; spilling", extra={"err": str(exc.__cause__)})
        else:
            self._backoff = min(self._backoff * 2, self._retry_max)
        self.db_up = False
        self.retry_at = time.monotonic() + self._backoff

    def _mark_up(self) -> None:
        if not self.db_up:
            log.info("ledger database back; replaying the spill")
        self.db_up = True
        self._backoff = self._interval

    def replay_some(self) -> None:
        if not self.db_up:
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
                self.replay_wanted = True  # look for the next file
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
            self.replayed += len(batch)

    def _open_next_replay(self) -> bool:
        self.replay_wanted = False
        self.next_orphan_scan = time.monotonic() + self._orphan_scan_s
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
        self.replay_wanted = True
