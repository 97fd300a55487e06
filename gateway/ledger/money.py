"""Amounts of nano-USD as USD: exact for machines, rounded half-up for people.

Sums in the ledger are exact integers of nano-USD; they become USD only for display,
here, so the CLI, the admin API and the dashboard print the same numbers.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

NANO = Decimal(1_000_000_000)


def usd(nusd: int) -> Decimal:
    """Exact USD of an amount of nano-USD."""
    return Decimal(nusd) / NANO


def format_usd(nusd: int, places: int = 6) -> str:
    """For people: ``$1,234.567890`` (rounded half-up); the one format every view uses."""
    quantum = Decimal(1).scaleb(-places)
    value = usd(nusd).quantize(quantum, rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{places}f}"


def plain_usd(nusd: int) -> str:
    """For machines: exact, dot decimal, no grouping (``1234.567890123``)."""
    return f"{usd(nusd):.9f}"
