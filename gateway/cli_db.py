"""``tollgate db upgrade|current``: the gateway database's Alembic migrations."""

from __future__ import annotations

import typer

from gateway.cli_finance_common import ConfigOpt, DbOpt, fail, load_settings, redact_url


def db_upgrade(db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Apply the Alembic migrations (``alembic upgrade head``)."""
    from gateway.db import make_engine
    from gateway.migrations import current_revision, upgrade

    url = db or load_settings(config).ledger.url
    engine = make_engine(url)
    try:
        upgrade(engine)
        typer.echo(f"database at revision {current_revision(engine)}")
    except Exception as exc:
        raise fail(f"migration failed on {redact_url(url)}: {type(exc).__name__}", 1) from exc
    finally:
        engine.dispose()


def db_current(db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Print the database's migration revision."""
    from gateway.db import make_engine
    from gateway.migrations import current_revision

    engine = make_engine(db or load_settings(config).ledger.url)
    try:
        typer.echo(current_revision(engine) or "(empty: not migrated)")
    finally:
        engine.dispose()
