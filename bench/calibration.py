"""``python -m bench calibration``: the learned router calibrated and retrained, on
**synthetic** labelled traffic (a demonstration of the commands, not a measurement of
routing quality on real traffic).

A SQLite ledger is seeded with a week of requests from ``learned_train``'s generator,
routed by the shipped model (a share sent to the small tier whatever their score, as an
exploration sample), a share of them rated through the feedback table by a hidden rule
the shipped model does not know (:mod:`tests.support.routing_traffic`). Then, as an
operator would: ``tollgate routing calibrate --target-large-share 0.3``, ``tollgate
routing train``, and ``calibrate`` again under the trained weights. Writes
``calibration.md`` (the commands' output and the offline evaluation) and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

from bench.results import ROOT, add_arguments, out_dir, write_markdown
from gateway.cli_routing import app
from gateway.ledger.feedback import FeedbackStore
from gateway.ledger.store import LedgerStore
from tests.support import EngineSpec, gateway_config, write_config
from tests.support.routing_traffic import traffic

SYNTHETIC = (
    "**Synthetic data.** Requests from `learned_train`'s templates; the small tier's "
    "answers rated good or bad by a hidden rule (it copes with code, fails on maths, "
    "proofs and long outputs; 3% noise), not by people. It shows what the commands do "
    "and that training recovers a rule the shipped model lacks; it says nothing about "
    "real traffic."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench calibration", description=__doc__)
    add_arguments(parser, "1,000 requests instead of 4,000")
    parser.add_argument("--requests", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.requests or (1000 if args.quick else 4000)
    out = out_dir(args.quick, args.out)
    with tempfile.TemporaryDirectory(prefix="tg-calibration-") as tmp:
        return _run(Path(tmp), n, out)


def _run(tmp: Path, n: int, out: Path) -> int:
    specs = [
        EngineSpec("small-0", "http://127.0.0.1:9", "small", "standin-small"),
        EngineSpec("large-0", "http://127.0.0.1:9", "large", "standin-large"),
    ]
    config = write_config(tmp, gateway_config(tmp, specs))
    url = f"sqlite:///{tmp}/ledger.db"
    store = LedgerStore.from_url(url)
    store.migrate()
    now = dt.datetime.now(dt.UTC)
    rows = traffic(n, seed=21, finished=now - dt.timedelta(minutes=5), rated=0.5, explore=0.3)
    store.insert([r.record for r in rows])
    feedback = FeedbackStore(store.engine)
    for r in rows:
        if r.feedback is not None:
            feedback.put(r.record.key_id, r.feedback)
    store.dispose()
    state = tmp / "routing-state.json"
    common = ["--db", url, "--state-file", str(state), "-c", str(config)]
    runner = CliRunner()
    log: list[str] = []

    def tollgate(*argv: str) -> str:
        started = time.perf_counter()
        result = runner.invoke(app, [*argv, *common])
        took = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"tollgate routing {' '.join(argv)} failed:\n{result.output}")
        log.append(_tidy(f"$ tollgate routing {shlex.join(argv)}   # {took:.1f} s", tmp))
        return _tidy(str(result.output), tmp)

    before = tollgate("calibrate", "--target-large-share", "0.3", "--since", "7d")
    log.append(before.strip())
    report = out / "calibration"
    trained = tollgate(
        "train", "--min-labels", "200", "--target-large-share", "0.3", "--report", str(report),
        "--note", "SYNTHETIC data (see above)",
        "--plot-title", "SYNTHETIC demo: learned router, cost vs quality (held-out rows)",
    )  # fmt: skip
    log.append(trained.strip().splitlines()[-1])
    after = tollgate("calibrate", "--target-large-share", "0.3", "--since", "7d")
    log.append(after.strip())
    evaluation = report.with_suffix(".md").read_text().splitlines()
    rated = sum(1 for r in rows if r.feedback is not None)
    lines = [
        "# Learned router: calibration and training on our own traffic (synthetic demo)",
        "",
        SYNTHETIC,
        "",
        f"Ledger: {n} requests in the last week, routed by the shipped model (threshold "
        f"0.5), 30% sent to the small tier whatever their score as an exploration sample; "
        f"{rated} rated through the feedback table. `python -m bench calibration` "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, SQLite).",
        "",
        "```",
        *log,
        "```",
        "",
        *["#" + line if line.startswith("# ") else line for line in evaluation],
        "",
        "![cost against quality](calibration.png)",
    ]
    write_markdown(report.with_suffix(".md"), lines)
    print("\n".join(lines))
    return 0


def _tidy(text: str, tmp: Path) -> str:
    """Paths as a reader would type them: the repository's relative, the scratch folder's
    (database, config, state file) bare."""
    return text.replace(f"{tmp}/", "").replace(f"{ROOT}/", "")
