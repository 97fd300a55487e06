"""Serve one engine of a Tollgate profile with vLLM (entrypoint of Dockerfile.gpu's engine).

``engine-entrypoint.py --profile a100-large --engine large [extra vLLM args...]`` reads
``/opt/tollgate/profiles/a100-large.yaml`` and replaces itself with vLLM's OpenAI server
started with exactly the profile's arguments (the same ones docker-compose.yml spells
out). Only the standard library and PyYAML are used: both are in the vLLM image.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

PROFILES = Path(os.environ.get("TOLLGATE_PROFILES", "/opt/tollgate/profiles"))


def engine_argv(profile: dict[str, Any], name: str) -> tuple[list[str], dict[str, str]]:
    """vLLM's argv and extra environment for engine ``name`` of ``profile``."""
    for engine in profile["engines"]:
        if engine["name"] == name:
            model = engine["model"].get("repo") or engine["model"]["artifact"]
            argv = [
                "--model", model,
                "--served-model-name", engine["served_model_name"],
                "--host", engine.get("host", "0.0.0.0"),
                "--port", str(engine["port"]),
                *[str(a) for a in engine.get("args", [])],
            ]  # fmt: skip
            return argv, {k: str(v) for k, v in (engine.get("env") or {}).items()}
    known = ", ".join(e["name"] for e in profile["engines"])
    raise SystemExit(f"profile has no engine {name!r} (has: {known})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--engine", required=True)
    args, extra = parser.parse_known_args(argv)
    path = PROFILES / f"{args.profile}.yaml"
    profile = yaml.safe_load(path.read_text(encoding="utf-8"))
    vllm_args, env = engine_argv(profile, args.engine)
    os.environ.update(env)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *vllm_args, *extra]
    print("exec:", " ".join(command), flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
