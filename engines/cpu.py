"""What this CPU can run: its instruction sets, and which kernels the engine's vLLM build has.

vLLM's CPU wheel ships three kernel libraries and loads one at start, by the CPU's
features: ``_C`` (AVX-512 with BF16), ``_C_AVX512`` (AVX-512) and ``_C_AVX2``. They do
not hold the same kernels: the W4A16 GEMM (``cpu_gemm_wna16``) is missing from the AVX2
one, so an AWQ W4A16 engine starts there and dies on its first request. Reading flags
is not enough to know that, so :class:`KernelProbe` asks the engine venv itself which
library it loads and which operators exist, and caches the answer.

``TOLLGATE_CPU_ISA=avx2`` makes an AVX-512 machine behave as an AVX2-only one for the
engines (torch reports no AVX-512, so vLLM loads ``_C_AVX2``; ATen and oneDNN are
capped at AVX2), which lets the AVX2 path be tested on either kind of machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engines.errors import PrepareError
from engines.runner import CommandRunner

ISA_ENV = "TOLLGATE_CPU_ISA"
ISA_CHOICES = ("auto", "avx2")
EMULATION_DIR = Path(__file__).parent / "scripts" / "isa_emulation"
PROBE_SCRIPT = Path(__file__).parent / "scripts" / "probe_kernels.py"
_AVX512_PREFIXES = ("avx512", "amx")
#: Variables of the caller's Python that must not leak into another venv's interpreter.
_FOREIGN = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and feature flags, as the engines will see them."""

    model: str
    flags: frozenset[str]
    emulated: str | None = None

    @classmethod
    def read(
        cls, cpuinfo: Path = Path("/proc/cpuinfo"), environ: Mapping[str, str] | None = None
    ) -> CpuInfo:
        env = os.environ if environ is None else environ
        model, flags = "unknown CPU", frozenset[str]()
        try:
            text = cpuinfo.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
        info = cls(model=model, flags=flags)
        return info.emulating(emulated_isa(env))

    def emulating(self, isa: str | None) -> CpuInfo:
        """This CPU as the engines see it under ``TOLLGATE_CPU_ISA=isa`` (None: as is)."""
        if isa is None:
            return self
        kept = frozenset(f for f in self.flags if not f.startswith(_AVX512_PREFIXES))
        return CpuInfo(model=self.model, flags=kept, emulated=isa)

    @property
    def isa(self) -> str:
        """The vLLM CPU kernel family this CPU gets: avx512_bf16, avx512, avx2 or other."""
        if "avx512f" in self.flags:
            return "avx512_bf16" if "avx512_bf16" in self.flags else "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "other"

    def describe(self) -> str:
        avx512 = sorted(f for f in self.flags if f.startswith("avx512"))
        extra = f" (emulating {self.emulated} with TOLLGATE_CPU_ISA)" if self.emulated else ""
        has = ", ".join(avx512[:4]) + ("…" if len(avx512) > 4 else "") if avx512 else "no AVX-512"
        return f"{self.model}: {self.isa} [{has}]{extra}"


def emulated_isa(environ: Mapping[str, str] | None = None) -> str | None:
    """The ISA to emulate from ``TOLLGATE_CPU_ISA`` (None for auto); rejects unknown values."""
    env = os.environ if environ is None else environ
    value = (env.get(ISA_ENV) or "auto").strip().lower()
    if value not in ISA_CHOICES:
        raise PrepareError(f"{ISA_ENV}={value!r}: expected one of {', '.join(ISA_CHOICES)}")
    return None if value == "auto" else value


def engine_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for engine and probe processes that makes them honour the emulation.

    Empty unless ``TOLLGATE_CPU_ISA`` asks for one. ``sitecustomize`` in
    ``scripts/isa_emulation`` makes torch report no AVX-512/AMX before vLLM picks its
    kernel library; ATen and oneDNN are capped at AVX2 so their own kernels match.
    """
    isa = emulated_isa(environ)
    if isa is None:
        return {}
    return {
        ISA_ENV: isa,
        "PYTHONPATH": str(EMULATION_DIR),
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "DNNL_MAX_CPU_ISA": "AVX2",
    }


@dataclass(frozen=True)
class Kernels:
    """What the engine venv's vLLM loads on this CPU: its kernel library and operators."""

    library: str
    ops: frozenset[str]

    def missing(self, wanted: Iterable[str]) -> list[str]:
        return [op for op in wanted if op not in self.ops]


class KernelProbe:
    """Asks an engine venv which kernels it has here; caches the answer per CPU and venv."""

    def __init__(
        self,
        cache_dir: Path,
        runner: CommandRunner,
        log: Path,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._dir = cache_dir
        self._runner = runner
        self._log = log
        self._environ = dict(os.environ if environ is None else environ)

    def kernels(self, python: Path, venv_key: str, cpu: CpuInfo, wanted: Iterable[str]) -> Kernels:
        names = sorted(set(wanted))
        spec = {"venv": venv_key, "flags": sorted(cpu.flags), "emulated": cpu.emulated}
        digest = hashlib.sha256(json.dumps({**spec, "ops": names}).encode()).hexdigest()[:16]
        path = self._dir / f"kernels-{digest}.json"
        cached = _read(path)
        if cached is not None:
            return cached
        out = self._dir / f"kernels-{digest}.json.tmp"
        self._dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in self._environ.items() if k not in _FOREIGN}
        env.update(engine_env(self._environ))
        argv = [str(python), str(PROBE_SCRIPT), "--out", str(out), *names]
        self._runner.run(argv, label="probe the engine's CPU kernels", log=self._log, env=env)
        found = _read(out)
        if found is None:
            raise PrepareError(f"the kernel probe wrote no answer; see {self._log}")
        os.replace(out, path)
        return found


def _read(path: Path) -> Kernels | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Kernels(library=str(data["library"]), ops=frozenset(map(str, data["ops"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None
