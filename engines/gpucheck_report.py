"""What the GPU check reports: the GPUs, the kernels vLLM chose, and the results table."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any


def kernels(log: Path) -> list[str]:
    """The linear kernels vLLM says it chose ("Using MarlinLinearKernel for ..."), in order.

    Marlin needs layer inputs divisible by 128: SmolLM2's 576-wide ones are not, so vLLM
    picks another W4A16 kernel for those; this records which.
    """
    if not log.exists():
        return []
    found = re.findall(r"Using (\w+Kernel)", log.read_text(errors="replace"))
    return list(dict.fromkeys(found))


def gpu_names() -> list[str]:
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def report(results: dict[str, Any]) -> str:
    used: dict[str, list[str]] = results["kernels"]
    lines = [
        f"# GPU check, {results['date']}",
        "",
        f"GPUs: {', '.join(results['gpus'])}; vLLM {results['vllm']}; host {results['host']}",
        "",
        *(f"- {name}: {', '.join(k) or 'no kernel logged'}" for name, k in used.items()),
        "",
        "## Conformance (pytest tests/real through the gateway)",
        "",
        "| tests | failures | errors | skipped |",
        "| --- | --- | --- | --- |",
        "| {tests} | {failures} | {errors} | {skipped} |".format(**results["conformance"]),
        "",
        "## Throughput: engine directly vs through the gateway (closed loop, "
        f"{results['concurrency']} in flight, {results['max_tokens']} tokens each)",
        "",
        "| tier | path | requests | failures | completion tok/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for leg in results["legs"]:
        lines.append(
            f"| {leg['tier']} | {leg['path']} | {leg['requests']} | {leg['failures']} | "
            f"{leg['tokens_per_s']:.0f} | {leg['p50_ms']:.1f} | {leg['p99_ms']:.1f} |"
        )
    for tier, ratio in results["gateway_vs_engine"].items():
        lines.append(f"\n{tier}: the gateway delivers {ratio:.1%} of the engine's tokens/s")
    return "\n".join(lines) + "\n"
