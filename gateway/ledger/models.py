"""The ledger table: one row per request that reached an engine.

The primary key is the request id, so inserting the same record twice is a no-op
(``INSERT ... ON CONFLICT (request_id) DO NOTHING``) on SQLite and PostgreSQL alike.
Money is integer nano-USD (``BIGINT``): sums are exact on both backends.

There is deliberately no foreign key to ``api_keys``: a record must be accepted even for
static keys from the config and for keys deleted since, and the ledger is append-only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, String
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from gateway.db import Base
from gateway.ledger.record import LedgerRecord

TABLE = "ledger_records"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on both backends.

    SQLite has no time zones: values are stored as naive UTC text, which still sorts and
    compares correctly, and come back aware. PostgreSQL stores ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware datetimes")
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class LedgerRow(Base):
    """A stored :class:`~gateway.ledger.record.LedgerRecord` (same fields, plus ``day``)."""

    __tablename__ = TABLE

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: Requests are billed when they finish: the price in force then is the one applied.
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    #: UTC day of ``finished_at`` (YYYY-MM-DD): portable, indexable day/month grouping.
    day: Mapped[str] = mapped_column(String(10), index=True)
    key_id: Mapped[str] = mapped_column(String(), index=True)
    key_prefix: Mapped[str] = mapped_column(String())
    team: Mapped[str | None] = mapped_column(String(), index=True)
    endpoint: Mapped[str] = mapped_column(String())
    requested_model: Mapped[str] = mapped_column(String())
    engine: Mapped[str] = mapped_column(String())
    tier: Mapped[str] = mapped_column(String())
    upstream_model: Mapped[str] = mapped_column(String())
    route_reason: Mapped[str] = mapped_column(String())
    stream: Mapped[bool] = mapped_column(Boolean)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    usage_estimated: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String())
    cost_nusd: Mapped[int] = mapped_column(BigInteger)
    counterfactual_nusd: Mapped[int] = mapped_column(BigInteger)
    price_version: Mapped[str] = mapped_column(String())
    route_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The learned router's inputs as comma-separated numbers (see :func:`encode_features`).
    route_features: Mapped[str | None] = mapped_column(String(), nullable=True)


RECORD_FIELDS: tuple[str, ...] = tuple(LedgerRecord.__dataclass_fields__)


def encode_features(features: tuple[float, ...] | None) -> str | None:
    """``0.51,0.3,...``: short, and the same text on both backends."""
    if features is None:
        return None
    return ",".join(f"{v:.6g}" for v in features)


def decode_features(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    return tuple(float(v) for v in text.split(","))


def row_values(rec: LedgerRecord) -> dict[str, Any]:
    """Column values for one record (the insert's parameters)."""
    values = {name: getattr(rec, name) for name in RECORD_FIELDS}
    values["day"] = rec.finished_at.astimezone(dt.UTC).date().isoformat()
    values["route_features"] = encode_features(rec.route_features)
    return values


def record_of(row: LedgerRow) -> LedgerRecord:
    """The record a row was written from."""
    values = {name: getattr(row, name) for name in RECORD_FIELDS}
    values["route_features"] = decode_features(row.route_features)
    return LedgerRecord(**values)
