"""What the finance commands share: the ``--config`` and ``--db`` options, loading the
settings, the error exit and a database URL fit to print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.config import ConfigError, Settings

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: $TOLLGATE_CONFIG or configs/)."),
]
DbOpt = Annotated[
    str | None, typer.Option("--db", help="Ledger database URL (default: ledger.url).")
]


def load_settings(config: Path | None) -> Settings:
    try:
        return Settings.load(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "ledger database"
