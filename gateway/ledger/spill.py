"""Durable spill files: where ledger records wait while the database cannot take them.

One directory, shared safely by several gateway processes:

* ``open-<id>.jsonl``: the file this process appends to. It holds an exclusive
  ``flock`` for as long as the process lives, so another process can tell a live file
  from one left behind by a crash (the lock is free) and replay the latter.
* ``sealed-<ns>-<id>.jsonl``: a closed file waiting for replay. Whoever replays it
  takes its lock first, so two processes never replay one file at the same time.
* ``rejected-<id>.jsonl``: records the database refused outright, kept for a human.
* ``journal-<id>-<ns>.jsonl``: a process's write-ahead journal
  (:mod:`gateway.ledger.journal`), locked like an open file and replayed the same way
  when its process died.

Each line is one record as JSON. Appends are buffered and made durable by :meth:`sync`
(flush + ``fsync``) in batches; a line cut short by a crash is skipped on replay and
set aside. Replaying a file twice is harmless: inserts are idempotent by request id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from gateway.ledger.models import RECORD_FIELDS
from gateway.ledger.record import LedgerRecord

log = logging.getLogger("tollgate.ledger")

_DATETIME_FIELDS = ("started_at", "finished_at")
_OPTIONAL_FIELDS = ("route_score", "route_features")


def encode(rec: LedgerRecord) -> bytes:
    """One JSONL line (with its newline) for a record."""
    return orjson.dumps(
        {name: getattr(rec, name) for name in RECORD_FIELDS}, option=orjson.OPT_APPEND_NEWLINE
    )


def decode(line: bytes) -> LedgerRecord:
    """The record of one line; raises ValueError on a damaged line."""
    try:
        data: dict[str, Any] = orjson.loads(line)
        values = {name: data[name] for name in RECORD_FIELDS if name not in _OPTIONAL_FIELDS}
        for name in _DATETIME_FIELDS:
            values[name] = dt.datetime.fromisoformat(values[name])
        # Lines written before these fields existed lack them (journals survive upgrades).
        values["route_score"] = data.get("route_score")
        features = data.get("route_features")
        values["route_features"] = tuple(features) if features is not None else None
        return LedgerRecord(**values)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"damaged spill line: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(file: BinaryIO) -> bool:
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass(slots=True)
class ReplayFile:
    """A spill file claimed for replay (its lock is held until :meth:`SpillDir.finish`)."""

    path: Path
    file: BinaryIO
    damaged: list[bytes] = field(default_factory=list)

    def batches(self, size: int) -> Iterator[list[LedgerRecord]]:
        batch: list[LedgerRecord] = []
        for line in self.file:
            if not line.strip():
                continue
            try:
                batch.append(decode(line))
            except ValueError:
                self.damaged.append(line if line.endswith(b"\n") else line + b"\n")
                continue
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


class SpillDir:
    """The spill directory of one writer (see the module docstring for the layout)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._id = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._unsynced = False
        #: Bytes appended to this process's open file since it was last sealed.
        self.open_bytes = 0

    # ------------------------------------------------------------------ appending

    def open(self) -> None:
        """Create this process's open file (done off the request path, at start)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._file is None:
                self._open_locked()

    def _open_locked(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"open-{self._id}-{time.time_ns()}.jsonl"
        file = open(path, "ab")  # noqa: SIM115 - lives until sealed or closed
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        _fsync_dir(self.directory)
        self._file, self._path, self.open_bytes = file, path, 0

    def append(self, data: bytes) -> None:
        """Buffered append of whole lines; durable after the next :meth:`sync`."""
        with self._lock:
            if self._file is None:
                self._open_locked()
            assert self._file is not None
            self._file.write(data)
            self.open_bytes += len(data)
            self._unsynced = True

    def sync(self) -> None:
        """Make every appended line durable."""
        with self._lock:
            if self._file is None or not self._unsynced:
                return
            self._file.flush()
            fd = os.dup(self._file.fileno())
            self._unsynced = False
        # fsync outside the lock (on a duplicate descriptor, safe if the file is sealed
        # meanwhile): appends on the request path never wait for the disk.
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append_durably(self, records: Iterable[LedgerRecord]) -> int:
        data = b"".join(encode(r) for r in records)
        if not data:
            return 0
        self.append(data)
        self.sync()
        return data.count(b"\n")

    def seal(self) -> bool:
        """Close the open file for replay (if it holds anything) and start a new one."""
        with self._lock:
            if self._file is None or self.open_bytes == 0:
                return False
            self._close_locked(keep=True)
            self._open_locked()
            return True

    def close(self) -> None:
        """Seal what is left (or remove an empty file); later appends go to new files."""
        with self._lock:
            if self._file is not None:
                self._close_locked(keep=self.open_bytes > 0)

    def _close_locked(self, *, keep: bool) -> None:
        assert self._file is not None and self._path is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        if keep:
            self._path.rename(self.directory / f"sealed-{time.time_ns()}-{self._id}.jsonl")
        else:
            self._path.unlink(missing_ok=True)
        self._file.close()  # releases the lock
        _fsync_dir(self.directory)
        self._file, self._path, self.open_bytes, self._unsynced = None, None, 0, False

    def write_sealed_now(self, data: bytes) -> None:
        """Append after :meth:`close` (a request finishing during shutdown): own file, fsync'd."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"sealed-{time.time_ns()}-{self._id}-late.jsonl"
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.directory)

    # ------------------------------------------------------------------ replaying

    def pending(self, exclude: Collection[Path] = ()) -> list[Path]:
        """Files waiting for replay: sealed ones, and open files and journals (see
        :mod:`gateway.ledger.journal`) whose process may be gone (``claim`` tells)."""
        if not self.directory.is_dir():
            return []
        own = {self._path, *exclude}
        sealed = sorted(self.directory.glob("sealed-*.jsonl"))
        orphans = sorted(
            p
            for pattern in ("open-*.jsonl", "journal-*.jsonl")
            for p in self.directory.glob(pattern)
            if p not in own
        )
        return sealed + orphans

    def pending_bytes(self, exclude: Collection[Path] = ()) -> int:
        total = self.open_bytes
        for path in self.pending(exclude):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def claim(self, path: Path) -> ReplayFile | None:
        """Lock ``path`` for replay; None when another process holds it or it is gone."""
        try:
            file = open(path, "rb")  # noqa: SIM115 - handed to the ReplayFile
        except FileNotFoundError:
            return None
        if not _try_lock(file):
            file.close()
            return None
        try:
            same = os.fstat(file.fileno()).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if not same:  # replayed and removed by someone else between open and lock
            file.close()
            return None
        return ReplayFile(path, file)

    def finish(self, replay: ReplayFile) -> None:
        """The file's records are all in the database: set damaged lines aside, remove it."""
        if replay.damaged:
            log.warning(
                "ledger spill file had damaged lines; kept for inspection",
                extra={"file": replay.path.name, "lines": len(replay.damaged)},
            )
            self.reject(b"".join(replay.damaged))
        replay.path.unlink(missing_ok=True)
        replay.file.close()
        _fsync_dir(self.directory)

    def release(self, replay: ReplayFile) -> None:
        """Stop replaying (the database went away again); the file stays for later."""
        replay.file.close()

    def reject(self, data: bytes) -> None:
        """Keep lines the database refused (or that cannot be read) for a human to look at."""
        path = self.directory / f"rejected-{self._id}.jsonl"
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
