"""The GPU check's engines: the A100 profiles' flags, scaled to SmolLM2 on this GPU.

Used by :mod:`engines.gpucheck` (``python -m engines.gpucheck``): which artifact each
tier serves, how the production flags are scaled down, and the launcher's profile and
command for a CUDA build of vLLM.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from engines.cache import CacheLayout
from engines.cpu import Kernels
from engines.launcher import API_SERVER
from engines.prepare import Preparer
from engines.profiles import EngineSpec, Profile, load_profile
from engines.recipes import MODEL_ARTIFACTS, VenvRecipe
from engines.runner import ConsoleRunner

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
