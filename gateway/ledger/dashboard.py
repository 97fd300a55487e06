"""The spend dashboard: one self-contained HTML page, charts drawn as inline SVG.

Everything is rendered on the server from the same report queries and the same money
formatting as ``tollgate report``, so the page shows exactly the numbers the command
prints. No script, no stylesheet or font from elsewhere: it works offline.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from gateway.ledger.charts import (
    LINE_COLOR,
    Bar,
    Series,
    color_for,
    horizontal_bars,
    stacked_bars,
)
from gateway.ledger.money import format_usd
from gateway.ledger.report_types import Report, ReportQuery, Totals
from gateway.ledger.reports import Reports

DEFAULT_DAYS = 30
#: Longer ranges are charted per month instead of per day.
MAX_DAILY_BARS = 92
TOP_N = 10


def default_range(now: dt.datetime, days: int = DEFAULT_DAYS) -> tuple[dt.datetime, dt.datetime]:
    """The last ``days`` UTC days, today included."""
    today = now.astimezone(dt.UTC).date()
    end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
    return end - dt.timedelta(days=days), end


def _periods(start: dt.datetime, end: dt.datetime, monthly: bool) -> list[str]:
    out: list[str] = []
    day = start.astimezone(dt.UTC).date()
    last = (end - dt.timedelta(microseconds=1)).astimezone(dt.UTC).date()
    while day <= last:
        label = day.strftime("%Y-%m") if monthly else day.isoformat()
        if not out or out[-1] != label:
            out.append(label)
        day += dt.timedelta(days=1)
    return out


@dataclass(frozen=True, slots=True)
class DashboardData:
    """What the page shows, gathered in one go (blocking: call from a thread)."""

    start: dt.datetime
    end: dt.datetime
    totals: Totals
    periods: list[str]
    monthly: bool
    spend_by_tier: dict[str, list[int]]
    counterfactual: list[int]
    by_key: Report
    by_model_tier: Report
    by_tier: Report
    price_versions: list[str]
    writer: Mapping[str, Any] | None = None
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def gather(
        cls,
        reports: Reports,
        start: dt.datetime,
        end: dt.datetime,
        writer: Mapping[str, Any] | None = None,
    ) -> DashboardData:
        monthly = (end - start).days > MAX_DAILY_BARS
        period = "month" if monthly else "day"
        periods = _periods(start, end, monthly)
        index = {p: i for i, p in enumerate(periods)}
        over_time = reports.report(ReportQuery((period, "tier"), start, end))
        tiers = sorted({str(r.group["tier"]) for r in over_time.rows})
        spend = {t: [0] * len(periods) for t in tiers}
        counterfactual = [0] * len(periods)
        for r in over_time.rows:
            i = index.get(str(r.group[period]))
            if i is None:
                continue
            spend[str(r.group["tier"])][i] += r.totals.cost_nusd
            counterfactual[i] += r.totals.counterfactual_nusd
        return cls(
            start=start,
            end=end,
            totals=over_time.totals,
            periods=periods,
            monthly=monthly,
            spend_by_tier=spend,
            counterfactual=counterfactual,
            by_key=reports.report(ReportQuery(("key", "team"), start, end)),
            by_model_tier=reports.report(ReportQuery(("model", "tier"), start, end)),
            by_tier=reports.report(ReportQuery(("tier",), start, end)),
            price_versions=reports.price_versions(start, end),
            writer=writer,
        )


# ---------------------------------------------------------------------------- page

_CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--card:#fff;--bg:#f8fafc;--good:#047857}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,sans-serif;color:var(--ink);
background:var(--bg)}header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;
justify-content:space-between;padding:14px 24px;background:#0f172a;color:#f8fafc}
header h1{font-size:18px;margin:0}header form{display:flex;gap:8px;align-items:center}
header input,header button{font:inherit;padding:4px 8px;border-radius:6px;border:1px solid #334155}
header a{color:#cbd5e1}main{padding:18px 24px;max-width:1400px;margin:auto}
.range{color:var(--muted);margin:0 0 12px}.kpis{display:grid;gap:12px;
grid-template-columns:repeat(auto-fit,minmax(170px,1fr));margin-bottom:16px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.kpi .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.kpi .value{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.kpi .sub{color:var(--muted);font-size:12px}.kpi.good .value{color:var(--good)}
.grid{display:grid;gap:16px;grid-template-columns:repeat(auto-fit,minmax(400px,1fr))}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.card h2{font-size:15px;margin:0 0 8px}.wide{grid-column:1/-1}.legend{display:flex;gap:14px;
flex-wrap:wrap;color:var(--muted);font-size:12px;margin-top:4px}.sw{display:inline-block;
width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.dash{display:inline-block;width:18px;border-top:2px dashed #64748b;margin-right:5px;
vertical-align:3px}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child,th.l,td.l{text-align:left}th{color:var(--muted);font-weight:600;
font-size:12px}tr.total td{font-weight:650}.big{font-size:28px;font-weight:700;color:var(--good)}
footer{color:var(--muted);font-size:12px;padding:0 24px 24px;max-width:1400px;margin:auto}
"""


