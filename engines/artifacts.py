"""Stamps, staging folders and the cache lock: what makes preparation safe to interrupt.

An artifact counts as done only when its folder holds a stamp whose key matches the
wanted version key. Folders that can move (models) are built in a staging folder beside
the target, stamped there and renamed into place, so an interrupted build never leaves a
folder that looks done. Virtualenvs cannot move (their scripts hold absolute paths), so
they are built in place and stamped last; an unstamped venv is verified or rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

STAMP_NAME = ".tollgate-ready"
STAGING_MARK = ".staging-"


def version_key(label: str, spec: Mapping[str, object]) -> str:
    """A readable, stable key: ``label`` plus a short hash of the full spec."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"{label}#{digest}"


def read_stamp(folder: Path) -> str | None:
    """The key stamped in ``folder``, or None if it has no readable stamp."""
    try:
        data = json.loads((folder / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key = data.get("key") if isinstance(data, dict) else None
    return key if isinstance(key, str) else None


def is_ready(folder: Path, key: str) -> bool:
    return read_stamp(folder) == key


def write_stamp(folder: Path, key: str) -> None:
    """Write the stamp atomically, so a reader sees either no stamp or a whole one."""
    body = json.dumps({"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    tmp = folder / f"{STAMP_NAME}.tmp"
    tmp.write_text(body + "\n", encoding="utf-8")
    os.replace(tmp, folder / STAMP_NAME)


def remove_stamp(folder: Path) -> None:
    (folder / STAMP_NAME).unlink(missing_ok=True)


def staging_dir(target: Path) -> Path:
    """A fresh, empty staging folder beside ``target`` (same filesystem, so rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_staging(target)
    staging = target.parent / f"{target.name}{STAGING_MARK}{os.getpid()}"
    staging.mkdir()
    return staging


def clear_staging(target: Path) -> None:
    """Remove staging folders that interrupted builds of ``target`` left behind."""
    if not target.parent.is_dir():
        return
    for leftover in target.parent.glob(f"{target.name}{STAGING_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def publish(staging: Path, target: Path, key: str) -> None:
    """Stamp ``staging`` and move it to ``target``, replacing any stale folder there.

    A crash between the two renames leaves no target, which reads as "not done".
    """
    write_stamp(staging, key)
    old: Path | None = None
    if target.exists():
        old = target.parent / f"{target.name}{STAGING_MARK}old-{os.getpid()}"
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache, so two prepares never build the same thing."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".prepare.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
