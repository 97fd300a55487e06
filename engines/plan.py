"""How an engine profile uses GPU memory: weights, KV cache, and how many requests fit.

``plan_profile(profile)`` sizes each engine the way vLLM does at start-up, per GPU:

* **weights**: quantized linear layers at their bits per weight (scales and zero points
  included), embeddings and ``lm_head`` in 16 bits; tensor parallelism splits both
  (vLLM's vocab-parallel embedding shards the vocabulary), norms and biases are copied.
* **budget**: ``--gpu-memory-utilization`` x the GPU's memory, all that vLLM will use.
* **reserve**: what vLLM holds besides weights and KV cache: memory outside PyTorch
  (cuBLAS, NCCL), CUDA graphs (unless ``--enforce-eager``), and the activation peak of
  one ``--max-num-batched-tokens`` step plus the sampler's fp32 logits. An estimate on
  the safe side; vLLM logs its own measure at start ("Available KV cache memory").
* **KV cache**: budget - weights - reserve, in blocks of 16 tokens of
  ``layers x 2 (K, V) x KV heads on this GPU x head_dim x bytes`` each.
* **max concurrency**: KV capacity / ``--max-model-len``, as vLLM reports it.

An engine does not fit when its weights and reserve leave no KV cache, or the KV cache
cannot hold one ``--max-model-len`` sequence (vLLM then refuses to start), or its tensor
parallel degree does not divide the attention heads. On a CPU engine the KV cache is
``VLLM_CPU_KVCACHE_SPACE`` GiB and the weights sit in host memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engines.errors import PlanError
from engines.modelfacts import GPUS, MODELS, ModelFacts
from engines.profiles import EngineSpec, Profile

GIB = 1024**3
KIB = 1024
BLOCK_TOKENS = 16
NON_TORCH_GIB = 1.0
CUDA_GRAPHS_GIB = 1.0
#: vLLM's defaults when the profile does not set them.
DEFAULTS = {
    "--gpu-memory-utilization": "0.9",
    "--max-num-batched-tokens": "8192",
    "--max-num-seqs": "256",
    "--dtype": "auto",
    "--kv-cache-dtype": "auto",
}
DTYPE_BYTES = {"auto": 2, "half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}


@dataclass(frozen=True)
class EnginePlan:
    """One engine's memory budget per GPU (bytes) and what it can serve."""

    engine: str
    model: str
    device: str
    tensor_parallel: int
    weights: int
    kv_per_token: int
    budget: int
    reserve: int
    kv_cache: int
    kv_tokens: int
    max_model_len: int
    problems: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def max_concurrency(self) -> float:
        return self.kv_tokens / self.max_model_len


