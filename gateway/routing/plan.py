"""What admission settled about the tier before routing runs (``auto`` models only).

Admission reserves the worst case for the tiers in :attr:`TierPlan.covered` and no
others; the route stage may only send the request, fallback included, to those tiers, so
no engine can spend more than was reserved (see :mod:`gateway.request.tiering`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.routing.features import Features, Score


@dataclass(frozen=True, slots=True)
class TierPlan:
    """The tier the policy chose under the key's budget, and what the reservation covers."""

    tier: str
    reason: str
    #: Tiers whose worst case the reservation covers (the route stays within them).
    covered: frozenset[str]
    #: The policy's tier was over budget and a cheaper one was reserved instead.
    rescued: bool
    #: The features the policy saw (the budget left unknown: admission runs first).
    features: Features
    #: The learned policy's score for the request, when it chose (for the ledger).
    score: Score | None = None
