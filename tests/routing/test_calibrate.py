"""Threshold calibration (RouteLLM-style quantile) and the offline evaluation's maths."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from gateway.ledger.route_data import LabelledRequest
from gateway.routing.calibrate import (
    calibrate,
    current_weights,
    parse_since,
    share_at,
    threshold_at_share,
)
from gateway.routing.evaluate import auc, evaluate
from gateway.routing.learned import featurize
from gateway.routing.learned_train import generate
from gateway.routing.learned_weights import WEIGHTS
from gateway.routing.state import RoutingState


@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 0.5, 0.99, 1.0])
def test_threshold_sends_the_target_share_large(share: float) -> None:
    rng = random.Random(1)
    scores = [rng.random() for _ in range(1000)]
    t = threshold_at_share(scores, share)
    assert share_at(scores, t) == pytest.approx(share, abs=0.001)
    assert 0.0 <= t <= 1.0


def test_ties_and_bad_input() -> None:
    assert share_at([0.5] * 10, threshold_at_share([0.5] * 10, 0.3)) == 1.0  # ties move it
    with pytest.raises(ValueError, match="no scores"):
        threshold_at_share([], 0.3)
    with pytest.raises(ValueError, match="within"):
        threshold_at_share([0.1], 1.5)


def test_calibrate_rescales_the_shipped_model_to_our_traffic() -> None:
    rows = generate(600, random.Random(3))
    vectors = [tuple(featurize(f)[1:]) for f, _ in rows]
    result = calibrate(vectors, current_weights(None), 0.3)
    assert result.sample == 600
    assert result.measured_share == pytest.approx(0.3, abs=0.01)
    trained = RoutingState(0.5, weights=(0.0,) * len(WEIGHTS["weights"]))
    assert current_weights(trained) == trained.weights


def test_parse_since() -> None:
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    assert parse_since("7d", now) == now - dt.timedelta(days=7)
    assert parse_since("90m", now) == now - dt.timedelta(minutes=90)
    with pytest.raises(ValueError, match="--since"):
        parse_since("7 days", now)


def test_auc_and_evaluation_extremes() -> None:
    assert auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auc([0.5, 0.5], [False, True]) == 0.5
    rows = [
        LabelledRequest(f"r{i}", tuple(featurize(f)[1:]), "small", 1_000, 10_000, 0.0 if y else 1.0)
        for i, (f, y) in enumerate(generate(300, random.Random(5)))
    ]
    e = evaluate("shipped", WEIGHTS["weights"], rows)
    none_large, all_large = e.points[0], e.points[-1]
    assert none_large.share == 0.0 and all_large.share == 1.0
    assert none_large.cost_per_1k_usd == pytest.approx(1_000 * 1000 / 1e9)
    assert all_large.cost_per_1k_usd == pytest.approx(10_000 * 1000 / 1e9)
    assert all_large.quality == 1.0
    assert none_large.quality == pytest.approx(sum(r.quality for r in rows) / len(rows))
    assert e.auc > 0.7  # the shipped model imitates the rule these labels come from
