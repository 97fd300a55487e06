"""The spend dashboard: rendered on the server, checked in real headless Chromium."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from engines.standin.process import StandinProcess
from gateway.cli_finance import register
from gateway.config import Settings
from gateway.ledger.dashboard import DashboardData, default_range, render
from gateway.ledger.money import format_usd
from gateway.ledger.reports import Reports
from gateway.ledger.store import LedgerStore
from tests.support import ADMIN_TOKEN, EngineSpec, gateway_config, serve_in_thread
from tests.support.ledger import demo_records, make_record


def test_render_escapes_and_handles_an_empty_range(tmp_path: Path) -> None:
    store = LedgerStore.from_url(f"sqlite:///{tmp_path}/l.db")
    store.migrate()
    now = dt.datetime.now(dt.UTC)
    lo, hi = default_range(now)
    empty = render(DashboardData.gather(Reports(store.engine), lo, hi))
    assert "No requests in this range." in empty and format_usd(0) in empty
    store.insert([make_record(1, finished_at=now, team="<script>alert(1)</script>")])
    page = render(DashboardData.gather(Reports(store.engine), lo, hi))
    assert "<script>" not in page and "&lt;script&gt;" in page
    year = render(DashboardData.gather(Reports(store.engine), hi - dt.timedelta(days=365), hi))
    assert "Spend per month" in year
    store.dispose()


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("headless Chromium is required: apt-get install -y chromium")
    return found


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        # offline: any host but the gateway's fails to resolve
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split("[│┃]", line)[1:-1]]


@pytest.mark.browser
def test_dashboard_in_chromium_shows_what_the_report_prints(
    standin_pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = LedgerStore.from_url(url)
    store.migrate()
    demo = demo_records(now)
    store.insert(demo)
    store.dispose()
    specs = [EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small")]
    settings = Settings(**gateway_config(tmp_path, specs, ledger={"url": url}))

    # What `tollgate report` prints for the dashboard's default range, by key.
    lo, hi = default_range(now)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    printed = CliRunner().invoke(
        app,
        [
            "report",
            "--db",
            url,
            "-g",
            "key",
            "--start",
            lo.date().isoformat(),
            "--end",
            (hi - dt.timedelta(days=1)).date().isoformat(),
        ],
        env={"COLUMNS": "200"},
    )
    assert printed.exit_code == 0, printed.output
    rows = [_cells(ln) for ln in printed.stdout.splitlines() if ln.startswith(("│", "┃"))]
    header = next(r for r in rows if "requests" in r)
    cost_at = header.index("cost")
    by_key = {r[0]: r[cost_at] for r in rows if r[0].startswith("key-")}
    total = next(r for r in rows if r[0] == "TOTAL")
    assert len(by_key) == 4

    with serve_in_thread(settings) as gw:
        page = f"{gw.base_url}/admin/dashboard?token={ADMIN_TOKEN}"
        dom = chromium(page, tmp_path / "profile", "--dump-dom").stdout
        shot = tmp_path / "dashboard.png"
        chromium(
            page,
            tmp_path / "profile2",
            f"--screenshot={shot}",
            "--window-size=1400,1700",
        )
    text = unescape(dom)
    assert "Tollgate · spend and savings" in text  # logged in through the cookie
    kpi = re.search(
        r'data-kpi="cost"><div class="label">Spend</div><div class="value">([^<]+)<', text
    )
    assert kpi is not None and kpi.group(1) == total[cost_at]
    savings = re.search(r'data-kpi="savings".*?class="value">([^<]+)<', text)
    assert savings is not None and savings.group(1) == total[header.index("savings")]
    # Saved by routing: only the requests a policy routed (`auto`), none that named a tier.
    routed = [r for r in demo if lo <= r.finished_at < hi and r.requested_model == "auto"]
    assert savings.group(1) == format_usd(sum(r.counterfactual_nusd - r.cost_nusd for r in routed))
    for key, cost in by_key.items():
        row = re.search(rf'<tr data-key="{key}">(.*?)</tr>', text)
        assert row is not None and f'data-col="cost">{cost}<' in row.group(1), key
    assert text.count("<svg") >= 4 and "<script" not in text
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000
