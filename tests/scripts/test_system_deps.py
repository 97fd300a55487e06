"""scripts/system-deps.sh: what `make run` and `make test` install, and what a non-root
user is told. Run with a PATH holding only the shell tools the script uses, so every
server and tool reads as missing, whatever this machine has installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

SCRIPT = ROOT / "scripts" / "system-deps.sh"
TOOLS = ("bash", "grep", "id", "date", "ldconfig")


@pytest.fixture
def bare_path() -> Iterator[str]:
    """A PATH with the script's own tools only (no make, redis-server, chromium...),
    in a folder the unprivileged user can read (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="tollgate-bare-path-") as folder:
        os.chmod(folder, 0o755)
        for tool in TOOLS:
            found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
            assert found, tool
            (Path(folder) / tool).symlink_to(found)
        # The checkout may sit in a folder only root can enter (a CI clone in mktemp -d).
        shutil.copy(SCRIPT, Path(folder) / SCRIPT.name)
        yield folder


def _run_as_nobody(mode: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": "/nonexistent"}
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    script = str(Path(path) / SCRIPT.name)
    return subprocess.run(
        [*argv, "bash", script, mode], env=env, capture_output=True, text=True, timeout=30
    )


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")


@needs_root
def test_a_normal_user_is_told_the_one_command_and_nothing_is_installed(bare_path: str) -> None:
    done = _run_as_nobody("test", bare_path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    command = next(line.strip() for line in lines if "apt-get install" in line)
    packages = command.split("--no-install-recommends", 1)[1].split()
    assert {"make", "redis-server", "chromium", "prometheus"} <= set(packages)
    assert command.startswith("sudo apt-get update && sudo apt-get install -y")
    assert "installing" not in done.stdout


@needs_root
def test_run_mode_asks_only_for_what_the_engines_need(bare_path: str) -> None:
    done = _run_as_nobody("run", bare_path)
    command = next(line for line in done.stderr.splitlines() if "apt-get install" in line)
    packages = set(command.split("--no-install-recommends", 1)[1].split())
    assert "make" in packages
    assert not packages & {"redis-server", "chromium", "postgresql", "prometheus"}


def test_nothing_to_do_when_everything_is_present() -> None:
    # `make test` ran this script before pytest, so here everything is installed.
    done = subprocess.run(["bash", str(SCRIPT), "test"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_an_unknown_mode_is_refused() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "all"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
