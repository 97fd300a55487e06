"""What the learned router is calibrated and trained on, read from the ledger database.

* :func:`scored_traffic`: the recorded input vectors of recent requests the learned
  policy routed (``ledger_records.route_features``), for ``tollgate routing calibrate``.
* :func:`labelled_requests`: those requests joined with their feedback
  (``route_feedback``), for ``tollgate routing train``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, and_, select

from gateway.ledger.feedback import FeedbackRow
from gateway.ledger.models import LedgerRow, decode_features
from gateway.ledger.store import translate_errors

_LEDGER = LedgerRow.metadata.tables["ledger_records"]
_FEEDBACK = FeedbackRow.metadata.tables["route_feedback"]


@dataclass(frozen=True, slots=True)
class LabelledRequest:
    """One rated request: the router's inputs, where it went, what it cost, how it went."""

    request_id: str
    features: tuple[float, ...]
    tier: str
    #: The request's cost on the tier that served it, and on the large tier.
    cost_nusd: int
    counterfactual_nusd: int
    #: The client's quality score in [0, 1] (good 1, bad 0).
    quality: float


def scored_traffic(engine: Engine, since: dt.datetime | None = None) -> list[tuple[float, ...]]:
    """Input vectors of the requests the learned policy routed (finished since ``since``)."""
    query = select(_LEDGER.c.route_features).where(_LEDGER.c.route_features.is_not(None))
    if since is not None:
        query = query.where(_LEDGER.c.finished_at >= since)
    with translate_errors(), engine.connect() as conn:
        rows = conn.execute(query).scalars().all()
    return [f for f in (decode_features(r) for r in rows) if f is not None]


def labelled_requests(engine: Engine, since: dt.datetime | None = None) -> list[LabelledRequest]:
    """Rated requests that carry the router's inputs, oldest first."""
    query = (
        select(
            _LEDGER.c.request_id,
            _LEDGER.c.route_features,
            _LEDGER.c.tier,
            _LEDGER.c.cost_nusd,
            _LEDGER.c.counterfactual_nusd,
            _FEEDBACK.c.score,
        )
        .join(
            _FEEDBACK,
            and_(
                _FEEDBACK.c.request_id == _LEDGER.c.request_id,
                _FEEDBACK.c.key_id == _LEDGER.c.key_id,
            ),
        )
        .where(_LEDGER.c.route_features.is_not(None))
        .order_by(_LEDGER.c.finished_at, _LEDGER.c.request_id)
    )
    if since is not None:
        query = query.where(_LEDGER.c.finished_at >= since)
    with translate_errors(), engine.connect() as conn:
        rows = conn.execute(query).all()
    out: list[LabelledRequest] = []
    for r in rows:
        features = decode_features(r.route_features)
        if features is not None:
            out.append(
                LabelledRequest(
                    r.request_id,
                    features,
                    r.tier,
                    int(r.cost_nusd),
                    int(r.counterfactual_nusd),
                    float(r.score),
                )
            )
    return out
