"""Where the engines package keeps its prepared artifacts, logs and run files.

Everything expensive (virtualenvs, model folders) lives under one cache root, keyed by
version in its folder name, so a second run finds it and starts in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "TOLLGATE_CACHE"
RUN_DIR_ENV = "TOLLGATE_RUN_DIR"


@dataclass(frozen=True)
class CacheLayout:
    """The folder layout under the cache root (``$TOLLGATE_CACHE``, ~/.cache/tollgate).

    ``run`` holds pid and log files of running engines. It can be moved on its own
    (``$TOLLGATE_RUN_DIR``) so a test session can run its own engines beside the
    developer's without sharing pid files, while still reusing the prepared artifacts.
    """

    root: Path
    run: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CacheLayout:
        env = os.environ if environ is None else environ
        root_text = env.get(CACHE_ENV) or str(Path.home() / ".cache" / "tollgate")
        root = Path(root_text).expanduser()
        run_text = env.get(RUN_DIR_ENV)
        run = Path(run_text).expanduser() if run_text else root / "run"
        return cls(root=root, run=run)

    @classmethod
    def at(cls, root: Path) -> CacheLayout:
        """A layout rooted at ``root`` with the default run folder inside it."""
        return cls(root=root, run=root / "run")

    @property
    def engine_venvs(self) -> Path:
        return self.root / "engine-venv"

    @property
    def quant_venvs(self) -> Path:
        return self.root / "quant-venv"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def logs(self) -> Path:
        return self.root / "logs"
