"""Fuzz: schemathesis against the whole API for longer than CI can afford.

``python -m bench fuzz [--examples 300] [--seed N]``

The gateway (in a thread, one process) sits in front of three stand-in engines that
never fail (small, large, embed); the fuzzer reads the gateway's ``/openapi.json`` and
sends every operation ``--examples`` positive and as many negative cases, plus the
explicit ones (``"n": "2"``...), with the client key on ``/v1`` and the admin token on
``/admin``. It checks: no 5xx, every answer as documented (status, content type,
headers, body), negative data refused, credentials required, and no stack trace or
engine URL in any body. ``tests/api/test_fuzz.py`` runs the same with 20 examples.

Results: ``bench/results/fuzz.{md,json}``: counts per route and status, and findings.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import markdown as md
from bench import results
from engines.standin.process import StandinProcess
from tests.support import serve_in_thread
from tests.support.fuzz import FuzzReport, fuzz, fuzz_settings, target


@contextlib.contextmanager
def standins() -> Iterator[dict[str, StandinProcess]]:
    engines = {
        "small": StandinProcess(model="standin-small"),
        "large": StandinProcess(model="standin-large"),
        "embed": StandinProcess(model="standin-embed", embeddings=True),
    }
    for p in engines.values():
        p.start()
    try:
        yield engines
    finally:
        for p in engines.values():
            p.stop()


def run(examples: int, seed: int) -> tuple[FuzzReport, float]:
    with (
        standins() as engines,
        tempfile.TemporaryDirectory() as tmp,
        serve_in_thread(fuzz_settings(Path(tmp), engines)) as gw,
    ):
        started = time.perf_counter()
        report = fuzz(target(gw), max_examples=examples, seed=seed)
        return report, time.perf_counter() - started


def summary(report: FuzzReport, examples: int, seed: int, seconds: float) -> dict[str, Any]:
    return {
        "examples_per_operation_and_mode": examples,
        "seed": seed,
        "seconds": round(seconds, 1),
        "requests": report.requests,
        "statuses": {
            op: {str(s): n for s, n in sorted(c.items())}
            for op, c in sorted(report.statuses.items())
        },
        "explicit": [
            {"operation": op, "body": body, "status": status}
            for op, body, status in report.explicit
        ],
        "findings": [vars(f) for f in report.findings.values()],
        "git": results.git_state(),
    }


def markdown(data: dict[str, Any]) -> list[str]:
    statuses = sorted({s for counts in data["statuses"].values() for s in counts}, key=int)
    lines = [
        "# Fuzz: schemathesis against the gateway's OpenAPI document",
        "",
        f"{data['requests']} requests in {data['seconds']} s: "
        f"{data['examples_per_operation_and_mode']} positive and as many negative cases "
        f"per operation (fewer where the schema allows fewer), seed {data['seed']}, "
        f"commit {data['git'].get('commit', '?')}. Run: `python -m bench fuzz`.",
        "",
        f"**Findings: {len(data['findings'])}.** 5xx answers: "
        f"{sum(n for c in data['statuses'].values() for s, n in c.items() if int(s) >= 500)}.",
        "",
        "## Requests per route and status",
        "",
        *md.table(
            ["operation", "requests", *statuses],
            [
                [op, sum(c.values()), *(c.get(s, "") for s in statuses)]
                for op, c in data["statuses"].items()
            ],
        ),
        "",
        "## Explicit cases (always tried)",
        "",
        *md.table(
            ["operation", "body", "status"],
            [[e["operation"], f"`{e['body']}`", e["status"]] for e in data["explicit"]],
        ),
        "",
        "## Findings",
        "",
    ]
    for f in data["findings"]:
        lines += [f"### {f['operation']}: {f['check']} (x{f['count']})", "", "```"]
        lines += [f["message"][:1500], "", f["example"], "```", ""]
    if not data["findings"]:
        lines.append("None.")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=300, help="per operation and mode (300)")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    results.add_arguments(ap, "10 examples")
    args = ap.parse_args(argv)
    out = results.out_dir(args.quick, args.out)
    examples = 10 if args.quick else args.examples
    print(f"fuzz: {examples} examples per operation and mode, seed {args.seed}", flush=True)
    report, seconds = run(examples, args.seed)
    data = summary(report, examples, args.seed, seconds)
    results.write_json(out / "fuzz.json", data)
    results.write_markdown(out / "fuzz.md", markdown(data))
    print((out / "fuzz.md").read_text())


if __name__ == "__main__":
    main()
