"""How much the small tier's 4-bit model loses against bf16, measured on the served engines.

``python -m bench.awq_quality [--isa auto|avx2]`` starts the local profile's two real
vLLM-CPU engines (small: the quantized SmolLM2 this CPU gets, large: bf16) on free
ports, then asks both the same fixed questions and texts:

- **greedy answers**: 12 questions at temperature 0; how many answers match bf16's
  exactly, how many start with the same first 8 words, and the answers side by side;
- **perplexity**: 8 fixed passages scored with vLLM's ``prompt_logprobs``; the
  quantized model's perplexity against bf16's.

``--isa avx2`` emulates an AVX2-only CPU (``TOLLGATE_CPU_ISA``), so the W4A8 variant is
measured on an AVX-512 machine too. Each run updates its variant's entry in
``bench/results/awq_quality.json`` and rewrites ``awq_quality.md`` from all entries.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import markdown as md
from bench import results
from engines.cache import CacheLayout
from engines.cpu import ISA_ENV, CpuInfo
from engines.launcher import Launcher
from engines.prepare import Preparer
from engines.profiles import load_profile
from engines.runner import ConsoleRunner
from tests.support.net import free_port

QUESTIONS = (
    "What is the capital of France?",
    "What is 12 plus 7?",
    "Name the largest planet in our solar system.",
    "What colour is the sky on a clear day?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Translate 'thank you' into Spanish.",
    "How many days are there in a week?",
    "What gas do plants absorb from the air?",
    "Give one word that rhymes with 'cat'.",
    "What is the chemical symbol for gold?",
    "In which continent is Kenya?",
)

PASSAGES = (
    "The water cycle describes how water evaporates from the surface of the earth, rises "
    "into the atmosphere, cools and condenses into clouds, and falls again as rain or snow.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to produce glucose and oxygen. It takes place mainly in the leaves.",
    "The French Revolution began in 1789 and led to the end of the monarchy in France. It "
    "changed ideas about rights, citizenship and the role of government across Europe.",
    "A prime number is a whole number greater than one whose only divisors are one and "
    "itself. The first few primes are two, three, five, seven and eleven.",
    "Honeybees live in colonies with a single queen, thousands of workers and a few "
    "drones. Workers gather nectar and pollen and make honey to feed the colony.",
    "To bake simple bread, mix flour, water, salt and yeast, knead the dough, let it rise "
    "for an hour, shape it, let it rise again and bake it in a hot oven.",
    "Electric cars store energy in batteries and use electric motors instead of engines "
    "that burn fuel. They produce no exhaust and are cheaper to run per kilometre.",
    "Chess is played on a board of sixty-four squares. Each player starts with sixteen "
    "pieces, and the goal is to checkmate the opposing king.",
)


def greedy(client: httpx.Client, base: str, model: str) -> list[str]:
    answers = []
    for question in QUESTIONS:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 24,
            "temperature": 0,
        }
        reply = client.post(f"{base}/chat/completions", json=body).json()
        answers.append(str(reply["choices"][0]["message"]["content"]).strip())
    return answers


def perplexity(client: httpx.Client, base: str, model: str) -> float:
    """exp(mean negative log-likelihood) of the passages' tokens after the first."""
    total, count = 0.0, 0
    for text in PASSAGES:
        body = {"model": model, "prompt": text, "max_tokens": 1, "prompt_logprobs": 0}
        reply = client.post(f"{base}/completions", json=body).json()
        for position in reply["choices"][0]["prompt_logprobs"][1:]:
            # Each position maps token id -> {logprob, rank, ...}; with 0 extra ranks the
            # prompt's own token is the only entry.
            entry = next(iter(position.values()))
            total -= float(entry["logprob"])
            count += 1
    return math.exp(total / count)


def _first_words(text: str, n: int = 8) -> list[str]:
    return text.lower().split()[:n]


