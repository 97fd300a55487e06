"""The metered soak's figures and verdicts (``bench.soak_metered`` runs it; the report
and plot are :mod:`bench.soak_metered_markdown`).

:func:`summarize` turns the load's bins and the per-second samples into plain figures;
everything after it works on plain dicts, so a report can be redrawn from the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench import stats
from bench.soak_load import Kind, LoadResult

#: Flat: RSS grows by less than this per 1,000 requests after the warm-up (a leak of
#: one byte a request is 1 KiB per 1,000; the old soak's SQLite leak was 1,500).
RSS_SLOPE_MAX_KIB = 50.0
#: Stable: the last window's p99 is at most this multiple of the first window's.
P99_GROWTH_MAX = 1.5
#: The windows compared, after the warm-up (shorter in a short run: half of what is left).
P99_WINDOW_S = 600.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One second of the soak: requests finished, RSS of the gateway and of the load
    generator itself (to show it does not grow either), requests in flight."""

    t_s: float
    requests: int
    rss_kib: int
    loadgen_rss_kib: int
    in_flight: int


def rss_slope(samples: Sequence[Sample], warmup_s: float) -> float | None:
    """Least-squares slope of the gateway's RSS over requests done after the warm-up,
    in KiB per 1,000 requests (None with fewer than 3 samples or no requests)."""
    warm = [s for s in samples if s.t_s >= warmup_s]
    if len(warm) < 3:
        return None
    xs = np.array([s.requests for s in warm], dtype=np.float64)
    ys = np.array([s.rss_kib for s in warm], dtype=np.float64)
    var = float(((xs - xs.mean()) ** 2).sum())
    if var == 0:
        return None
    return 1000 * float(((xs - xs.mean()) * (ys - ys.mean())).sum()) / var


