"""The machine a benchmark ran on, CPU pinning, and per-process CPU accounting (Linux)."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def describe(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """CPU model, cores, memory, kernel, Python and the versions of ``packages``."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem_gib = round(kb / 1024 / 1024, 1)
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": versions,
    }


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads it starts later inherit the mask)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads, in seconds (10 ms resolution)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and I/O wait, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / _TICK


def wait_for_quiet(threshold: float, max_wait: float, window: float = 2.0) -> float:
    """Wait until the machine's busy cores (in core units) drop below ``threshold`` over a
    ``window``, for at most ``max_wait`` seconds; return the last measured load."""
    deadline = time.monotonic() + max_wait
    while True:
        before = busy_seconds()
        time.sleep(window)
        load = (busy_seconds() - before) / window
        if load < threshold or time.monotonic() >= deadline:
            return load


def renice(pid: int, nice: int) -> bool:
    """Set the nice value of every thread of ``pid``; False when not permitted."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
    except PermissionError:
        return False
    return True


def descendants(pid: int) -> list[int]:
    """The live child processes of ``pid``, their children, and so on."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    kids = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
                    todo += [int(k) for k in kids]
                    out += [int(k) for k in kids]
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (a multi-worker server's total)."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def wait_idle(pids: list[int], below: float = 0.05, max_wait: float = 15.0) -> float:
    """Wait until ``pids`` together use under ``below`` of a core over 0.3 s (an
    overloaded server finishing its backlog); return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        before = sum(tree_cpu_seconds(p) for p in pids)
        time.sleep(0.3)
        if (sum(tree_cpu_seconds(p) for p in pids) - before) / 0.3 < below:
            break
    return time.monotonic() - start
