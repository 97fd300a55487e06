"""Finance commands: ``report``, ``reconcile``, ``prices list|derive`` and ``db upgrade``.

:func:`register` adds them to the ``tollgate`` typer app. Nothing runs at import. The
commands live in :mod:`gateway.cli_report`, :mod:`gateway.cli_reconcile`,
:mod:`gateway.cli_prices` and :mod:`gateway.cli_db`.
"""

from __future__ import annotations

import typer

from gateway.cli_db import db_current, db_upgrade
from gateway.cli_prices import prices_derive, prices_list
from gateway.cli_reconcile import CountersFactory, make_reconcile
from gateway.cli_report import report


def register(app: typer.Typer, counters_factory: CountersFactory | None = None) -> None:
    """Add ``report``, ``reconcile``, ``prices`` and ``db`` to the ``tollgate`` app."""
    app.command("report")(report)
    app.command("reconcile")(make_reconcile(counters_factory))
    prices = typer.Typer(help="Price catalog: list versions, derive prices from hardware.")
    prices.command("list")(prices_list)
    prices.command("derive")(prices_derive)
    app.add_typer(prices, name="prices")
    db = typer.Typer(help="The gateway's database (ledger and key store): migrations.")
    db.command("upgrade")(db_upgrade)
    db.command("current")(db_current)
    app.add_typer(db, name="db")
