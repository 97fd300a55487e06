"""``python -m bench <scenario> [options]``: the one entry point of the benchmarks.

Each scenario is a module with ``main(argv) -> int | None``; this registry names them,
says what each answers and feeds the CLI's choices. ``python -m bench`` lists them;
``python -m bench <scenario> --help`` shows a scenario's own options.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """One benchmark: its module under ``bench`` and the question it answers."""

    module: str
    question: str
    results: str


SCENARIOS: dict[str, Scenario] = {
    "throughput": Scenario(
        "throughput",
        "Requests/s, added latency and CPU per request of one gateway worker, fully "
        "metered, beside the engine directly and vllm-router (issue 12)",
        "throughput.{md,json,png}",
    ),
    "overload": Scenario(
        "overload", "Goodput and refusal latency of one worker at 1x-4x its capacity, "
        "with the overload control on (issue 13)", "overload.{md,json,png}",
    ),
    "overhead": Scenario(
        "overhead",
        "Latency the gateway adds over the engine directly at 300/s, per option",
        "overhead.{md,json,png}",
    ),
    "quotas": Scenario(
        "quota_bench", "Cost of the quota check (local, Redis), alone and end to end",
        "quotas.{md,json,png}",
    ),
    "ledger": Scenario(
        "ledger_bench", "Cost of ledger writes (SQLite, PostgreSQL), throughput, spill",
        "ledger.{md,json}",
    ),
    "tracing": Scenario(
        "tracing_bench", "CPU per request of OpenTelemetry tracing, off (the default) vs on",
        "tracing.{md,json}",
    ),
    "routing": Scenario(
        "routing_bench", "CPU cost of one routing decision per policy", "routing.{md,json,png}"
    ),
    "prefix-routing": Scenario(
        "prefix_routing", "p2c vs rendezvous affinity vs the scored balancer on two real "
        "vLLM-CPU replicas with prefix caching (issue 14)", "prefix_routing.{md,json,png}",
    ),
    "saturation": Scenario(
        "saturation", "Static rules vs load-aware routing with the large tier saturated",
        "saturation.{json,png}, a section of routing.md",
    ),
    "soak": Scenario(
        "soak", "Memory of the gateway under a long mixed load (closed loop, SQLite); "
        "`soak --metered`: the metered soak below", "soak.{md,json,png}"
    ),
    "soak-metered": Scenario(
        "soak_metered", "One fully metered worker at 80% of its capacity, open loop, for "
        "30 min: RSS slope, p99 per minute, ledger == answered, Redis reconciles (issue 13)",
        "soak_metered.{md,json,png}",
    ),
    "upstream-clients": Scenario(
        "upstream_clients", "Which HTTP client the gateway should use to reach engines",
        "upstream_clients.{md,json}",
    ),
    "fuzz": Scenario(
        "fuzz", "Does any input reach a 5xx, a stack trace or an undocumented answer?",
        "fuzz.{md,json}",
    ),
    "local-prices": Scenario(
        "local_prices", "Throughput of the real local engines, and the prices derived from it",
        "local_prices.{md,json}, configs/measured/local-cpu/, configs/prices.yaml",
    ),
    "calibration": Scenario(
        "calibration", "The learned router calibrated and retrained on feedback "
        "(synthetic labelled traffic; issue 14)", "calibration.{md,png}",
    ),
    "awq-quality": Scenario(
        "awq_quality", "Quality of the small tier's 4-bit model against bf16 (real engines)",
        "awq_quality.{md,json}",
    ),
}  # fmt: skip


def usage() -> str:
    width = max(map(len, SCENARIOS))
    lines = ["usage: python -m bench <scenario> [options]   (--help after a scenario)", ""]
    lines += ["scenarios:"]
    for name, s in SCENARIOS.items():
        lines.append(f"  {name:<{width}}  {s.question}")
        lines.append(f"  {'':<{width}}  → bench/results/{s.results}")
    lines += ["", "--quick runs write to bench/results/quick/; see bench/README.md"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "list"}:
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    scenario = SCENARIOS.get(name) or SCENARIOS.get(name.replace("_", "-"))
    if scenario is None:
        print(f"unknown scenario {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{scenario.module}")
    code = module.main(rest)
    return int(code or 0)
