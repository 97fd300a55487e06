"""Check engine argv lists with vLLM's own argument parser, from the engine venv.

The gateway's environment has no vLLM, so ``scripts/check_vllm_args.py`` runs in the
engine venv (``python -m engines prepare`` builds it) and reports, for each argv, whether
vLLM 0.32's OpenAI server would accept it: unknown flags, bad values and choices, a
tool-call parser or quantization method vLLM does not know. Nothing is started and no
model is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from engines.cache import CacheLayout
from engines.errors import PrepareError
from engines.profiles import Profile
from engines.recipes import ENGINE_VENV_CPU, OFFLINE_ENV, SCRIPTS

SCRIPT = SCRIPTS / "check_vllm_args.py"


def engine_python(layout: CacheLayout | None = None) -> Path:
    """The engine venv's interpreter (it may not exist yet)."""
    return ENGINE_VENV_CPU.python(layout or CacheLayout.from_env())


def profile_argvs(profile: Profile) -> dict[str, list[str]]:
    """``{"PROFILE/ENGINE": argv}``: what each engine of ``profile`` is started with.

    A prepared artifact's folder stands in as ``/models/ARTIFACT``: the parser does not
    read it.
    """
    argvs: dict[str, list[str]] = {}
    for engine in profile.engines:
        model = engine.model.repo or f"/models/{engine.model.artifact}"
        argvs[f"{profile.name}/{engine.name}"] = engine.server_args(model)
    return argvs


def check_argvs(
    argvs: Mapping[str, Sequence[str]], *, python: Path | None = None, timeout: float = 300.0
) -> dict[str, str | None]:
    """For each named argv, None if vLLM accepts it, else vLLM's complaint."""
    interpreter = python or engine_python()
    if not interpreter.exists():
        raise PrepareError(
            f"no engine venv at {interpreter}: build it with `python -m engines prepare` "
            "(`make test` does this first)"
        )
    with tempfile.TemporaryDirectory(prefix="tollgate-args-") as tmp:
        source = Path(tmp) / "argvs.json"
        source.write_text(json.dumps({k: list(v) for k, v in argvs.items()}), encoding="utf-8")
        try:
            done = subprocess.run(
                [str(interpreter), str(SCRIPT), str(source)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", tmp), **OFFLINE_ENV},
                cwd=tmp,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PrepareError(f"{SCRIPT.name} did not finish in {timeout:.0f}s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise PrepareError(f"{SCRIPT.name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    results: dict[str, str | None] = json.loads(lines[-1])
    return results
