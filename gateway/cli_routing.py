"""``tollgate routing calibrate|train``: the learned router, fitted to our own traffic.

Both read the ledger database (``ledger.url`` or ``--db``) and write
``routing.state_file`` (or ``--state-file``) atomically; every replica applies the new
state within ``routing.state_poll_s``. The logic lives in :mod:`gateway.routing.calibrate`,
:mod:`gateway.routing.retrain` and :mod:`gateway.routing.evaluate`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli_finance_common import ConfigOpt, DbOpt, fail, load_settings, redact_url
from gateway.config import ConfigError

if TYPE_CHECKING:
    from gateway.routing.state import RoutingState

app = typer.Typer(help="The learned tier router: calibrate its threshold, train it on feedback.")

StateOpt = Annotated[Path | None, typer.Option("--state-file", help="Default: routing.state_file.")]
SinceOpt = Annotated[
    str, typer.Option("--since", help="Traffic finished within this long: 30m, 12h, 7d, 2w.")
]


def _since(text: str) -> dt.datetime:
    from gateway.routing.calibrate import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _where(db: str | None, config: Path | None, state_file: Path | None) -> tuple[str, Path, str]:
    settings = load_settings(config)
    small = str(settings.routing.params.get("small_tier", "small"))
    return db or settings.ledger.url, state_file or Path(settings.routing.state_file), small


@app.command()
def calibrate(
    target_large_share: Annotated[
        float, typer.Option("--target-large-share", min=0.0, max=1.0, help="e.g. 0.3")
    ],
    since: SinceOpt = "7d",
    min_sample: Annotated[int, typer.Option("--min-sample", min=1)] = 100,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print; write nothing.")] = False,
    state_file: StateOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Set the threshold so TARGET of recent traffic goes to the large tier."""
    from gateway.db import make_engine
    from gateway.ledger.route_data import scored_traffic
    from gateway.ledger.store import LedgerUnavailableError
    from gateway.routing.calibrate import calibrate as fit_threshold
    from gateway.routing.calibrate import current_weights
    from gateway.routing.state import RoutingState, read_state, write_state

    url, path, _ = _where(db, config, state_file)
    cutoff = _since(since)
    try:
        old = read_state(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    engine = make_engine(url)
    try:
        vectors = scored_traffic(engine, cutoff)
    except LedgerUnavailableError:
        raise _unreadable(url) from None
    finally:
        engine.dispose()
    if len(vectors) < min_sample:
        raise fail(
            f"{len(vectors)} scored request(s) since {cutoff:%Y-%m-%d %H:%M} UTC; need at "
            f"least {min_sample} (--min-sample). Requests are scored when the learned "
            "policy routes them (routing.policy: learned, or a chain that starts with it)."
        )
    result = fit_threshold(vectors, current_weights(old), target_large_share)
    typer.echo(
        f"threshold {result.threshold:.6f} from {result.sample} requests since "
        f"{cutoff:%Y-%m-%d %H:%M} UTC: {result.measured_share:.1%} at or above it "
        f"(target {target_large_share:.1%})"
    )
    state = RoutingState(
        threshold=result.threshold,
        target_large_share=target_large_share,
        measured_large_share=result.measured_share,
        sample=result.sample,
        weights=old.weights if old is not None else None,
        trained_on=old.trained_on if old is not None else None,
    )
    if dry_run:
        typer.echo("dry run: nothing written")
        return
    write_state(path, state)
    typer.echo(f"wrote {path}; replicas apply it within routing.state_poll_s")


@app.command()
def train(
    min_labels: Annotated[int, typer.Option("--min-labels", min=1)] = 200,
    target_large_share: Annotated[
        float | None,
        typer.Option(
            "--target-large-share", min=0.0, max=1.0, help="Default: the state file's, else 0.3."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only labels on requests this recent.")
    ] = None,
    report: Annotated[
        Path, typer.Option("--report", help="Writes REPORT.md (and REPORT.png).")
    ] = Path("routing-train"),
    note: Annotated[list[str] | None, typer.Option("--note", help="A line for the report.")] = None,
    title: Annotated[str, typer.Option("--plot-title")] = "Learned router: cost vs quality",
    seed: int = 7,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Evaluate; write no state.")] = False,
    state_file: StateOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Fit the learned router on feedback labels; print and plot an offline evaluation."""
    from gateway.db import make_engine
    from gateway.ledger.route_data import labelled_requests
    from gateway.ledger.store import LedgerUnavailableError
    from gateway.routing.calibrate import current_weights, scores_of, share_at, threshold_at_share
    from gateway.routing.evaluate import markdown, plot
    from gateway.routing.retrain import NotEnoughLabels, retrain
    from gateway.routing.state import RoutingState, read_state, write_state

    url, path, small = _where(db, config, state_file)
    try:
        old = read_state(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    engine = make_engine(url)
    try:
        rows = labelled_requests(engine, _since(since) if since else None)
    except LedgerUnavailableError:
        raise _unreadable(url) from None
    finally:
        engine.dispose()
    try:
        result = retrain(
            rows, current_weights(old), min_labels=min_labels, small_tier=small, seed=seed
        )
    except NotEnoughLabels as exc:
        raise fail(str(exc)) from None
    share = target_large_share
    if share is None:
        share = old.target_large_share if old and old.target_large_share is not None else 0.3
    scores = scores_of(result.weights, [r.features for r in rows if r.tier == small])
    threshold = threshold_at_share(scores, share)
    notes = [
        *(note or []),
        f"{result.used} labels used ({result.train_rows} to fit, {result.test_rows} held "
        f"out, the rows below); {result.skipped_large} rated large-tier request(s) left out",
        f"'in force' is the model replicas use now ({_origin(old)})",
    ]
    text = markdown([result.current, result.trained], notes)
    typer.echo(text)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".md").write_text(text)
    png = report.with_suffix(".png")
    plotted = plot([result.current, result.trained], png, title)
    typer.echo(
        f"wrote {report.with_suffix('.md')}"
        + (f" and {png}" if plotted else " (no plot: matplotlib is not installed)")
    )
    if dry_run:
        typer.echo("dry run: no state written")
        return
    state = RoutingState(
        threshold=threshold,
        target_large_share=share,
        measured_large_share=share_at(scores, threshold),
        sample=len(scores),
        weights=result.weights,
        trained_on=f"feedback: {result.train_rows} labels, {dt.datetime.now(dt.UTC):%Y-%m-%d}",
    )
    write_state(path, state)
    typer.echo(
        f"wrote {path}: trained weights, threshold {threshold:.6f} for a {share:.0%} large "
        "share on the labelled requests (run `tollgate routing calibrate` to set it from "
        "recent traffic)"
    )


def _unreadable(url: str) -> typer.Exit:
    return fail(f"cannot read the ledger at {redact_url(url)} (tollgate db upgrade?)", 1)


def _origin(state: RoutingState | None) -> str:
    if state is not None and state.trained_on:
        return f"trained on {state.trained_on}"
    return "the shipped weights, trained on synthetic data"
