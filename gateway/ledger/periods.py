"""Report time bounds: ISO dates, datetimes and months, and the current UTC day or month."""

from __future__ import annotations

import datetime as dt
from typing import Literal


def parse_when(text: str, *, end: bool = False) -> dt.datetime:
    """A report bound from ISO 8601: a date, a datetime (naive = UTC) or ``YYYY-MM``.

    As an ``end``, a bare date or month includes that whole day or month (finance says
    "from 2026-03-01 to 2026-03-31"); a datetime is exclusive.
    """
    text = text.strip()
    try:
        if len(text) == 7:  # YYYY-MM
            first = dt.date.fromisoformat(text + "-01")
            if end:
                first = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            return dt.datetime.combine(first, dt.time(), dt.UTC)
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            if end:
                day += dt.timedelta(days=1)
            return dt.datetime.combine(day, dt.time(), dt.UTC)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not an ISO date or datetime: {text!r} (e.g. 2026-03-01, 2026-03, "
            "2026-03-01T12:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def period_bounds(
    period: Literal["day", "month"], now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """The current UTC day or month containing ``now``: ``[start, next start)``."""
    today = now.astimezone(dt.UTC).date()
    if period == "day":
        first, nxt = today, today + dt.timedelta(days=1)
    else:
        first = today.replace(day=1)
        nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return (
        dt.datetime.combine(first, dt.time(), dt.UTC),
        dt.datetime.combine(nxt, dt.time(), dt.UTC),
    )
