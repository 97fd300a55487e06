"""Offline evaluation of a router model on rated requests: cost against a quality proxy.

Rows are requests the **small** tier answered and a client rated: they tell whether the
small tier was enough (quality >= 0.5) and what the request cost there and would have
cost on the large tier (the ledger's ``cost_nusd`` and ``counterfactual_nusd``). For a
threshold, a row the model scores at or above it goes large:

* **cost**: the mean of each row's cost on the tier it would go to (USD per 1,000);
* **quality proxy**: the mean quality of the answers, taking a large-tier answer as good
  (1) and a small-tier one as the client rated it; the assumption flatters the large
  tier, so compare models at equal large share, not against an absolute;
* **agreement**: how often "goes large" equals "the small tier's answer was bad".

Rows are compared at fixed large shares (0, 10, ..., 100 %), each model with its own
threshold for that share, so two models are compared at equal cost exposure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.ledger.route_data import LabelledRequest
from gateway.routing.calibrate import scores_of, share_at, threshold_at_share

SHARES = tuple(i / 10 for i in range(11))


@dataclass(frozen=True, slots=True)
class Point:
    share: float
    threshold: float
    cost_per_1k_usd: float
    quality: float
    agreement: float


@dataclass(frozen=True, slots=True)
class ModelEval:
    name: str
    auc: float
    points: tuple[Point, ...]


def bad(row: LabelledRequest) -> bool:
    return row.quality < 0.5


def auc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """ROC AUC: the chance a bad-on-small row outscores a good one (ties count half)."""
    ranked = sorted(zip(scores, positives, strict=True), key=lambda t: t[0])
    n_pos = sum(positives)
    n_neg = len(ranked) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += mid * sum(1 for k in range(i, j) if ranked[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def point(rows: Sequence[LabelledRequest], scores: Sequence[float], threshold: float) -> Point:
    n = len(rows)
    cost = quality = agree = 0.0
    for row, s in zip(rows, scores, strict=True):
        large = s >= threshold
        cost += row.counterfactual_nusd if large else row.cost_nusd
        quality += 1.0 if large else row.quality
        agree += large == bad(row)
    usd_per_1k = cost / n / 1e9 * 1000
    return Point(share_at(scores, threshold), threshold, usd_per_1k, quality / n, agree / n)


def evaluate(name: str, weights: Sequence[float], rows: Sequence[LabelledRequest]) -> ModelEval:
    scores = scores_of(weights, [r.features for r in rows])
    points = tuple(point(rows, scores, threshold_at_share(scores, s)) for s in SHARES)
    return ModelEval(name, auc(scores, [bad(r) for r in rows]), points)


def markdown(evals: Sequence[ModelEval], notes: Sequence[str]) -> str:
    """The evaluation as a markdown report (what ``routing train`` prints and writes)."""
    lines = ["# Learned router: offline evaluation", ""]
    lines += [f"- {n}" for n in notes]
    lines += [f"- ROC AUC (bad-on-small vs good): {e.name} {e.auc:.3f}" for e in evals]
    lines += [
        "",
        "| large share | "
        + " | ".join(f"{e.name}: threshold | cost $/1k | quality | agreement" for e in evals)
        + " |",
    ]
    lines.append("|---" * (1 + 4 * len(evals)) + "|")
    for i, share in enumerate(SHARES):
        cells = [f"{share:.0%}"]
        for e in evals:
            p = e.points[i]
            cells += [
                f"{p.threshold:.4f}",
                f"{p.cost_per_1k_usd:.4f}",
                f"{p.quality:.3f}",
                f"{p.agreement:.3f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(evals: Sequence[ModelEval], path: Path, title: str) -> bool:
    """Cost against quality, one line per model; False when matplotlib is not installed
    (the production image leaves it out: the markdown table says the same)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in evals:
        xs = [p.cost_per_1k_usd for p in e.points]
        ys = [p.quality for p in e.points]
        ax.plot(xs, ys, marker="o", label=f"{e.name} (AUC {e.auc:.3f})")
        for p in e.points[::2]:
            ax.annotate(
                f"{p.share:.0%}",
                (p.cost_per_1k_usd, p.quality),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -10),
            )
    ax.set_xlabel("cost, USD per 1,000 requests")
    ax.set_ylabel("quality proxy (large answers count as good)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