def arg(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in an argv (``--flag V`` or ``--flag=V``), else its default."""
    for i, item in enumerate(args):
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
        if item == flag and i + 1 < len(args):
            return args[i + 1]
    return DEFAULTS.get(flag)


def model_facts(engine: EngineSpec) -> tuple[str, ModelFacts]:
    name = engine.model.repo or engine.model.artifact or ""
    facts = MODELS.get(name)
    if facts is None:
        known = ", ".join(sorted(MODELS))
        raise PlanError(f"{engine.name}: no architecture facts for {name!r} (known: {known})")
    return name, facts


def weights_per_gpu(facts: ModelFacts, tp: int) -> int:
    arch, fmt = facts.arch, facts.weights
    sharded = arch.linear_params * fmt.bits_per_weight / 8 + arch.embedding_params * 2
    return round(sharded / tp + arch.other_params * 2)


def kv_per_token_per_gpu(facts: ModelFacts, tp: int, kv_bytes: int) -> int:
    arch = facts.arch
    # With more GPUs than KV heads, vLLM copies each head: at least one head per GPU.
    heads = max(1, arch.kv_heads // tp)
    return arch.layers * 2 * heads * arch.head_dim * kv_bytes


def reserve_per_gpu(engine: EngineSpec, facts: ModelFacts, tp: int, act_bytes: int) -> int:
    arch, args = facts.arch, engine.args
    tokens = int(arg(args, "--max-num-batched-tokens") or 0)
    seqs = int(arg(args, "--max-num-seqs") or 0)
    activations = tokens * (2 * arch.intermediate // tp + 4 * arch.hidden) * act_bytes
    logits = seqs * arch.vocab * 4 * 2  # fp32 logits and probabilities in the sampler
    graphs = 0.0 if "--enforce-eager" in args else CUDA_GRAPHS_GIB
    return round((NON_TORCH_GIB + graphs) * GIB) + activations + logits


def plan_engine(engine: EngineSpec) -> EnginePlan:
    """Size one engine; raises PlanError when a fact is missing."""
    name, facts = model_facts(engine)
    arch, args = facts.arch, engine.args
    tp = engine.tensor_parallel_size
    dtype = arg(args, "--dtype") or "auto"
    kv_dtype = arg(args, "--kv-cache-dtype") or "auto"
    act_bytes = DTYPE_BYTES.get(dtype, 2)
    kv_bytes = 1 if kv_dtype.startswith("fp8") else act_bytes
    max_len = int(arg(args, "--max-model-len") or arch.max_position)
    weights = weights_per_gpu(facts, tp)
    kv_per_token = kv_per_token_per_gpu(facts, tp, kv_bytes)
    problems: list[str] = []
    if engine.gpus:
        device, budget, reserve = _gpu_budget(engine, facts, tp, act_bytes)
        free = budget - weights - reserve
    else:
        device, budget, reserve = "cpu", _cpu_kv_space(engine), 0
        free = budget
    kv_tokens = max(0, free) // (kv_per_token * BLOCK_TOKENS) * BLOCK_TOKENS
    if arch.heads % tp or (arch.kv_heads % tp and tp % arch.kv_heads):
        problems.append(
            f"--tensor-parallel-size {tp} does not divide the model's {arch.heads} attention "
            f"heads and {arch.kv_heads} KV heads"
        )
    if max_len > arch.max_position:
        problems.append(f"--max-model-len {max_len} is above the model's {arch.max_position}")
    if free <= 0:
        problems.append(
            f"weights {weights / GIB:.1f} GiB + reserve {reserve / GIB:.1f} GiB leave no KV "
            f"cache in the {budget / GIB:.1f} GiB budget per GPU"
        )
    elif kv_tokens < max_len:
        problems.append(
            f"the KV cache holds {kv_tokens} tokens per GPU, less than one --max-model-len "
            f"{max_len} sequence: vLLM refuses to start"
        )
    return EnginePlan(
        engine=engine.name,
        model=name,
        device=device,
        tensor_parallel=tp,
        weights=weights,
        kv_per_token=kv_per_token,
        budget=budget,
        reserve=reserve,
        kv_cache=max(0, free),
        kv_tokens=kv_tokens,
        max_model_len=max_len,
        problems=tuple(problems),
    )


def plan_profile(profile: Profile) -> list[EnginePlan]:
    return [plan_engine(engine) for engine in profile.engines]


def _gpu_budget(
    engine: EngineSpec, facts: ModelFacts, tp: int, act_bytes: int
) -> tuple[str, int, int]:
    if engine.gpu is None:
        raise PlanError(f"{engine.name}: set `gpu:` in the profile (known: {', '.join(GPUS)})")
    gpu = GPUS.get(engine.gpu)
    if gpu is None:
        raise PlanError(f"{engine.name}: unknown gpu {engine.gpu!r} (known: {', '.join(GPUS)})")
    utilization = float(arg(engine.args, "--gpu-memory-utilization") or 0.9)
    budget = round(utilization * gpu.memory_gib * GIB)
    return engine.gpu, budget, reserve_per_gpu(engine, facts, tp, act_bytes)


def _cpu_kv_space(engine: EngineSpec) -> int:
    space = engine.env.get("VLLM_CPU_KVCACHE_SPACE")
    if not space:
        raise PlanError(f"{engine.name}: a CPU engine needs VLLM_CPU_KVCACHE_SPACE (GiB) in env")
    return round(float(space) * GIB)


def table_rows(plans: Sequence[EnginePlan]) -> list[tuple[str, list[str]]]:
    """``(label, one cell per engine)`` rows for printing a plan."""

    def row(label: str, cell: Callable[[EnginePlan], str]) -> tuple[str, list[str]]:
        return label, [cell(p) for p in plans]

    return [
        row("model", lambda p: p.model),
        row("devices", lambda p: f"{p.tensor_parallel} x {p.device}"),
        row("weights per GPU", lambda p: f"{p.weights / GIB:.2f} GiB"),
        row("KV per token per GPU", lambda p: f"{p.kv_per_token / KIB:.1f} KiB"),
        row("memory budget per GPU", lambda p: f"{p.budget / GIB:.2f} GiB"),
        row("reserve (activations, graphs)", lambda p: f"{p.reserve / GIB:.2f} GiB"),
        row("KV cache per GPU", lambda p: f"{p.kv_cache / GIB:.2f} GiB"),
        row("KV capacity", lambda p: f"{p.kv_tokens:,} tokens"),
        row("max concurrency", lambda p: f"{p.max_concurrency:.2f} x {p.max_model_len:,} tokens"),
        row("fits", lambda p: "yes" if p.fits else "NO"),
    ]
