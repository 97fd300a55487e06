"""Server-side SVG charts for the dashboard: no JavaScript, no external assets.

Two shapes cover the dashboard: vertical stacked bars over time (with an optional
line, e.g. the counterfactual spend) and horizontal bars for rankings. Values are
nano-USD integers; every label is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape
from types import MappingProxyType

from gateway.ledger.money import format_usd

PALETTE = ("#0f766e", "#4338ca", "#b45309", "#be185d", "#0369a1", "#4d7c0f", "#7c3aed")
TIER_COLORS: Mapping[str, str] = MappingProxyType({"small": "#0f766e", "large": "#4338ca"})
LINE_COLOR = "#64748b"
GRID_COLOR = "#e2e8f0"
TEXT_COLOR = "#334155"
FONT = "font-family='system-ui, sans-serif' font-size='12'"


def color_for(name: str, order: Sequence[str]) -> str:
    if name in TIER_COLORS:
        return TIER_COLORS[name]
    others = [n for n in order if n not in TIER_COLORS]
    i = others.index(name) if name in others else len(others)
    return PALETTE[(i + 2) % len(PALETTE)]


def nice_step(span: float, ticks: int = 5) -> float:
    """A 1, 2, 2.5 or 5 x 10^k step so that about ``ticks`` steps cover ``span``."""
    if span <= 0:
        return 1.0
    rough = span / ticks
    exp = math.floor(math.log10(rough))
    for m in (1, 2, 2.5, 5, 10):
        candidate = m * 10.0**exp
        if candidate >= rough * (1 - 1e-12):
            return candidate
    return 10.0 ** (exp + 1)


def axis_label(nusd: float, step_nusd: float) -> str:
    """A tick label with just the decimals the step needs (at least cents)."""
    step = Decimal(repr(step_nusd / 1e9)).normalize()
    exponent = step.as_tuple().exponent
    places = min(9, max(2, -exponent if isinstance(exponent, int) else 2))
    return format_usd(round(nusd), places)


@dataclass(frozen=True, slots=True)
class Series:
    """One named series of nano-USD values, one per category, and its colour."""

    name: str
    values: Sequence[int]
    color: str


def stacked_bars(
    categories: Sequence[str],
    stacks: Sequence[Series],
    *,
    line: Series | None = None,
    title: str,
    width: int = 760,
    height: int = 280,
) -> str:
    """Vertical stacked bars per category (e.g. spend per day by tier), plus a line."""
    left, right, top, bottom = 78, 12, 12, 34
    pw, ph = width - left - right, height - top - bottom
    n = max(1, len(categories))
    totals = [sum(s.values[i] for s in stacks) for i in range(len(categories))]
    peak = max([*totals, *(line.values if line else []), 1])
    step = nice_step(peak)
    steps = max(1, math.ceil(peak / step - 1e-9))
    ymax = step * steps
    out = [
        f"<svg viewBox='0 0 {width} {height}' width='100%' role='img' "
        f"aria-label='{escape(title, quote=True)}' xmlns='http://www.w3.org/2000/svg'>"
    ]
    for k in range(steps + 1):
        y = top + ph - ph * k / steps
        out.append(
            f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
            f"stroke='{GRID_COLOR}'/>"
            f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' fill='{TEXT_COLOR}' "
            f"{FONT}>{escape(axis_label(step * k, step))}</text>"
        )
    band = pw / n
    bar = max(1.0, band * 0.72)
    every = max(1, math.ceil(n / 12))
    for i, cat in enumerate(categories):
        x = left + band * i + (band - bar) / 2
        base = float(top + ph)
        for s in stacks:
            v = s.values[i]
            if v <= 0:
                continue
            h = ph * v / ymax
            base -= h
            tip = f"{cat} · {s.name}: {format_usd(v)}"
            out.append(
                f"<rect x='{x:.1f}' y='{base:.1f}' width='{bar:.1f}' height='{h:.1f}' "
                f"fill='{s.color}'><title>{escape(tip)}</title></rect>"
            )
        if i % every == 0:
            out.append(
                f"<text x='{x + bar / 2:.1f}' y='{height - bottom + 16}' text-anchor='middle' "
                f"fill='{TEXT_COLOR}' {FONT}>{escape(cat)}</text>"
            )
    if line is not None and categories:
        pts = [
            (left + band * i + band / 2, top + ph - ph * v / ymax)
            for i, v in enumerate(line.values)
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(
            f"<polyline points='{path}' fill='none' stroke='{line.color}' stroke-width='2' "
            "stroke-dasharray='5 3'/>"
        )
        for (x, y), cat, v in zip(pts, categories, line.values, strict=True):
            tip = f"{cat} · {line.name}: {format_usd(v)}"
            out.append(
                f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{line.color}'>"
                f"<title>{escape(tip)}</title></circle>"
            )
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Bar:
    """One horizontal bar: a label, a nano-USD value, a colour and a note after the value."""

    label: str
    value: int
    color: str
    note: str = ""


def horizontal_bars(bars: Sequence[Bar], *, title: str, width: int = 420) -> str:
    """One labelled bar per item, largest first as given, value printed at its end."""
    row, label_w, value_w = 26, 150, 150
    height = max(1, len(bars)) * row + 8
    pw = width - label_w - value_w
    peak = max([b.value for b in bars] + [1])
    out = [
        f"<svg viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
        "style='max-width:100%;height:auto' role='img' "
        f"aria-label='{escape(title, quote=True)}' xmlns='http://www.w3.org/2000/svg'>"
    ]
    if not bars:
        out.append(
            f"<text x='0' y='18' fill='{TEXT_COLOR}' {FONT}>No requests in this range.</text>"
        )
    for i, b in enumerate(bars):
        y = 4 + i * row
        w = max(0.0, pw * b.value / peak) if b.value > 0 else 0.0
        label = b.label if len(b.label) <= 24 else b.label[:23] + "…"
        tip = f"{b.label}: {format_usd(b.value)}" + (f" ({b.note})" if b.note else "")
        out.append(
            f"<text x='{label_w - 8}' y='{y + 16}' text-anchor='end' fill='{TEXT_COLOR}' "
            f"{FONT}>{escape(label)}</text>"
            f"<rect x='{label_w}' y='{y + 3}' width='{w:.1f}' height='{row - 8}' rx='2' "
            f"fill='{b.color}'><title>{escape(tip)}</title></rect>"
            f"<text x='{label_w + w + 6:.1f}' y='{y + 16}' fill='{TEXT_COLOR}' {FONT}>"
            f"{escape(format_usd(b.value))}{escape('  ·  ' + b.note if b.note else '')}</text>"
        )
    out.append("</svg>")
    return "".join(out)
