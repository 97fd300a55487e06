"""Alembic migrations for every table on :class:`gateway.db.Base` (ledger and key store).

``upgrade(engine)`` runs ``alembic upgrade head`` programmatically on one connection.
Processes starting together migrate one at a time: on PostgreSQL under an advisory
lock, on a SQLite file under a ``flock`` next to it. The repository's ``alembic.ini``
points at this folder for running Alembic by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, text

from gateway.db import Base, normalize_url

MIGRATIONS_DIR = Path(__file__).resolve().parent
#: pg_advisory_xact_lock key: "tollgate" as a number, shared by every replica.
_LOCK_KEY = 0x746F6C6C67617465
#: Modules defining tables on Base. Optional ones may not exist in every build.
_MODEL_MODULES = ("gateway.ledger.models", "gateway.ledger.feedback")
_OPTIONAL_MODEL_MODULES = ("gateway.keys",)
#: Alembic's ``context``/``op`` are process-wide proxies, so two migrations must not run
#: in two threads at once. The one module-level lock in the package, guarding that.
_ALEMBIC_LOCK = threading.Lock()


def load_models() -> MetaData:
    """Import every module that defines tables so ``Base.metadata`` is complete."""
    for name in _MODEL_MODULES:
        importlib.import_module(name)
    for name in _OPTIONAL_MODEL_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return Base.metadata


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for this package's migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    path = Path(database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".migrate-lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _run(engine: Engine, action: str, revision: str) -> None:
    with _ALEMBIC_LOCK, _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
