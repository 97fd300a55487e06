"""Command line for the engines: ``python -m engines prepare|up|down|status|logs|plan|check-args``.

``app`` is a ``typer.Typer`` so the gateway's CLI can mount it as ``tollgate engines``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engines.cache import CacheLayout
from engines.errors import EngineError
from engines.launcher import DEFAULT_GRACE, DEFAULT_TIMEOUT, EngineStatus, Launcher
from engines.plan import plan_profile, table_rows
from engines.prepare import TORCH_INDEX_ENV, Preparer
from engines.profiles import Profile, load_profile, parse_port_option
from engines.runner import ConsoleRunner, tail
from engines.vllm_args import check_argvs, profile_argvs

app = typer.Typer(
    name="engines",
    help="Prepare, start and stop the local vLLM engines of a profile; size and check any.",
    no_args_is_help=True,
    add_completion=False,
)

ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="Bundled profile name or a profile YAML path.")
]
PortOpt = Annotated[
    list[str] | None,
    typer.Option("--port", help="Override an engine's port: NAME=PORT (repeatable)."),
]
EngineArg = Annotated[
    list[str] | None, typer.Argument(help="Engine names (default: all in the profile).")
]


def _console() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _profile(profile: str, ports: list[str] | None = None) -> Profile:
    overrides = dict(parse_port_option(p) for p in ports or [])
    return load_profile(profile, ports=overrides)


def _fail(console: Console, exc: EngineError) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(code=1)


@app.command()
def prepare(profile: ProfileOpt = "local-cpu") -> None:
    """Build (once) the engine venv and model folders the profile needs."""
    console = _console()
    try:
        layout = CacheLayout.from_env()
        preparer = Preparer(
            layout,
            ConsoleRunner(console),
            console,
            torch_index_url=os.environ.get(TORCH_INDEX_ENV) or None,
        )
        preparer.prepare(_profile(profile))
    except EngineError as exc:
        raise _fail(console, exc) from exc


@app.command()
def up(
    engines: EngineArg = None,
    profile: ProfileOpt = "local-cpu",
    port: PortOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = (
        DEFAULT_TIMEOUT
    ),
) -> None:
    """Start the profile's engines in the background and wait until they are ready."""
    console = _console()
    try:
        launcher = Launcher(_profile(profile, port), console=console)
        started = time.monotonic()
        statuses = launcher.up(engines, timeout=timeout)
        console.print(f"all ready in {time.monotonic() - started:.0f}s")
        _print_table(statuses)
    except EngineError as exc:
        raise _fail(console, exc) from exc


@app.command()
def down(
    engines: EngineArg = None,
    profile: ProfileOpt = "local-cpu",
    port: PortOpt = None,
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")] = (
        DEFAULT_GRACE
    ),
) -> None:
    """Stop the profile's engines (SIGTERM, then SIGKILL after the grace period)."""
    console = _console()
    try:
        stopped = Launcher(_profile(profile, port), console=console).down(engines, grace=grace)
    except EngineError as exc:
        raise _fail(console, exc) from exc
    if not stopped:
        console.print("no running engines")


@app.command()
def status(
    profile: ProfileOpt = "local-cpu",
    port: PortOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each engine: pid, port, readiness and the model it serves.

    Exits with code 3 when any engine is not ready.
    """
    console = _console()
    try:
        statuses = Launcher(_profile(profile, port), console=console).status()
    except EngineError as exc:
        raise _fail(console, exc) from exc
    if as_json:
        rows = [{**_row(s), "log": str(s.log)} for s in statuses]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        _print_table(statuses)
    if not all(s.ready for s in statuses):
        raise typer.Exit(code=3)


@app.command()
def logs(
    engine: Annotated[str, typer.Argument(help="Engine name, e.g. small.")],
    profile: ProfileOpt = "local-cpu",
    lines: Annotated[int, typer.Option("--lines", "-n")] = 40,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
) -> None:
    """Print the end of an engine's log (``-f`` to keep following it)."""
    console = _console()
    try:
        launcher = Launcher(_profile(profile), console=console)
        launcher.profile.engine(engine)
    except EngineError as exc:
        raise _fail(console, exc) from exc
    path = launcher.log_path(engine)
    if not path.exists():
        console.print(f"no log yet at {path}")
        raise typer.Exit(code=1)
    sys.stdout.write(tail(path, lines) + "\n")
    if follow:
        _follow(path)


@app.command()
def plan(
    profile: Annotated[str, typer.Argument(help="Bundled profile name or a profile YAML path.")],
) -> None:
    """Size each engine per GPU: weights, KV per token, KV capacity, max concurrency.

    Exits with code 1, saying why, when an engine does not fit its GPUs.
    """
    console = _console()
    try:
        loaded = _profile(profile)
        plans = plan_profile(loaded)
    except EngineError as exc:
        raise _fail(console, exc) from exc
    table = Table("", *(p.engine for p in plans), title=f"{loaded.name}: memory plan")
    for label, cells in table_rows(plans):
        table.add_row(label, *cells)
    Console(width=max(Console().width, 120)).print(table)
    misfits = [f"{p.engine}: {why}" for p in plans for why in p.problems]
    if misfits:
        console.print(f"[red]error:[/red] {escape(loaded.name)} does not fit:")
        for line in misfits:
            console.print(f"  {escape(line)}")
        raise typer.Exit(code=1)


@app.command("check-args")
def check_args(
    profiles: Annotated[list[str], typer.Argument(help="Profile names or YAML paths.")],
) -> None:
    """Parse each engine's argv with vLLM's own parser (from the engine venv)."""
    console = _console()
    try:
        argvs: dict[str, list[str]] = {}
        for name in profiles:
            argvs.update(profile_argvs(_profile(name)))
        verdicts = check_argvs(argvs)
    except EngineError as exc:
        raise _fail(console, exc) from exc
    for name, why in verdicts.items():
        console.print(
            f"[green]ok[/green] {name}"
            if why is None
            else f"[red]refused[/red] {name}: {escape(why)}"
        )
    if any(why is not None for why in verdicts.values()):
        raise typer.Exit(code=1)


def _follow(path: Path) -> None:
    with open(path, encoding="utf-8", errors="replace") as handle:
        handle.seek(0, os.SEEK_END)
        try:
            while True:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            return


def _row(s: EngineStatus) -> dict[str, object]:
    return {
        "name": s.name,
        "tier": s.tier,
        "state": s.state,
        "pid": s.pid,
        "port": s.port,
        "ready": s.ready,
        "model": s.served_model_name,
        "base_url": f"http://{s.host}:{s.port}/v1",
    }


def _print_table(statuses: list[EngineStatus]) -> None:
    table = Table("engine", "tier", "state", "pid", "port", "model", "base url")
    for s in statuses:
        row = _row(s)
        colour = "green" if s.ready else ("yellow" if s.alive else "red")
        table.add_row(
            s.name,
            s.tier,
            f"[{colour}]{s.state}[/{colour}]",
            str(s.pid or "-"),
            str(s.port),
            s.served_model_name,
            str(row["base_url"]),
        )
    console = Console()
    # Off a terminal (pipes, CI logs) rich assumes 80 columns and would cut the URLs.
    Console(width=max(console.width, 120)).print(table)


def main() -> None:
    """Entry point for ``python -m engines``."""
    app()
