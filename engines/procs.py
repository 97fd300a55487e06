"""Detached engine processes: pid records, liveness and process-group shutdown.

An engine runs in its own session (so its process group id is its pid) and survives
the command that started it. Its pid file records the kernel's start time of the
process as well, so a recycled pid is never mistaken for the engine (and never killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

LOG_ROTATE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class PidRecord:
    """What ``up`` wrote about a running engine; the pid file's content."""

    engine: str
    pid: int
    start_ticks: int | None
    host: str
    port: int
    served_model_name: str
    log: str
    argv: tuple[str, ...]
    started_at: float

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        """The record in ``path``, or None when it is missing or unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["argv"] = tuple(data["argv"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses; fields after it don't.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("Z", "X")


def is_alive(record: PidRecord) -> bool:
    """Whether the recorded process still runs (and is the same process)."""
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _is_zombie(record.pid):
        return False
    ticks = start_ticks(record.pid)
    return record.start_ticks is None or ticks is None or ticks == record.start_ticks


def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached: its own session, output appended to ``log``.

    A log over ``LOG_ROTATE_BYTES`` is moved to ``<log>.1`` first, so restarts do not
    grow it without bound.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists() and log.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log, log.with_name(log.name + ".1"))
    with open(log, "ab") as sink:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sink.write(f"=== tollgate {stamp}: {' '.join(argv)}\n".encode())
        sink.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(
    record: PidRecord,
    grace: float,
    *,
    reap: Callable[[], object] = lambda: None,
    poll: float = 0.1,
) -> bool:
    """SIGTERM the engine's process group, then SIGKILL whatever is left after ``grace``.

    ``reap`` lets the caller collect its own child so it does not linger as a zombie.
    Returns True if SIGKILL was needed.
    """
    if not is_alive(record):
        return False
    try:
        own_group = os.getpgid(record.pid) == record.pid
    except ProcessLookupError:
        return False
    pgid = record.pid

    def send(sig: signal.Signals) -> None:
        try:
            if own_group:
                os.killpg(pgid, sig)
            else:
                os.kill(record.pid, sig)
        except ProcessLookupError:
            pass

    def gone() -> bool:
        reap()
        return not group_alive(pgid) if own_group else not is_alive(record)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if gone():
            return False
        time.sleep(poll)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gone():
        time.sleep(poll)
    return True
