"""The ``tollgate`` command line. Arguments are parsed only in :func:`main`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from gateway.config import ConfigError, Settings

app = typer.Typer(
    help="Tollgate: an OpenAI-compatible gateway for vLLM engines.", no_args_is_help=True
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config (default: $TOLLGATE_CONFIG or configs/tollgate.yaml)."
    ),
]


def load_settings(config: Path | None) -> Settings:
    try:
        return Settings.load(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Override server.workers.")] = None,
) -> None:
    """Run the gateway."""
    from gateway.serve import run

    settings = load_settings(config)
    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v}
    if overrides:
        try:
            settings = Settings.load(
                config, server=settings.server.model_copy(update=overrides).model_dump()
            )
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(f"ledger: {_where(settings)}", err=True)
    run(settings, str(config) if config else None)


def _where(settings: Settings) -> str:
    """Where the ledger lives, for the start-up line (never a password)."""
    ledger = settings.ledger
    if not ledger.enabled:
        return "off"
    if ledger.url.startswith("sqlite"):
        path = Path(ledger.url.split(":///", 1)[-1]).expanduser().resolve()
        return f"SQLite at {path}, journal and spill files in {ledger.spill_dir}"
    parts = urlsplit(ledger.url)
    return f"{parts.scheme} at {parts.hostname}:{parts.port or ''}{parts.path}"


@app.command("check-config")
def check_config(config: ConfigOpt = None) -> None:
    """Validate a config file and print a summary."""
    settings = load_settings(config)
    typer.echo(
        f"ok: {len(settings.engines)} engine(s), models: "
        + ", ".join(m.name for m in settings.models)
    )


def _mount_optional() -> None:
    """Sub-commands from other packages (engines, keys, reports...)."""
    from gateway.cli_finance import register as register_finance
    from gateway.cli_keys import app as keys_app
    from gateway.cli_routing import app as routing_app

    app.add_typer(keys_app, name="keys", help="Managed API keys and teams.")
    app.add_typer(routing_app, name="routing", help="The learned router: calibrate, train.")
    register_finance(app)
    try:
        from engines.cli import app as engines_app
    except ImportError:
        return
    app.add_typer(
        engines_app, name="engines", help="Local vLLM engines: prepare, up, down, status."
    )


def main() -> None:
    _mount_optional()
    app(prog_name="tollgate")


if __name__ == "__main__":
    main()