def windows(n_bins: int, bin_s: float, warmup_s: float) -> tuple[range, range] | None:
    """The first and the last window of whole bins after the warm-up, each
    ``P99_WINDOW_S`` long or half of what is left (they never overlap); None when fewer
    than 2 bins are left."""
    first = math.ceil(warmup_s / bin_s - 1e-9)
    usable = n_bins - first
    if usable < 2:
        return None
    width = max(1, min(round(P99_WINDOW_S / bin_s), usable // 2))
    return range(first, first + width), range(n_bins - width, n_bins)


def summarize(
    r: LoadResult, kinds: Mapping[str, Kind], samples: Sequence[Sample], warmup_s: float
) -> dict[str, Any]:
    """The soak's figures: per bin, the two windows, RSS, goodput."""
    gen = tuple(k for k, v in kinds.items() if v.generation)
    rows = []
    for b in r.bins:
        end = b.start_s + r.bin_s
        rss = [s.rss_kib for s in samples if b.start_s <= s.t_s < end]
        rows.append(
            {
                "start_s": b.start_s,
                "sent": b.sent,
                "right": dict(b.right),
                "errors": dict(b.errors),
                "goodput_rps": round(sum(b.right.get(k, 0) for k in gen) / r.bin_s, 1),
                "ms": {k: stats.percentiles(b.latencies((k,))) for k in gen},
                "generation_ms": stats.percentiles(b.latencies(gen)),
                "ttft_ms": {k: stats.percentiles(v) for k, v in b.ttft.items()},
                "rss_mib_end": round(rss[-1] / 1024, 1) if rss else None,
            }
        )
    win = windows(len(r.bins), r.bin_s, warmup_s)
    window_ms: dict[str, Any] = {}
    if win is not None:
        for name, span in zip(("first", "last"), win, strict=True):
            lat = np.concatenate([r.bins[i].latencies(gen) for i in span])
            window_ms[name] = {
                "from_s": span.start * r.bin_s,
                "to_s": min(span.stop * r.bin_s, r.duration_s),
                **stats.percentiles(lat),
            }
    warm = [s for s in samples if s.t_s >= warmup_s]
    gen_sent = sum(r.sent[k] for k in gen)
    answered = r.answered(kinds)
    return {
        "rate_rps": r.rate,
        "duration_s": r.duration_s,
        "bin_s": r.bin_s,
        "warmup_s": warmup_s,
        "wall_s": round(r.wall_s, 2),
        "sent": dict(r.sent),
        "right": dict(r.right),
        "errors": dict(sorted(r.errors.items())),
        "answered": answered,
        "generation_kinds": list(gen),
        "generation_sent": gen_sent,
        "generation_failed": sum(
            n for key, n in r.errors.items() if kinds[key.split(" ", 1)[0]].generation
        ),
        "goodput_rps": round(answered / r.duration_s, 1),
        "goodput_share": round(answered / gen_sent, 5) if gen_sent else None,
        "connections_opened": r.connections_opened,
        "generation_ms": stats.percentiles(r.latencies(gen), (50, 99, 99.9)),
        "windows_ms": window_ms,
        "rss_slope_kib_per_1k": _round(rss_slope(samples, warmup_s), 2),
        "rss_mib": {
            "start": _mib(samples[0].rss_kib) if samples else None,
            "after_warmup": _mib(warm[0].rss_kib) if warm else None,
            "end": _mib(samples[-1].rss_kib) if samples else None,
            "max": _mib(max(s.rss_kib for s in samples)) if samples else None,
        },
        "loadgen_rss_mib": {
            "start": _mib(samples[0].loadgen_rss_kib) if samples else None,
            "end": _mib(samples[-1].loadgen_rss_kib) if samples else None,
        },
        "bins": rows,
        "samples": [asdict(s) for s in samples],
    }


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


# ---------------------------------------------------------------------------- verdicts


def judge(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The four checks of issue 13 item 9, each met / missed (None: not measurable)."""
    s, led, drain = data["soak"], data["ledger"], data["drain"]
    out = []
    slope = s["rss_slope_kib_per_1k"]
    out.append(
        {
            "check": "RSS slope flat",
            "met": None if slope is None else slope < RSS_SLOPE_MAX_KIB,
            "detail": f"{_num(slope, '+.1f')} KiB per 1,000 requests after the "
            f"{s['warmup_s']:g} s warm-up (threshold < {RSS_SLOPE_MAX_KIB:g}); RSS "
            f"{s['rss_mib']['after_warmup']} → {s['rss_mib']['end']} MiB",
        }
    )
    w = s["windows_ms"]
    first, last = (w.get("first") or {}).get("p99"), (w.get("last") or {}).get("p99")
    ratio = last / first if first and last is not None else None
    out.append(
        {
            "check": "p99 stable",
            "met": None if ratio is None else ratio <= P99_GROWTH_MAX,
            "detail": "not enough bins after the warm-up"
            if ratio is None
            else f"last window ({_span(w['last'])}) p99 {last:.2f} ms vs first "
            f"({_span(w['first'])}) {first:.2f} ms: {ratio:.2f}x (threshold ≤ "
            f"{P99_GROWTH_MAX:g}x)",
        }
    )
    extra = led["rows"] - led["ok_rows"]
    stable = data["ledger_rows_after_shutdown"] == led["rows"]
    out.append(
        {
            "check": "ledger count == answered",
            "met": bool(
                drain["drained"]
                and led["ok_rows"] == s["answered"]
                and extra <= s["generation_failed"]
                and stable
            ),
            "detail": f"{led['ok_rows']:,} ok rows in PostgreSQL vs {s['answered']:,} answered "
            f"200s (chat + streams); {extra:,} other rows for {s['generation_failed']:,} failed "
            f"requests that may have reached the engine; refusals ("
            + ", ".join(
                f"{k} {v:,}" for k, v in s["right"].items() if k not in s["generation_kinds"]
            )
            + f") none; writer drained in {drain['waited_s']:g} s"
            f"{'' if drain['drained'] else ' (NOT drained)'}; rows after the gateway's "
            f"shutdown {data['ledger_rows_after_shutdown']:,}",
        }
    )
    rec = data["reconcile"]
    ok = all(r.get("ok") and r.get("exit_code") == 0 for r in rec.values())
    totals = {p: (r.get("counter_total_nusd"), r.get("ledger_total_nusd")) for p, r in rec.items()}
    nonzero = all((c or 0) > 0 for c, _ in totals.values())
    out.append(
        {
            "check": "Redis counters reconcile with the ledger",
            "met": bool(
                ok and nonzero and all(lt == led["cost_nusd"] for _, lt in totals.values())
            ),
            "detail": "; ".join(
                f"{p}: counters {usd(c)} vs ledger {usd(lt)}, exit {rec[p].get('exit_code')}, "
                f"{len(rec[p].get('mismatches', []))} mismatched keys"
                for p, (c, lt) in totals.items()
            )
            + f" (ledger sum of cost_nusd {usd(led['cost_nusd'])})",
        }
    )
    return out


def _span(w: Mapping[str, Any]) -> str:
    return f"{w['from_s']:g}-{w['to_s']:g} s"


def usd(nusd: int | None) -> str:
    return "-" if nusd is None else f"${nusd / 1e9:.6f}"


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def verdict_lines(data: Mapping[str, Any]) -> list[str]:
    word = {True: "PASS", False: "FAIL", None: "n/a "}
    return [f"{word[v['met']]}  {v['check']}: {v['detail']}" for v in data["verdicts"]]
