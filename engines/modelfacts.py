"""Facts the memory planner needs and cannot fetch: model architectures and GPU memory.

Nothing here reaches the Hub. Each model is keyed as its profile names it (a Hub repo or
a local artifact) and carries the ``config.json`` fields that size its weights and KV
cache, copied by hand with their source. A model a profile uses but this table lacks
makes ``tollgate engines plan`` fail with a clear message: add it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer's shape, as its ``config.json`` gives it."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_position: int
    tied_embeddings: bool = False
    qkv_bias: bool = False

    @property
    def linear_params(self) -> int:
        """Weights of the attention and MLP projections: what AWQ/GPTQ quantize."""
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * q_out + 2 * self.hidden * kv_out + q_out * self.hidden
        mlp = 3 * self.hidden * self.intermediate  # gate, up, down
        return self.layers * (attention + mlp)

    @property
    def embedding_params(self) -> int:
        """Input embedding plus ``lm_head`` (one matrix when tied); kept in 16 bits."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def other_params(self) -> int:
        """Norms and q/k/v biases: replicated on every GPU, kept in 16 bits."""
        norms = (2 * self.layers + 1) * self.hidden
        bias = self.layers * (self.heads + 2 * self.kv_heads) * self.head_dim
        return norms + (bias if self.qkv_bias else 0)

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.other_params


@dataclass(frozen=True)
class WeightFormat:
    """How the linear weights are stored: 16-bit, or ``bits`` with per-group scales.

    AWQ (AutoAWQ GEMM) keeps a 16-bit scale and a ``bits``-wide zero point per group of
    ``group_size`` weights; symmetric schemes (compressed-tensors W4A16) have no zero.
    Embeddings, ``lm_head``, norms and biases stay in 16 bits either way.
    """

    bits: int = 16
    group_size: int = 0
    zero_point: bool = False

    @property
    def bits_per_weight(self) -> float:
        if not self.group_size:
            return float(self.bits)
        per_group = 16 + (self.bits if self.zero_point else 0)
        return self.bits + per_group / self.group_size


@dataclass(frozen=True)
class ModelFacts:
    """One model as served: its architecture, weight format and where the facts came from."""

    arch: Architecture
    weights: WeightFormat
    source: str


@dataclass(frozen=True)
class GpuModel:
    """A GPU as CUDA reports it: ``memory_gib`` is what vLLM calls ``total_gpu_memory``."""

    name: str
    memory_gib: float
    source: str


AWQ_G128 = WeightFormat(bits=4, group_size=128, zero_point=True)

LLAMA_31_70B = Architecture(
    layers=80,
    hidden=8192,
    intermediate=28672,
    heads=64,
    kv_heads=8,
    head_dim=128,
    vocab=128256,
    max_position=131072,
)
QWEN25_7B = Architecture(
    layers=28,
    hidden=3584,
    intermediate=18944,
    heads=28,
    kv_heads=4,
    head_dim=128,
    vocab=152064,
    max_position=32768,
    qkv_bias=True,
)
SMOLLM2_135M = Architecture(
    layers=30,
    hidden=576,
    intermediate=1536,
    heads=9,
    kv_heads=3,
    head_dim=64,
    vocab=49152,
    max_position=8192,
    tied_embeddings=True,
)
_SMOLLM2_SOURCE = "config.json of the folder `python -m engines prepare` builds from the GGUF"

MODELS: Mapping[str, ModelFacts] = MappingProxyType(
    {
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4": ModelFacts(
            LLAMA_31_70B,
            AWQ_G128,
            "config.json and quantization_config (AutoAWQ GEMM, 4 bit, group 128, zero "
            "point) of the Hub repo; 70.55 B parameters, as Meta publishes for Llama 3.1 70B",
        ),
        "Qwen/Qwen2.5-7B-Instruct-AWQ": ModelFacts(
            QWEN25_7B,
            AWQ_G128,
            "config.json and quantization_config (AWQ 4 bit, group 128, zero point) of the "
            "Hub repo; 7.62 B parameters as Qwen publishes; 5.19 GiB of safetensors",
        ),
        "smollm2-135m-instruct-bf16": ModelFacts(SMOLLM2_135M, WeightFormat(), _SMOLLM2_SOURCE),
        "smollm2-135m-instruct-awq-w4a16-g64": ModelFacts(
            SMOLLM2_135M,
            WeightFormat(bits=4, group_size=64),
            _SMOLLM2_SOURCE + "; W4A16 symmetric, group 64 (engines/recipes.py)",
        ),
        "smollm2-135m-instruct-awq-w4a8-g64": ModelFacts(
            SMOLLM2_135M,
            WeightFormat(bits=4, group_size=64),
            _SMOLLM2_SOURCE + "; int4 weights, group 64, int8 activations",
        ),
    }
)

_CUDA_SOURCE = (
    "total_gpu_memory in vLLM's start-up log / torch's 'total capacity' (varies by about "
    "0.2 GiB with driver and ECC)"
)
GPUS: Mapping[str, GpuModel] = MappingProxyType(
    {
        "a100-80gb": GpuModel("NVIDIA A100 80GB", 79.15, _CUDA_SOURCE),
        # Reported between 39.38 and 39.56 GiB: the smallest, to stay on the safe side.
        "a100-40gb": GpuModel("NVIDIA A100 40GB", 39.38, _CUDA_SOURCE),
    }
)
