"""What a finance report asks and answers: the groupings, the query, rows and totals."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, func

from gateway.ledger.models import TABLE, LedgerRow
from gateway.ledger.money import usd

_T = LedgerRow.metadata.tables[TABLE]


@dataclass(frozen=True, slots=True)
class Group:
    """A way to group rows: the output columns and the SQL expressions behind them."""

    columns: tuple[tuple[str, ColumnElement[Any]], ...]
    #: Time groupings sort chronologically; the others by cost.
    chronological: bool = False


GROUPS: Mapping[str, Group] = MappingProxyType(
    {
        "key": Group((("key_id", _T.c.key_id), ("key_prefix", _T.c.key_prefix))),
        "team": Group((("team", _T.c.team),)),
        "model": Group((("model", _T.c.requested_model),)),
        "upstream_model": Group((("upstream_model", _T.c.upstream_model),)),
        "engine": Group((("engine", _T.c.engine),)),
        "tier": Group((("tier", _T.c.tier),)),
        "status": Group((("status", _T.c.status),)),
        "price_version": Group((("price_version", _T.c.price_version),)),
        "day": Group((("day", _T.c.day),), chronological=True),
        "month": Group((("month", func.substr(_T.c.day, 1, 7)),), chronological=True),
    }
)


def group_names() -> Sequence[str]:
    return sorted(GROUPS)


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over a set of ledger rows."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nusd: int = 0
    counterfactual_nusd: int = 0
    estimated: int = 0
    errors: int = 0

    @property
    def savings_nusd(self) -> int:
        """What routing saved against sending everything to the reference tier."""
        return self.counterfactual_nusd - self.cost_nusd

    @property
    def savings_pct(self) -> float | None:
        if self.counterfactual_nusd <= 0:
            return None
        return round(100 * self.savings_nusd / self.counterfactual_nusd, 2)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "estimated_requests": self.estimated,
            "error_requests": self.errors,
            "cost_nusd": self.cost_nusd,
            "counterfactual_nusd": self.counterfactual_nusd,
            "savings_nusd": self.savings_nusd,
            "cost_usd": float(usd(self.cost_nusd)),
            "counterfactual_usd": float(usd(self.counterfactual_nusd)),
            "savings_usd": float(usd(self.savings_nusd)),
            "savings_pct": self.savings_pct,
        }


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """What to report: groupings, a half-open time range and optional filters."""

    group_by: tuple[str, ...] = ()
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    key_id: str | None = None
    team: str | None = None
    tier: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        unknown = [g for g in self.group_by if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown group_by {unknown}; choose from {', '.join(sorted(GROUPS))}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by lists a grouping twice")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must carry a time zone")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")

    @property
    def columns(self) -> list[str]:
        return [name for g in self.group_by for name, _ in GROUPS[g].columns]


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One group's values (column -> value) and its sums."""

    group: dict[str, str | None]
    totals: Totals


@dataclass(frozen=True, slots=True)
class Report:
    """A report's rows and grand totals, as of ``generated_at``."""

    query: ReportQuery
    rows: list[ReportRow]
    totals: Totals
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
