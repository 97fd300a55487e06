"""Write-ahead journal: every record reaches the kernel before it waits in memory.

The writer batches records in memory for up to ``ledger.flush_interval_s``. A process
killed outright (SIGKILL, the OOM killer) would lose that batch, although its requests
were served. So :meth:`LedgerWriter.record` also appends each record here: lines written
in one event-loop turn go out in one ``write`` on the next turn, into this process's
``journal-<id>-<ns>.jsonl`` in the spill directory. Nothing is fsync'd: the page cache
survives the death of the process (not of the machine, which the database's own
durability and the spill file cover).

Once every record in a segment is in the database or fsync'd in the spill file (the
writer's *watermark* has passed its last sequence number), the segment is deleted, or
emptied when it is the current one. A journal left by a dead process has a free lock,
so :class:`~gateway.ledger.spill.SpillDir` replays it like an orphaned spill file;
records already in the database are skipped (inserts are idempotent by request id).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

#: A segment is closed and a new one started beyond this size.
SEGMENT_BYTES = 1 << 20


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int
    size: int = 0
    #: Sequence number of the last record written to it (-1: none yet).
    last_seq: int = -1


class Journal:
    """This process's journal segments (event-loop side only)."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self._id = uuid.uuid4().hex
        self._segment_bytes = segment_bytes
        self._current: _Segment | None = None
        self._closed: list[_Segment] = []
        self._buffer: list[bytes] = []
        self._buffer_last_seq = -1
        self._armed = False

    def paths(self) -> set[Path]:
        """This process's segment files (not for replay while it lives)."""
        segs = [*self._closed, *([self._current] if self._current else [])]
        return {s.path for s in segs}

    def append(self, line: bytes, seq: int) -> None:
        """Queue one record's line; written with the others of this turn, on the next."""
        self._buffer.append(line)
        self._buffer_last_seq = seq
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued lines (one write call, retried on a short write)."""
        self._armed = False
        if not self._buffer:
            return
        seg = self._current or self._open_segment()
        data = memoryview(b"".join(self._buffer))
        self._buffer.clear()
        while data:
            n = os.write(seg.fd, data)
            data = data[n:]
            seg.size += n
        seg.last_seq = self._buffer_last_seq
        if seg.size >= self._segment_bytes:
            self._closed.append(seg)
            self._current = None

    def release(self, watermark: int) -> None:
        """Forget segments whose records are all durable elsewhere (seq < ``watermark``)."""
        keep = []
        for seg in self._closed:
            if seg.last_seq < watermark:
                self._remove(seg)
            else:
                keep.append(seg)
        self._closed = keep
        cur = self._current
        if cur is not None and cur.size and cur.last_seq < watermark:
            os.ftruncate(cur.fd, 0)  # O_APPEND: the next write starts at 0 again
            cur.size = 0

    def close(self, watermark: int) -> None:
        """Flush, forget what is durable, and let go of the rest (replayed at next start)."""
        self.flush()
        self.release(watermark)
        for seg in [*self._closed, *([self._current] if self._current else [])]:
            if seg.size == 0 or seg.last_seq < watermark:
                self._remove(seg)
            else:
                os.close(seg.fd)  # releases the lock: an orphan for the next start
        self._closed, self._current = [], None

    def _open_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"journal-{self._id}-{time.time_ns()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._current = _Segment(path, fd)
        return self._current

    @staticmethod
    def _remove(seg: _Segment) -> None:
        seg.path.unlink(missing_ok=True)
        os.close(seg.fd)
