"""The lock files pin what pyproject.toml asks for, and agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ \\]+)", re.MULTILINE)


def pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text()
    assert "--hash=sha256:" in text  # installs check hashes
    return {m.group(1).lower().replace("_", "-"): m.group(2) for m in PIN.finditer(text)}


def requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_dependency_is_pinned_and_both_locks_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, full = pins("requirements-runtime.lock"), pins("requirements.lock")
    assert requirement_names(project["dependencies"]) <= set(runtime)
    assert requirement_names(project["optional-dependencies"]["dev"]) <= set(full)
    assert set(runtime) <= set(full)
    assert {k: full[k] for k in runtime} == runtime
