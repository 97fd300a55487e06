"""Report which vLLM CPU kernel library loads here and which operators exist.

Run by the engine venv's interpreter: ``python probe_kernels.py --out FILE OP [OP ...]``
where each OP is ``namespace.name`` (``_C.cpu_gemm_wna16``, ``aten._dyn_quant_matmul_4bit``).
Writes ``{"library": ..., "ops": [the OPs that exist]}`` to FILE. The library is loaded
exactly as the engine loads it (``current_platform.import_kernels()``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("ops", nargs="*")
    args = parser.parse_args(argv)

    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    library = _loaded_kernel_library()
    found: list[str] = []
    for op in args.ops:
        namespace, _, name = op.partition(".")
        if hasattr(getattr(torch.ops, namespace), name):
            found.append(op)
    report = {"library": library, "ops": found, "isa": torch.backends.cpu.get_cpu_capability()}
    print(json.dumps(report), flush=True)
    args.out.write_text(json.dumps(report), encoding="utf-8")
    return 0


def _loaded_kernel_library() -> str:
    """The vLLM kernel library mapped into this process (``_C``, ``_C_AVX2``, ...)."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    names = {Path(line.split()[-1]).name for line in maps.splitlines() if "/vllm/_C" in line}
    found = sorted(n.split(".")[0] for n in names)
    return ",".join(found) or "none"


if __name__ == "__main__":
    sys.exit(main())
