"""Alembic environment: runs on a connection handed over by :func:`gateway.migrations.upgrade`,
or on one made from ``sqlalchemy.url`` (alembic.ini / ``-x``) or the gateway's settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from gateway.db import make_engine, normalize_url
from gateway.migrations import load_models

config = context.config
target_metadata = load_models()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if url:
        return normalize_url(url)
    from gateway.config import Settings

    return normalize_url(Settings.load().ledger.url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
