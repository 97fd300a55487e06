"""Synthetic labelled traffic for the learned router's calibration and training.

**Synthetic**, and says so wherever it is used: requests come from the shipped model's
own generator (``learned_train.generate``), and whether the small tier answered well is
drawn from a hidden rule that is *not* the one the shipped model imitates (here the
small tier copes with code, fails on maths, proofs and long outputs), so training on
these labels has something to learn. The tests and ``python -m bench calibration`` use it.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass

from gateway.ledger.feedback import Feedback
from gateway.ledger.record import LedgerRecord
from gateway.routing.features import Features
from gateway.routing.learned import FEATURE_NAMES, featurize, probability
from gateway.routing.learned_train import generate
from gateway.routing.learned_weights import WEIGHTS
from tests.support.ledger import PRICES, make_record

_IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True, slots=True)
class Labelled:
    record: LedgerRecord
    #: The client's rating of the answer (None: not rated).
    feedback: Feedback | None


def p_small_fails(x: list[float]) -> float:
    """The hidden truth: how likely the small tier's answer is bad, from the features."""
    z = (
        -2.2
        + 3.0 * x[_IDX["kw_math"]]
        + 2.2 * x[_IDX["kw_reasoning"]]
        - 1.5 * x[_IDX["kw_code"]]
        + 6.0 * max(0.0, x[_IDX["log_max_tokens"]] - math.log1p(512) / 8.0)
        + 1.2 * x[_IDX["has_tools"]]
        - 1.0 * x[_IDX["kw_simple"]]
    )
    return 1.0 / (1.0 + math.exp(-z))


def traffic(
    n: int,
    *,
    seed: int = 11,
    finished: dt.datetime,
    rated: float = 1.0,
    explore: float = 0.3,
    threshold: float = 0.5,
    key_id: str = "key-a",
    prefix: str = "syn",
) -> list[Labelled]:
    """``n`` requests routed by the shipped model at ``threshold``, except an ``explore``
    share sent to the small tier whatever their score; a ``rated`` share carry feedback."""
    rng = random.Random(seed)
    weights = WEIGHTS["weights"]
    out: list[Labelled] = []
    for i, (f, _) in enumerate(generate(n, rng)):
        x = featurize(f)
        score = probability(weights, x)
        tier = "small" if rng.random() < explore or score < threshold else "large"
        record = _record(
            i, f, x, score, tier, finished - dt.timedelta(seconds=n - i), key_id, prefix
        )
        feedback = None
        if rng.random() < rated:
            failed = tier == "small" and rng.random() < p_small_fails(x)
            good = not failed and rng.random() > 0.03  # a few grumpy ratings either way
            feedback = Feedback(record.request_id, 1.0 if good else 0.0, "good" if good else "bad")
        out.append(Labelled(record, feedback))
    return out


def _record(
    i: int,
    f: Features,
    x: list[float],
    score: float,
    tier: str,
    finished: dt.datetime,
    key_id: str,
    prefix: str,
) -> LedgerRecord:
    completion = f.max_tokens // 2 if f.max_tokens else 200
    (sp, sc), (lp, lc) = PRICES["small"], PRICES["large"]
    small_cost = f.prompt_tokens * sp + completion * sc
    large_cost = f.prompt_tokens * lp + completion * lc
    return make_record(
        i,
        request_id=f"{prefix}-{i:06d}",
        finished_at=finished,
        key_id=key_id,
        engine=f"{tier}-0",
        tier=tier,
        upstream_model=f"standin-{tier}",
        route_reason=f"learned:{tier}",
        prompt_tokens=f.prompt_tokens,
        completion_tokens=completion,
        cost_nusd=small_cost if tier == "small" else large_cost,
        counterfactual_nusd=large_cost,
        route_score=score,
        route_features=tuple(round(v, 6) for v in x[1:]),
    )
