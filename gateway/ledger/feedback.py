"""Outcome feedback on answered requests: the labels the learned router trains on.

One row per (key, request id): a client says how good an answer was, as a ``score`` in
[0, 1] or a ``label`` (``good`` = 1, ``bad`` = 0). Sending it again replaces the earlier
one (last write wins), so a client may correct itself and retries are harmless.
A key may only rate its own requests: :meth:`FeedbackStore.put` checks the ledger row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, Float, String, and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base
from gateway.ledger.models import LedgerRow, UTCDateTime
from gateway.ledger.store import translate_errors

TABLE = "route_feedback"
LABELS = {"good": 1.0, "bad": 0.0}


class FeedbackRow(Base):
    """A stored :class:`Feedback`."""

    __tablename__ = TABLE

    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: Quality in [0, 1]; a label is stored as its score too (good 1, bad 0).
    score: Mapped[float] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


_TABLE = FeedbackRow.metadata.tables[TABLE]
_LEDGER = LedgerRow.metadata.tables["ledger_records"]


@dataclass(frozen=True, slots=True)
class Feedback:
    """What a key said about one of its requests."""

    request_id: str
    score: float
    label: str | None
    #: True when this replaced earlier feedback on the same request.
    replaced: bool = False


class FeedbackStore:
    """Writes feedback for a key's own ledger records (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert

    def put(self, key_id: str, feedback: Feedback) -> Feedback | None:
        """Store (or replace) the feedback; None when ``key_id`` has no such request."""
        now = dt.datetime.now(dt.UTC)
        values = {
            "key_id": key_id,
            "request_id": feedback.request_id,
            "score": feedback.score,
            "label": feedback.label,
            "created_at": now,
            "updated_at": now,
        }
        upsert = self._insert(_TABLE).values(**values)
        upsert = upsert.on_conflict_do_update(
            index_elements=["key_id", "request_id"],
            set_={"score": feedback.score, "label": feedback.label, "updated_at": now},
        )
        owned = select(_LEDGER.c.request_id).where(
            and_(_LEDGER.c.request_id == feedback.request_id, _LEDGER.c.key_id == key_id)
        )
        earlier = select(_TABLE.c.request_id).where(
            and_(_TABLE.c.key_id == key_id, _TABLE.c.request_id == feedback.request_id)
        )
        with translate_errors(), self.engine.begin() as conn:
            if conn.execute(owned).first() is None:
                return None
            replaced = conn.execute(earlier).first() is not None
            conn.execute(upsert)
        return Feedback(feedback.request_id, feedback.score, feedback.label, replaced)

    def get(self, key_id: str, request_id: str) -> Feedback | None:
        query = select(_TABLE.c.score, _TABLE.c.label).where(
            and_(_TABLE.c.key_id == key_id, _TABLE.c.request_id == request_id)
        )
        with translate_errors(), self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Feedback(request_id, float(row.score), row.label) if row is not None else None
