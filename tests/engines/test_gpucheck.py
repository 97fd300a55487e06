"""The GPU check's pieces that run without a GPU: its argv, profile, load loop and report.

(vLLM's own parser checks the scaled argvs too: tests/engines/test_vllm_args.py.)
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from engines.cache import CacheLayout
from engines.cpu import CpuInfo
from engines.gpucheck import parse, run
from engines.gpucheck_engines import (
    CudaVllm,
    check_profile,
    models_profile,
    scaled_args,
    served_on_gpu,
)
from engines.gpucheck_report import kernels, report
from engines.gpucheck_runs import closed_loop
from engines.plan import arg
from engines.prepare import Preparer
from engines.profiles import load_profile
from engines.runner import ConsoleRunner
from engines.standin.process import StandinProcess


def test_scaled_args_keep_the_production_flags_that_fit_smollm2() -> None:
    prod = load_profile("a100-large", environ={}).engine("large")
    args = scaled_args(prod, share_gpu=True)
    for gone in ("--revision", "--quantization", "--tensor-parallel-size"):
        assert gone not in args
    assert "2123003760781134cfc31124aa6560a45b491fdf" not in args and "2" not in args
    assert arg(args, "--max-model-len") == "2048"
    assert arg(args, "--gpu-memory-utilization") == "0.40"
    assert arg(args, "--tool-call-parser") == "hermes"  # SmolLM2 has no <|python_tag|>
    for kept in ("--dtype", "--max-num-seqs", "--max-num-batched-tokens"):
        assert arg(args, kept) == arg(prod.args, kept)
    assert {"--enable-prefix-caching", "--enable-auto-tool-choice"} <= set(args)
    alone = scaled_args(prod, share_gpu=False)
    assert arg(alone, "--gpu-memory-utilization") == "0.92"


def test_check_profile_poses_as_the_local_pair() -> None:
    local = load_profile("local-cpu", environ={})
    one, two = check_profile(1), check_profile(2)
    for profile in (one, two):
        for engine in profile.engines:
            mine = local.engine(engine.name)
            assert (engine.port, engine.served_model_name) == (mine.port, mine.served_model_name)
    assert one.engine("small").model.artifact == "smollm2-135m-instruct-awq-w4a16-g64"
    assert one.engine("large").model.artifact == "smollm2-135m-instruct-bf16"
    assert {e.env["CUDA_VISIBLE_DEVICES"] for e in one.engines} == {"0"}
    assert [e.env["CUDA_VISIBLE_DEVICES"] for e in two.engines] == ["0", "1"]


def test_the_models_are_the_gpu_artifacts_whatever_the_cpu(tmp_path: Path) -> None:
    """On an AVX2-only host `engines prepare` picks W4A8 for the CPU; the GPU check
    still builds and serves W4A16 (vLLM's GPU Marlin kernel is what it tests)."""
    avx2 = CpuInfo(model="AVX2-only host", flags=frozenset({"avx2"}))
    preparer = Preparer(
        CacheLayout.at(tmp_path),
        ConsoleRunner(Console(quiet=True)),
        Console(quiet=True),
        cpu=avx2,
        kernels=served_on_gpu,
    )
    chosen = {c.engine: c.recipe.name for c in preparer.choose(models_profile())}
    assert chosen == {tier: check_profile(1).engine(tier).model.artifact for tier in chosen}
    assert chosen["small"] == "smollm2-135m-instruct-awq-w4a16-g64"
    assert all(not e.model.alternatives for e in models_profile().engines)


def test_the_command_needs_prepared_models(tmp_path: Path) -> None:
    layout = CacheLayout.at(tmp_path)
    engine = check_profile(1).engine("large")
    build = CudaVllm(Path("/opt/vllm/bin/python"), layout)
    with pytest.raises(SystemExit, match="engines prepare"):
        build(engine)
    folder = layout.models / "smollm2-135m-instruct-bf16-v1"
    folder.mkdir(parents=True)
    (folder / ".tollgate-ready").write_text("ok")
    argv = build(engine)
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(folder)


def test_closed_loop_counts_requests_and_tokens() -> None:
    with StandinProcess(model="m") as engine:
        ok, failed, tokens, latencies = asyncio.run(
            closed_loop(engine.base_url, "m", None, concurrency=2, seconds=0.5, max_tokens=8)
        )
    assert ok > 0 and failed == 0
    assert tokens == 8 * ok and len(latencies) == ok


def test_kernels_are_read_from_the_engine_log(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(
        "INFO Using MarlinLinearKernel for CompressedTensorsWNA16\n"
        "INFO Using ExllamaLinearKernel for CompressedTensorsWNA16\n"
        "INFO Using MarlinLinearKernel for CompressedTensorsWNA16\n"
    )
    assert kernels(log) == ["MarlinLinearKernel", "ExllamaLinearKernel"]
    assert kernels(tmp_path / "missing.log") == []


def test_report_is_a_markdown_table() -> None:
    leg = {"requests": 10, "failures": 0, "tokens_per_s": 1234.5, "p50_ms": 20.0, "p99_ms": 40.0}
    results: dict[str, Any] = {
        "date": "2026-12-03 13:00 UTC",
        "gpus": ["NVIDIA A100-SXM4-80GB, 81920 MiB"],
        "vllm": "0.32.0",
        "host": "gpu-1",
        "kernels": {"small": ["MarlinLinearKernel"], "large": []},
        "conformance": {"tests": 12, "failures": 0, "errors": 0, "skipped": 0},
        "concurrency": 32,
        "max_tokens": 128,
        "legs": [
            {**leg, "tier": "small", "path": "engine"},
            {**leg, "tier": "small", "path": "gateway", "tokens_per_s": 1200.0},
        ],
        "gateway_vs_engine": {"small": 1200.0 / 1234.5},
    }
    text = report(results)
    assert "| small | gateway | 10 | 0 | 1200 | 20.0 | 40.0 |" in text
    assert "| 12 | 0 | 0 | 0 |" in text
    assert "small: MarlinLinearKernel" in text and "large: no kernel logged" in text
    assert "97.2% of the engine's tokens/s" in text


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_without_a_gpu_it_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no NVIDIA GPU"):
        run(parse(["--out", str(tmp_path)]))
