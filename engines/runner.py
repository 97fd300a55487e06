"""Running preparation commands with visible progress and a log file per step.

Preparation shells out to other interpreters (the engine and quantization venvs), so
the seam is a command runner. ``ConsoleRunner`` streams output to a log and shows a
live line with the step, elapsed time and the command's latest output; tests pass a
fake that records the commands instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from engines.errors import PrepareError

TAIL_LINES = 25
HEARTBEAT_SECONDS = 15.0


class CommandRunner(Protocol):
    """Runs one command to completion or raises ``PrepareError``."""

    def run(
        self,
        argv: Sequence[str],
        *,
        label: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None: ...


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ("" if it is missing)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Heartbeat:
    """Periodic plain progress lines when the console is not a terminal (CI logs).

    A live progress bar only renders on a terminal; in a log, a long step would
    otherwise be silent for minutes.
    """

    def __init__(
        self, console: Console, every: float = HEARTBEAT_SECONDS, *, always: bool = False
    ) -> None:
        self._console = console
        self._every = every
        self._always = always
        self._started = time.monotonic()
        self._last = self._started

    def maybe(self, label: str, detail: str) -> None:
        now = time.monotonic()
        if (self._console.is_terminal and not self._always) or now - self._last < self._every:
            return
        self._last = now
        elapsed = now - self._started
        self._console.print(
            f"  … {escape(label)}: {elapsed:.0f}s  [dim]{escape(detail[-90:])}[/dim]"
        )


class ConsoleRunner:
    """Runs commands with a live status line; appends their output to a log file.

    ``live=False`` prints plain progress lines instead, for a command that runs beside
    another one (a console holds one live display at a time).
    """

    def __init__(self, console: Console, *, live: bool = True) -> None:
        self._console = console
        self._live = live

    def run(
        self,
        argv: Sequence[str],
        *,
        label: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(log, "a", encoding="utf-8") as sink:
            sink.write(f"\n$ {' '.join(argv)}\n")
            sink.flush()
            returncode = self._stream(argv, label, sink, env)
        took = time.monotonic() - started
        if returncode != 0:
            raise PrepareError(
                f"{label} failed (exit {returncode}) after {took:.0f}s; log: {log}\n{tail(log)}"
            )
        self._console.print(f"  [dim]{escape(label)} ({took:.1f}s)[/dim]")

    def _stream(
        self, argv: Sequence[str], label: str, sink: TextIO, env: Mapping[str, str] | None
    ) -> int:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise PrepareError(f"{label}: cannot run {argv[0]}: {exc}") from exc
        last = [""]

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                # Progress bars redraw with carriage returns: keep the latest state.
                latest = line.rstrip().rsplit("\r", 1)[-1].strip()
                if latest:
                    last[0] = latest

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        with contextlib.ExitStack() as stack:
            progress: Progress | None = None
            if self._live:
                columns = (
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    TimeElapsedColumn(),
                    TextColumn("[dim]{task.fields[last]}"),
                )
                progress = stack.enter_context(
                    Progress(*columns, console=self._console, transient=True)
                )
                task = progress.add_task(escape(label), last="")
            beat = Heartbeat(self._console, always=not self._live)
            try:
                while proc.poll() is None:
                    if progress is not None:
                        progress.update(task, last=escape(last[0][-90:]))
                    beat.maybe(label, last[0])
                    time.sleep(0.25)
            except BaseException:
                proc.terminate()
                proc.wait()
                raise
        reader.join(timeout=5)
        return proc.returncode
