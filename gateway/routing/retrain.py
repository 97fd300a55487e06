"""Refitting the learned router on feedback labels (``tollgate routing train``).

Only requests the small tier answered teach the model anything: their rating says
whether the small tier was enough. A rating on a large-tier answer cannot say whether
the small tier would have done, so those are counted and left out. The target is
``1 - quality`` (soft labels: a 0.2 rating is "large needed" with weight 0.8), the fit is
:func:`gateway.routing.learned_train.fit`, and a held-out quarter (a seeded shuffle)
measures the new model against the one in force, at equal large shares.

Selection bias: the learned policy already sends the hard-looking requests large, so
small-tier ratings cover the easier ones. Mixing in requests sent to the small tier
whatever their score (a sample of keys on ``model: small``, or a share of traffic under
the rules policy) gives the fit the other requests.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.ledger.route_data import LabelledRequest
from gateway.routing.evaluate import ModelEval, evaluate
from gateway.routing.learned import FEATURE_NAMES, vector
from gateway.routing.learned_train import fit


class NotEnoughLabels(Exception):
    """Fewer usable labels than the minimum: training would fit noise."""


@dataclass(frozen=True, slots=True)
class TrainResult:
    weights: tuple[float, ...]
    used: int
    #: Rated requests left out because the large tier answered them.
    skipped_large: int
    train_rows: int
    test_rows: int
    current: ModelEval
    trained: ModelEval


def usable(rows: Sequence[LabelledRequest], small_tier: str) -> list[LabelledRequest]:
    return [r for r in rows if r.tier == small_tier and len(r.features) + 1 == len(FEATURE_NAMES)]


def retrain(
    rows: Sequence[LabelledRequest],
    current: Sequence[float],
    *,
    min_labels: int,
    small_tier: str = "small",
    seed: int = 7,
    holdout: float = 0.25,
) -> TrainResult:
    """Fit on ``rows`` (refusing below ``min_labels``) and evaluate both models."""
    good = usable(rows, small_tier)
    if len(good) < min_labels:
        raise NotEnoughLabels(
            f"{len(good)} usable labels, need at least {min_labels} (--min-labels). "
            f"A label counts when a client rated (POST /v1/feedback) a request that the "
            f"learned policy scored and the {small_tier!r} tier answered; "
            f"{len(rows) - len(good)} other rated request(s) were left out."
        )
    order = list(good)
    random.Random(seed).shuffle(order)
    n_test = max(1, int(len(order) * holdout))
    test, train = order[:n_test], order[n_test:]
    weights = fit([vector(r.features) for r in train], [1.0 - r.quality for r in train])
    return TrainResult(
        weights=tuple(weights),
        used=len(good),
        skipped_large=len(rows) - len(good),
        train_rows=len(train),
        test_rows=len(test),
        current=evaluate("in force", current, test),
        trained=evaluate("trained", weights, test),
    )
