"""Where results go and how they are written: one layout for every scenario.

``bench/results/<scenario>.md`` (the report), ``.json`` (every figure, to redraw or
compare) and ``.png`` (the plot); a ``--quick`` run writes the same files under
``bench/results/quick/`` so it never overwrites a full run. ``--out DIR`` overrides both.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def add_arguments(parser: argparse.ArgumentParser, quick_help: str = "a short smoke run") -> None:
    """The two options every scenario has: ``--quick`` and ``--out``."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--out",
        type=Path,
        help=f"results directory (default {RESULTS.relative_to(ROOT)}; with --quick, its quick/)",
    )


def out_dir(quick: bool, out: Path | None = None) -> Path:
    """The results directory for a run (the writers below create it)."""
    return out or (RESULTS / "quick" if quick else RESULTS)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(
            data,
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        )
        + b"\n"
    )


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def write_markdown(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


def git_state() -> dict[str, Any]:
    """The commit measured, and which gateway files differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = [ln[3:] for ln in git("status", "--porcelain", "--", "gateway").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "gateway_uncommitted": changed}


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
