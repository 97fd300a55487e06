"""The statistics every scenario uses: percentiles, added latency, bootstrap intervals.

One method throughout: ``numpy.percentile`` with linear interpolation. Times go in as
seconds (or whatever unit the caller has) and come out multiplied by ``scale``, rounded
to ``digits``; an empty sample gives ``None`` for every key, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Sample = Sequence[float] | np.ndarray

#: What the interval of an added percentile is drawn from: resamples of each side.
BOOTSTRAP_RESAMPLES = 300


def percentiles(
    values: Sample,
    ps: Sequence[float] = (50.0, 99.0),
    *,
    scale: float = 1000.0,
    digits: int = 3,
    names: Sequence[str] | None = None,
) -> dict[str, float | None]:
    """``{"p50": …, "p99": …}`` of ``values * scale``; ``names`` renames the keys."""
    keys = list(names) if names is not None else [f"p{p:g}" for p in ps]
    if len(keys) != len(ps):
        raise ValueError("names and ps differ in length")
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return dict.fromkeys(keys)
    out = np.percentile(a, ps) * scale
    return {k: round(float(v), digits) for k, v in zip(keys, out, strict=True)}


def percentiles_ms(values: Sample, ps: Sequence[float]) -> dict[str, float | None]:
    """Percentiles of seconds, in milliseconds (``p50``, ``p99.9``, ``p100``…)."""
    return percentiles(values, ps)


def mean(values: Sample, *, scale: float = 1000.0, digits: int = 3) -> float | None:
    a = np.asarray(values, dtype=np.float64)
    return round(float(a.mean() * scale), digits) if a.size else None


def added(
    base: Sample, other: Sample, p: float, *, scale: float = 1000.0, digits: int = 3
) -> float | None:
    """``percentile(other, p) - percentile(base, p)``, times ``scale``."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return None
    return round(float((np.percentile(b, p) - np.percentile(a, p)) * scale), digits)


def bootstrap_added(
    base: Sample,
    other: Sample,
    p: float,
    *,
    scale: float = 1000.0,
    digits: int = 3,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> list[float] | None:
    """A 95% bootstrap interval ``[lo, hi]`` of :func:`added` (each side resampled)."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return None
    rng = np.random.default_rng(seed)
    boots = [
        np.percentile(rng.choice(b, b.size), p) - np.percentile(rng.choice(a, a.size), p)
        for _ in range(resamples)
    ]
    lo, hi = np.percentile(boots, (2.5, 97.5)) * scale
    return [round(float(lo), digits), round(float(hi), digits)]


def added_with_ci(
    base: Sample,
    other: Sample,
    ps: Sequence[float] = (50, 99),
    *,
    seed: int = 0,
    scale: float = 1000.0,
    digits: int = 3,
) -> dict[str, Any]:
    """``{"p50_ms": added, "p50_ci95_ms": [lo, hi], …}`` (``None`` for an empty side)."""
    out: dict[str, Any] = {}
    for p in ps:
        out[f"p{p:g}_ms"] = added(base, other, p, scale=scale, digits=digits)
        ci = bootstrap_added(base, other, p, scale=scale, digits=digits, seed=seed)
        if ci is not None:
            out[f"p{p:g}_ci95_ms"] = ci
    return out
