"""The ledger benchmark's report: ``ledger.md`` from the JSON results, its notes, and
the spend dashboard's screenshot over demo data (``--dashboard``).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench import markdown as md
from bench import results
from bench.ledger_rig import TARGET_ADDED_P50_MS
from gateway.ledger.store import LedgerStore


def write_markdown(data: dict[str, Any], path: Path) -> None:
    c = data["config"]
    lines = [
        "# Ledger benchmark",
        "",
        f"Generated {data['generated_at']} by `python -m bench ledger"
        f"{' --quick' if c['quick'] else ''}` in {data['elapsed_s']} s. Machine: "
        f"{data['machine']['cpu']}, {data['machine']['cores']} cores, shared (load average "
        f"at start {data['load_average'][0]:.1f}).",
        "",
        "## Ledger on vs off, same run",
        "",
        f"Open loop at **{c['rate']:g} requests/s**, {c['duration']:g} s per backend in "
        f"{c['blocks']} ABBA blocks (off, on, on, off), Poisson arrivals; each request waits "
        f"{c['engine_ms']:g} ms for the engine (a thread that replies the way a socket does, "
        "waking the loop at once), builds its record and calls `recorder.record()`. Added "
        "latency is the difference, on - off, of the time from the engine's reply to the "
        "request's end (the only part the ledger can lengthen: the call itself, plus any "
        "event-loop delay from the writer's work and its thread holding the GIL), with a "
        "bootstrap 95% interval.",
        "",
    ]
    rows: list[list[object]] = []
    for name, r in data["on_vs_off"].items():
        on, off, a, z = (
            r["record_call_us"]["on"],
            r["record_call_us"]["off"],
            r["added_latency"],
            r["zero_loss"],
        )
        met = "met" if a["p50_ms"] <= TARGET_ADDED_P50_MS else "missed"
        rows.append([
            name, f"{on['p50']} / {on['p99']} / {on['max']}", f"{off['p50']} / {off['p99']}",
            f"{a['p50_ms']} [{a['p50_ci95_ms'][0]}, {a['p50_ci95_ms'][1]}]",
            f"{a['p99_ms']} [{a['p99_ci95_ms'][0]}, {a['p99_ci95_ms'][1]}]", f"**{met}**",
            f"{z['lost']} / {z['duplicates']} of {z['expected']}",
        ])  # fmt: skip
    lines += md.table(
        ["backend", "record() p50 / p99 / max, on (us)", "off (us)", "added p50 (ms)",
         "added p99 (ms)", "target p50 ≤ 0.3 ms", "records lost / doubled"],
        rows,
    )  # fmt: skip
    lines += ["", "## Writer throughput", ""]
    lines += md.table(
        ["backend", "records", "record() p50 / p99 (us)", "all committed in (s)", "records/s",
         "lost / doubled"],
        [[name, f"{r['records']:,}", f"{r['record_call_us']['p50']} / {r['record_call_us']['p99']}",
          r["committed_in_s"], f"{r['records_per_s']:,}",
          f"{r['zero_loss']['lost']} / {r['zero_loss']['duplicates']}"]
         for name, r in data["throughput"].items()],
    )  # fmt: skip
    lines += [
        "",
        "## Spill path (queue full, database down), then replay",
        "",
        "The replay time runs from the moment the database is back, so it includes the wait "
        "for the writer's next retry (backoff up to `retry_max_s`, 0.5 s here).",
        "",
    ]
    rows = []
    for name, r in data["spill"].items():
        u, z = r["record_call_us_queue_full"], r["zero_loss"]
        rows.append([
            name, f"{u['p50']} / {u['p99']} / {u['max']}", f"{r['spilled']:,}",
            f"{r['replay_records_per_s']:,}", f"{z['lost']} / {z['duplicates']}",
        ])  # fmt: skip
    lines += md.table(
        ["backend", "record() into the spill file p50 / p99 / max (us)", "spilled",
         "replay records/s", "lost / doubled"],
        rows,
    )  # fmt: skip
    lines += ["", "## Reading it", "", *data["notes"], ""]
    results.write_markdown(path, lines)


def notes(data: dict[str, Any]) -> list[str]:
    out = [
        "- `record()` is a bounded deque append plus the record's JSON line for the "
        "write-ahead journal (about 10 µs together), whatever the database does; the "
        "journal's lines go out in one `write` per event-loop turn. The database work "
        "happens in a worker thread in batches of `batch_size`.",
        "- Added p50 is about ten microseconds: the call itself plus a little loop time "
        "for batching and the journal's write. Added p99 moves by tenths of a "
        "millisecond either way between backends and runs (its interval often straddles "
        "zero or has the other sign): on a shared 2-core host that is the machine's noise.",
        "- When the queue is full (or the database is down) a record costs one buffered "
        "line write to the spill file; the writer fsyncs in batches and replays later, "
        "idempotently.",
    ]
    for name, r in data["on_vs_off"].items():
        a = r["added_latency"]
        out.append(
            f"- {name}: added p50 {a['p50_ms']} ms (target ≤ {TARGET_ADDED_P50_MS} ms), "
            f"{r['zero_loss']['stored']} of {r['zero_loss']['expected']} records stored once."
        )
    return out


def dashboard_screenshot(out: Path, workdir: Path) -> None:
    """Render the dashboard over demo data and photograph it with headless Chromium."""
    from gateway.ledger.dashboard import DashboardData, default_range, render
    from gateway.ledger.reports import Reports
    from tests.support.ledger import demo_records

    url = f"sqlite:///{workdir}/demo.db"
    store = LedgerStore.from_url(url)
    store.migrate()
    now = dt.datetime.now(dt.UTC)
    store.insert(demo_records(now))
    lo, hi = default_range(now)
    page = workdir / "dashboard.html"
    page.write_text(render(DashboardData.gather(Reports(store.engine), lo, hi)))
    store.dispose()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--dashboard needs chromium (apt-get install -y chromium)")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={workdir / 'chromium'}",
            f"--screenshot={out}",
            "--window-size=1400,1250",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {out}")
