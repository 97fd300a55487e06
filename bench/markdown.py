"""Markdown for every scenario's report: tables and the few number formats they share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: How a column is aligned: "l" (left), "r" (right), "c" (centre).
_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def table(
    header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None
) -> list[str]:
    """A GitHub table as lines; ``align`` is one letter a column (``"lrr"``), default left."""
    rule = [_RULES[a] for a in (align or "l" * len(header))]
    if len(rule) != len(header):
        raise ValueError("align must have one letter per column")
    out = [row(*header), row(*rule)]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row has {len(r)} cells, the header {len(header)}: {r!r}")
        out.append(row(*r))
    return out


def row(*cells: object) -> str:
    """One table row; ``None`` shows as ``-`` and ``|`` inside a cell is escaped."""
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def cell(value: object) -> str:
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def num(value: float | None, digits: int = 2, *, sign: bool = False) -> str:
    """A number to ``digits`` places (``+`` shown when ``sign``), ``-`` for ``None``."""
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def interval(value: float | None, ci: Sequence[float] | None, digits: int = 2) -> str:
    """``+1.23 (+1.01 … +1.40)``: an added figure with its 95% interval."""
    if value is None:
        return "-"
    text = num(value, digits, sign=True)
    if ci:
        text += f" ({num(ci[0], digits, sign=True)} … {num(ci[1], digits, sign=True)})"
    return text


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**missed**")
