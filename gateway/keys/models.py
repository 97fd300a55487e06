"""The key store's tables: ``teams`` and ``api_keys`` (created by Alembic migrations).

Budgets are integer nano-USD, like every amount of money in the gateway; only the SHA-256
hash of a key is stored, with a short prefix for people.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from gateway.auth import Limits
from gateway.db import Base
from gateway.quotas.limits import NANO


class _UTC(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on SQLite (naive text) and PostgreSQL (timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        utc = value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class _LimitColumns:
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    #: Budgets in integer nano-USD, like every amount of money in the gateway.
    budget_daily_nusd: Mapped[int | None] = mapped_column(BigInteger)
    budget_monthly_nusd: Mapped[int | None] = mapped_column(BigInteger)
    budget_total_nusd: Mapped[int | None] = mapped_column(BigInteger)

    def limits(self) -> Limits:
        def usd(v: int | None) -> float | None:
            return None if v is None else v / NANO

        return Limits(
            rpm=self.rpm,
            tpm=self.tpm,
            concurrency=self.concurrency,
            budget_daily_usd=usd(self.budget_daily_nusd),
            budget_monthly_usd=usd(self.budget_monthly_nusd),
            budget_total_usd=usd(self.budget_total_nusd),
        )

    def set_limits(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if name.startswith("budget_"):
                column = name.removesuffix("_usd") + "_nusd"
                setattr(self, column, None if value is None else int(Decimal(value) * NANO))
            else:
                setattr(self, name, value)


class Team(_LimitColumns, Base):
    """A group of keys sharing limits (on shared counters) and a model allow-list."""

    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    models: Mapped[list[str] | None] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(_UTC())
    updated_at: Mapped[dt.datetime] = mapped_column(_UTC())


class ApiKey(_LimitColumns, Base):
    """A managed client key; only its hash is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    team: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("teams.name", ondelete="RESTRICT"), index=True
    )
    models: Mapped[list[str] | None] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    routing: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[dt.datetime | None] = mapped_column(_UTC())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(_UTC())
    created_at: Mapped[dt.datetime] = mapped_column(_UTC())
    updated_at: Mapped[dt.datetime] = mapped_column(_UTC())
    rotated_at: Mapped[dt.datetime | None] = mapped_column(_UTC())
    #: After a rotation with a grace period: the old secret's hash, valid until then.
    previous_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    previous_valid_until: Mapped[dt.datetime | None] = mapped_column(_UTC())

    def active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