def _kpi(kid: str, label: str, value: str, sub: str = "", cls: str = "") -> str:
    return (
        f"<div class='kpi {cls}' data-kpi='{kid}'><div class='label'>{escape(label)}</div>"
        f"<div class='value'>{escape(value)}</div><div class='sub'>{escape(sub)}</div></div>"
    )


def _pct(t: Totals) -> str:
    return "" if t.savings_pct is None else f"{t.savings_pct:.1f}% of the reference cost"


def _legend(items: Sequence[tuple[str, str]], dashed: str | None = None) -> str:
    parts = [f"<span><i class='sw' style='background:{c}'></i>{escape(n)}</span>" for n, c in items]
    if dashed:
        parts.append(f"<span><i class='dash'></i>{escape(dashed)}</span>")
    return "<div class='legend'>" + "".join(parts) + "</div>"


def _spenders_table(report: Report) -> str:
    rows = []
    for r in report.rows[:TOP_N]:
        t = r.totals
        rows.append(
            f"<tr data-key='{escape(str(r.group['key_id']), quote=True)}'>"
            f"<td class='l'>{escape(str(r.group['key_prefix']))}…</td>"
            f"<td class='l'>{escape(str(r.group['key_id']))}</td>"
            f"<td class='l'>{escape(str(r.group['team'] or '(none)'))}</td>"
            f"<td>{t.requests:,}</td><td>{t.tokens:,}</td>"
            f"<td data-col='cost'>{escape(format_usd(t.cost_nusd))}</td>"
            f"<td>{escape(format_usd(t.counterfactual_nusd))}</td>"
            f"<td>{escape(format_usd(t.savings_nusd))}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td class='l' colspan='8'>No requests in this range.</td></tr>")
    return (
        "<table><thead><tr><th class='l'>key</th><th class='l'>key id</th>"
        "<th class='l'>team</th><th>requests</th><th>tokens</th><th>cost</th>"
        "<th>counterfactual</th><th>savings</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _tier_table(report: Report) -> str:
    rows = [
        f"<tr><td class='l'>{escape(str(r.group['tier']))}</td><td>{r.totals.requests:,}</td>"
        f"<td>{escape(format_usd(r.totals.cost_nusd))}</td>"
        f"<td>{escape(format_usd(r.totals.savings_nusd))}</td></tr>"
        for r in report.rows
    ]
    return (
        "<table><thead><tr><th class='l'>tier</th><th>requests</th><th>cost</th>"
        "<th>saved</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _writer_line(writer: Mapping[str, Any] | None) -> str:
    if not writer:
        return ""
    state = "up" if writer.get("database_up") else "DOWN (records are spilling to disk)"
    return (
        f"Ledger writer: database {state}; queue {writer.get('queue_depth', 0):,}"
        f"/{writer.get('queue_capacity', 0):,}; written {writer.get('written', 0):,}; "
        f"spilled {writer.get('spilled', 0):,}; replayed {writer.get('replayed', 0):,}; "
        f"pending spill {writer.get('spill_pending_bytes', 0):,} bytes. "
    )


def render(data: DashboardData) -> str:
    t = data.totals
    tiers = list(data.spend_by_tier)
    stacks = [
        Series(name, values, color_for(name, tiers)) for name, values in data.spend_by_tier.items()
    ]
    unit = "month" if data.monthly else "day"
    over_time = stacked_bars(
        data.periods if data.monthly else [p[5:] for p in data.periods],
        stacks,
        line=Series("all on the reference tier", data.counterfactual, LINE_COLOR),
        title=f"Spend per {unit} by tier",
        width=1320,
        height=300,
    )
    key_bars = [
        Bar(
            f"{r.group['key_prefix']}…",
            r.totals.cost_nusd,
            color_for("key", []),
            f"{r.totals.requests:,} req",
        )
        for r in data.by_key.rows[:TOP_N]
    ]
    model_bars = [
        Bar(
            f"{r.group['model']} → {r.group['tier']}",
            r.totals.cost_nusd,
            color_for(str(r.group["tier"]), tiers),
            f"{r.totals.requests:,} req",
        )
        for r in data.by_model_tier.rows[:TOP_N]
    ]
    savings_bars = [
        Bar("actual spend", t.cost_nusd, "#0f766e"),
        Bar("all on reference tier", t.counterfactual_nusd, LINE_COLOR),
    ]
    last_day = (data.end - dt.timedelta(microseconds=1)).date().isoformat()
    first_day = data.start.date().isoformat()
    kpis = "".join(
        [
            _kpi("cost", "Spend", format_usd(t.cost_nusd), f"{t.requests:,} requests"),
            _kpi(
                "counterfactual",
                "All on reference tier",
                format_usd(t.counterfactual_nusd),
                "what routing avoided",
            ),
            _kpi("savings", "Saved by routing", format_usd(t.savings_nusd), _pct(t), "good"),
            _kpi(
                "requests",
                "Requests",
                f"{t.requests:,}",
                f"{t.errors:,} not ok · {t.estimated:,} estimated usage",
            ),
            _kpi(
                "tokens",
                "Tokens",
                f"{t.tokens:,}",
                f"{t.prompt_tokens:,} prompt · {t.completion_tokens:,} completion",
            ),
        ]
    )
    cards = [
        _card(
            f"Spend per {unit}",
            over_time + _legend([(s.name, s.color) for s in stacks], "all on the reference tier"),
            wide=True,
        ),
        _card(
            "Saved by routing",
            f"<div class='big' data-kpi='savings-big'>{escape(format_usd(t.savings_nusd))}</div>"
            f"<p class='range'>{escape(_pct(t) or 'no reference price')}</p>"
            + horizontal_bars(savings_bars, title="Actual against reference spend")
            + _tier_table(data.by_tier),
        ),
        _card(f"Spend by key (top {TOP_N})", horizontal_bars(key_bars, title="Spend by key")),
        _card(
            "Spend by model and tier",
            horizontal_bars(model_bars, title="Spend by model and tier"),
        ),
        _card("Top spenders", _spenders_table(data.by_key), wide=True, ident="top-spenders"),
    ]
    versions = ", ".join(data.price_versions) or "none"
    generated = data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tollgate · spend</title><style>{_CSS}</style></head><body>
<header><h1>Tollgate · spend and savings</h1>
<form method="get" action="/admin/dashboard">
<label>from <input type="date" name="start" value="{first_day}"></label>
<label>to <input type="date" name="end" value="{last_day}"></label>
<button type="submit">show</button></form>
<a href="/admin/logout">log out</a></header>
<main>
<p class="range" id="range">{first_day} to {last_day} (UTC, both days included)</p>
<section class="kpis">{kpis}</section>
<section class="grid">{"".join(cards)}</section></main>
<footer>{escape(_writer_line(data.writer))}Price versions: {escape(versions)}.
Generated {generated}.</footer>
</body></html>"""


def _card(title: str, body: str, *, wide: bool = False, ident: str | None = None) -> str:
    cls = "card wide" if wide else "card"
    attr = f" id='{ident}'" if ident else ""
    return f"<div class='{cls}'{attr}><h2>{escape(title)}</h2>{body}</div>"


def login_page(error: str | None = None, next_path: str = "/admin/dashboard") -> str:
    message = f"<p class='err'>{escape(error)}</p>" if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tollgate · admin login</title>
<style>body{{font:15px system-ui,sans-serif;display:grid;place-items:center;height:100vh;
margin:0;background:#f8fafc}}form{{background:#fff;border:1px solid #e2e8f0;border-radius:10px;
padding:24px;display:grid;gap:12px;width:340px}}input,button{{font:inherit;padding:8px;
border-radius:6px;border:1px solid #cbd5e1}}.err{{color:#b91c1c;margin:0}}</style></head>
<body><form method="post" action="/admin/login">
<h1 style="font-size:18px;margin:0">Tollgate admin</h1>{message}
<label>Admin token <input type="password" name="token" autocomplete="current-password"
required autofocus style="width:100%"></label>
<input type="hidden" name="next" value="{escape(next_path, quote=True)}">
<button type="submit">Log in</button></form></body></html>"""
