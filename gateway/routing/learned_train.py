"""Train the learned router's weights on locally generated requests.

    python -m gateway.routing.learned_train [--samples 1500] [--seed 7] [--share 0.3]

Writes ``gateway/routing/learned_weights.py``. The data is synthetic: requests are
built from templates in five categories, and each gets a hidden "difficulty" (category,
output length, tools/JSON, prompt length, Gaussian noise); the label "large needed" is
difficulty > 0.5. The model therefore learns to imitate this rule, nothing more. To
train on real data, replace :func:`generate` with rows of (Features, label) from the
ledger plus a quality signal, and keep the rest.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from pathlib import Path

from gateway.routing.features import Features
from gateway.routing.learned import FEATURE_NAMES, featurize, probability

_TEMPLATES: dict[str, tuple[float, list[str]]] = {
    "simple": (-2.0, [
        "hello! how are you today?", "translate 'good morning' into French",
        "what is the capital of Peru?", "summarize this paragraph: {filler}",
        "give me a synonym for happy", "thanks, that helps", "define entropy in one line",
        "list three fruits that are red", "rewrite this more politely: {filler}",
    ]),
    "creative": (-0.2, [
        "write a short poem about the sea", "write a story about a lost robot",
        "draft an essay on city gardens", "write dialogue between two cats",
    ]),
    "code": (1.0, [
        "implement a function in python that parses {thing}",
        "debug this code, it raises an exception: ```{code}```",
        "refactor this class to remove duplication ```{code}```",
        "write an sql query that finds {thing}", "explain this regex and fix the bug",
        "implement the algorithm for {thing} with tests",
    ]),
    "math": (1.4, [
        "prove that the sum of two even numbers is even",
        "solve the equation 3x^2 - 2x = 7 step by step",
        "calculate the integral of x*sin(x)", "what is the probability of {thing}",
        "prove the lemma about matrix rank used in {thing}",
    ]),
    "reasoning": (1.1, [
        "compare the trade-offs of {thing} and {thing}",
        "design an architecture for {thing}, explain why step by step",
        "analyze the pros and cons of {thing}", "evaluate this plan: {filler}",
    ]),
}  # fmt: skip
#: Why the shipped model is trained on synthetic data (checked 2026-12-03): routellm 0.2.0,
#: the one router package on PyPI, ships no data; it fetches lmsys's arena preference set
#: from the Hugging Face Hub at run time, which our machines cannot reach.
DATA_NOTE = "no public preference data set ships in a package (routellm: none)"
_THINGS = ["dates", "log files", "a rate limiter", "graphs", "bank transfers", "caches"]
_FILLER = "the quick brown fox jumps over the lazy dog and then runs far away "
_CODE = "def f(x):\n    return g(x) + 1\n"


def generate(n: int, rng: random.Random) -> list[tuple[Features, int]]:
    rows: list[tuple[Features, int]] = []
    cats = list(_TEMPLATES)
    for _ in range(n):
        cat = rng.choice(cats)
        base, templates = _TEMPLATES[cat]
        text = rng.choice(templates).format(
            thing=rng.choice(_THINGS),
            filler=_FILLER * rng.randint(1, 20),
            code=_CODE * rng.randint(1, 6),
        )
        prompt_tokens = len(text.split()) + rng.randint(5, 60) * rng.choice([1, 1, 1, 10])
        max_tokens = rng.choice([0, 64, 128, 256, 512, 1024, 2048])
        messages = rng.choice([1, 1, 2, 3, 5, 9, 17])
        tools = rng.random() < 0.1
        json_mode = rng.random() < 0.1
        difficulty = (
            base
            + 0.8 * math.log2(max(max_tokens, 128) / 256)
            + 0.6 * tools
            + 0.5 * json_mode
            + 0.3 * math.log2(max(prompt_tokens, 50) / 200)
            + rng.gauss(0, 0.7)
        )
        f = Features(prompt_tokens, max_tokens, messages, tools, json_mode, text)
        rows.append((f, int(difficulty > 0.5)))
    return rows


def train(
    rows: list[tuple[Features, int]], epochs: int = 300, lr: float = 0.8, l2: float = 1e-3
) -> list[float]:
    return fit([featurize(f) for f, _ in rows], [y for _, y in rows], epochs, lr, l2)


def fit(
    xs: Sequence[Sequence[float]],
    ys: Sequence[float],
    epochs: int = 300,
    lr: float = 0.8,
    l2: float = 1e-3,
) -> list[float]:
    """Logistic regression by full-batch gradient descent (``ys`` in [0, 1]).

    ``tollgate routing train`` calls this on vectors recorded in the ledger.
    """
    w = [0.0] * len(FEATURE_NAMES)
    n = len(xs)
    for _ in range(epochs):
        grad = [0.0] * len(w)
        for x, y in zip(xs, ys, strict=True):
            err = probability(w, x) - y
            for j, v in enumerate(x):
                grad[j] += err * v
        for j in range(len(w)):
            w[j] -= lr * (grad[j] / n + (l2 * w[j] if j else 0.0))
    return w


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--share", type=float, default=0.3, help="default target large share")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("learned_weights.py"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    rows = generate(args.samples, rng)
    held = generate(args.samples // 2, rng)
    w = train(rows)
    scores = sorted(probability(w, featurize(f)) for f, _ in held)
    quantiles = [scores[min(len(scores) - 1, round(i * (len(scores) - 1) / 100))]
                 for i in range(101)]  # fmt: skip
    correct = sum((probability(w, featurize(f)) >= 0.5) == bool(y) for f, y in held)
    base_rate = sum(y for _, y in held) / len(held)
    accuracy = correct / len(held)

    def block(name: str, items: list[str]) -> str:
        return f'    "{name}": (\n' + "".join(f"        {i},\n" for i in items) + "    ),\n"

    args.out.write_text(
        '"""Weights of the learned router (generated by learned_train; do not edit)."""\n\n'
        "from __future__ import annotations\n\n"
        "from collections.abc import Mapping\n"
        "from typing import Any, Final\n\n"
        "WEIGHTS: Final[Mapping[str, Any]] = {\n"
        + block("features", [repr(n).replace("'", '"') for n in FEATURE_NAMES])
        + block("weights", [f"{v:.6f}" for v in w])
        + block("quantiles", [f"{q:.6f}" for q in quantiles])
        + f'    "default_large_share": {args.share},\n'
        f'    "trained_on": "synthetic: {args.samples} generated requests, seed {args.seed}",\n'
        f'    "data_note": "{DATA_NOTE}",\n'
        f'    "heldout_accuracy": {accuracy:.4f},\n'
        f'    "heldout_large_rate": {base_rate:.4f},\n'
        "}\n"
    )
    print(f"wrote {args.out}: held-out accuracy {accuracy:.3f} (large rate {base_rate:.3f})")


if __name__ == "__main__":
    main()
