"""The learned router's state file: a calibrated threshold and, after training, weights.

``tollgate routing calibrate`` and ``tollgate routing train`` write it
(``routing.state_file``, JSON) atomically: a temporary file in the same folder, fsync'd,
then renamed over the old one, so a replica never reads half a file. Every replica reads
it at start and then :class:`StateWatcher` looks at its ``stat()`` every
``routing.state_poll_s`` and reloads it when it changed: no file I/O on the request path,
and a new threshold reaches every replica within one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import orjson

from gateway.config import ConfigError

log = logging.getLogger("tollgate.routing")


@dataclass(frozen=True, slots=True)
class RoutingState:
    """What the CLI decided and the replicas apply."""

    threshold: float
    #: The large-tier share the threshold was chosen for (None: set by hand).
    target_large_share: float | None = None
    #: The share of the calibration sample at or above the threshold.
    measured_large_share: float | None = None
    #: Requests the threshold was computed from.
    sample: int = 0
    #: Trained weights (``learned.FEATURE_NAMES`` order); None keeps the shipped ones.
    weights: tuple[float, ...] | None = None
    trained_on: str | None = None
    written_at: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "threshold": self.threshold,
                "target_large_share": self.target_large_share,
                "measured_large_share": self.measured_large_share,
                "sample": self.sample,
                "weights": list(self.weights) if self.weights is not None else None,
                "trained_on": self.trained_on,
                "written_at": self.written_at or dt.datetime.now(dt.UTC).isoformat(),
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> RoutingState:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a JSON object")
        threshold = data.get("threshold")
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"{where}: threshold must be a number in [0, 1]")
        weights = data.get("weights")
        if weights is not None and (
            not isinstance(weights, list) or not all(_is_number(w) for w in weights)
        ):
            raise ConfigError(f"{where}: weights must be a list of numbers")
        share = data.get("target_large_share")
        measured = data.get("measured_large_share")
        return cls(
            threshold=float(threshold),
            target_large_share=float(share) if _is_number(share) else None,
            measured_large_share=float(measured) if _is_number(measured) else None,
            sample=int(data.get("sample") or 0),
            weights=tuple(float(w) for w in weights) if weights is not None else None,
            trained_on=str(data["trained_on"]) if data.get("trained_on") else None,
            written_at=str(data.get("written_at") or ""),
        )


def _is_number(v: object) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def read_state(path: Path) -> RoutingState | None:
    """The state in ``path``; None when there is no file. Raises ConfigError if damaged."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"routing.state_file {path}: cannot read it ({exc})") from None
    return RoutingState.from_json(raw, f"routing.state_file {path}")


def write_state(path: Path, state: RoutingState) -> None:
    """Replace ``path`` with ``state`` atomically (same-folder temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(state.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class StateWatcher:
    """Applies the state file at start, then again whenever it changes (polled ``stat``).

    A damaged file at start fails the start (like a bad config); a damaged file later is
    logged and the state in force is kept. A removed file keeps the state in force too.
    """

    def __init__(self, path: Path, apply: Callable[[RoutingState], None], poll_s: float) -> None:
        self.path = path
        self._apply = apply
        self.poll_s = poll_s
        self._seen: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        #: How many times a state was applied (for tests and the log).
        self.applied = 0

    def load_once(self) -> RoutingState | None:
        """Read and apply the file if it exists (at start: errors propagate)."""
        self._seen = _signature(self.path)
        state = read_state(self.path)
        if state is not None:
            self._apply(state)
            self.applied += 1
            log.info("routing state applied: threshold %.6f from %s", state.threshold, self.path)
        return state

    def check(self) -> None:
        """One poll: reload when the file's mtime, size or inode changed."""
        signature = _signature(self.path)
        if signature is None or signature == self._seen:
            return
        try:
            self.load_once()
        except ConfigError as exc:
            self._seen = signature  # do not log the same broken file every poll
            log.error("routing state not applied, keeping the current one: %s", exc)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
