"""Make torch report no AVX-512 or AMX, so vLLM loads its AVX2 kernel library.

On PYTHONPATH only when ``TOLLGATE_CPU_ISA=avx2`` (see engines/cpu.py). vLLM chooses
between ``_C``, ``_C_AVX512`` and ``_C_AVX2`` by asking ``torch.cpu``; answering "no"
here gives an AVX-512 machine the kernels an AVX2-only machine gets, so the AVX2 path
is tested for real on either. ATen and oneDNN are capped by their own variables.
"""

import os

if os.environ.get("TOLLGATE_CPU_ISA") == "avx2":
    try:
        import torch
    except ImportError:  # not the engine venv: nothing to emulate
        torch = None
    if torch is not None:
        _probes = (
            "_is_avx512_supported",
            "_is_avx512_vnni_supported",
            "_is_avx512_bf16_supported",
            "_is_amx_tile_supported",
            "_is_amx_fp16_supported",
        )

        def _no() -> bool:
            return False

        for _name in _probes:
            for _module in (torch.cpu, torch._C._cpu):
                if hasattr(_module, _name):
                    setattr(_module, _name, _no)