def measure(isa: str) -> dict[str, Any]:
    if isa != "auto":
        os.environ[ISA_ENV] = isa
    cpu = CpuInfo.read()
    profile = load_profile("local-cpu", ports={"small": free_port(), "large": free_port()})
    root = CacheLayout.from_env().root
    run = Path(tempfile.mkdtemp(prefix="awq-quality-"))
    layout = CacheLayout(root=root, run=run)
    launcher = Launcher(profile, layout)
    console = launcher._console
    prepared = Preparer(layout, ConsoleRunner(console), console).prepare(profile)
    small = next(c for c in prepared.choices if c.engine == "small")
    try:
        started = time.monotonic()
        launcher.up(timeout=900)
        took = time.monotonic() - started
        urls = {e.name: e.base_url for e in profile.engines}
        names = {e.name: e.served_model_name for e in profile.engines}
        with httpx.Client(timeout=120) as client:
            answers = {n: greedy(client, urls[n], names[n]) for n in ("small", "large")}
            ppl = {n: perplexity(client, urls[n], names[n]) for n in ("small", "large")}
    finally:
        launcher.down()
        launcher.close()
    pairs = list(zip(answers["small"], answers["large"], strict=True))
    return {
        "variant": small.recipe.name,
        "why": small.reason,
        "cpu": cpu.describe(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "engines_ready_s": round(took, 1),
        "exact_matches": sum(a == b for a, b in pairs),
        "same_start": sum(_first_words(a) == _first_words(b) for a, b in pairs),
        "questions": len(pairs),
        "perplexity": {n: round(v, 3) for n, v in ppl.items()},
        "answers": [
            {"question": q, "quantized": a, "bf16": b}
            for q, (a, b) in zip(QUESTIONS, pairs, strict=True)
        ],
    }


def write_markdown(runs: dict[str, dict[str, Any]], path: Path) -> None:
    lines = [
        "# The small tier's 4-bit SmolLM2 against bf16",
        "",
        "Written by `python -m bench awq-quality` (and `--isa avx2`). Both models are served",
        "by real vLLM-CPU engines from the local profile; the large tier (bf16) is the",
        "reference. Perplexity is over 8 fixed passages (vLLM `prompt_logprobs`); the",
        "greedy answers are to 12 fixed questions at temperature 0, 24 tokens at most.",
        "",
    ]
    rows = []
    for run in runs.values():
        ppl = run["perplexity"]
        ratio = ppl["small"] / ppl["large"]
        rows.append([
            run["variant"], run["cpu"],
            f"{ppl['small']:.2f} / {ppl['large']:.2f} (ratio {ratio:.3f})",
            f"{run['exact_matches']} of {run['questions']}",
            f"{run['same_start']} of {run['questions']}", run["date"],
        ])  # fmt: skip
    lines += md.table(
        ["small-tier model", "CPU", "perplexity (quantized / bf16)",
         "greedy answers equal to bf16", "same first 8 words", "run"],
        rows,
    )  # fmt: skip
    for run in runs.values():
        lines += ["", f"## {run['variant']}", "", f"Chosen because: {run['why']}.", ""]
        keys = ("question", "quantized", "bf16")
        lines += md.table(keys, [[a[k] for k in keys] for a in run["answers"]])
    results.write_markdown(path, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--isa", choices=("auto", "avx2"), default="auto")
    parser.add_argument("--out", type=Path, help="results directory (bench/results)")
    args = parser.parse_args(argv)
    out = results.out_dir(False, args.out) / "awq_quality.json"
    run = measure(args.isa)
    runs: dict[str, dict[str, Any]] = results.read_json(out) if out.exists() else {}
    runs[run["variant"]] = run
    results.write_json(out, runs)
    write_markdown(runs, out.with_suffix(".md"))
    ppl = run["perplexity"]
    print(
        f"{run['variant']}: perplexity {ppl['small']:.2f} vs bf16 {ppl['large']:.2f}; "
        f"{run['exact_matches']}/{run['questions']} greedy answers equal; "
        f"written to {out.with_suffix('.md')}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
