"""Calibrating the learned router on our own traffic, RouteLLM-style.

RouteLLM sets a router's threshold so that a chosen share of requests goes to the strong
model, from the score distribution of real queries. Here the queries are the ledger's:
each request the learned policy routed carries its input vector, so the current model
(the state file's trained weights, else the shipped ones) re-scores recent traffic and
the threshold is the score at its ``1 - share`` quantile.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.routing.learned import probability, vector
from gateway.routing.learned_weights import WEIGHTS
from gateway.routing.state import RoutingState

_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float
    sample: int
    target_share: float
    #: The share of the sample at or above the threshold (ties can move it off target).
    measured_share: float


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``30m``, ``12h``, ``7d``, ``2w`` → the moment that long before ``now``."""
    match = _SINCE.match(text.strip())
    if match is None:
        raise ValueError(f"--since {text!r}: use a number and m, h, d or w (e.g. 7d)")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)


def current_weights(state: RoutingState | None) -> tuple[float, ...]:
    """The weights replicas use: the state file's trained ones, else the shipped ones."""
    if state is not None and state.weights is not None:
        return state.weights
    return tuple(float(w) for w in WEIGHTS["weights"])


def scores_of(weights: Sequence[float], vectors: Sequence[Sequence[float]]) -> list[float]:
    return [probability(weights, vector(v)) for v in vectors]


def threshold_at_share(scores: Sequence[float], share: float) -> float:
    """A threshold with ``share`` of ``scores`` at or above it (the 1 - share quantile).

    Exactly ``round(share * n)`` scores are at or above it unless scores tie across it.
    """
    if not scores:
        raise ValueError("no scores to calibrate on")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"target large share {share} is not within [0, 1]")
    s = sorted(scores)
    n = len(s)
    k = round(share * n)  # how many go large
    if k <= 0:
        return min(1.0, math.nextafter(s[-1], math.inf))
    if k >= n:
        return s[0]
    lo, hi = s[n - k - 1], s[n - k]
    return hi if lo == hi else (lo + hi) / 2


def share_at(scores: Sequence[float], threshold: float) -> float:
    return sum(1 for x in scores if x >= threshold) / len(scores) if scores else 0.0


def calibrate(
    vectors: Sequence[Sequence[float]], weights: Sequence[float], share: float
) -> Calibration:
    """The threshold that sends ``share`` of ``vectors`` to the large tier."""
    scores = scores_of(weights, vectors)
    threshold = threshold_at_share(scores, share)
    return Calibration(threshold, len(scores), share, share_at(scores, threshold))
