"""The ledger database: idempotent batch inserts and the boundary for SQLAlchemy errors.

Every SQLAlchemy/driver exception is translated here, once:

* the database is unreachable, locked, or its schema is missing → :class:`LedgerUnavailableError`
  (a 503 when an admin endpoint hits it; the writer keeps the records and retries);
* the rows themselves were refused (a constraint or a value) → :class:`LedgerRejectedError`
  (the writer isolates the bad row and sets it aside instead of retrying forever).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Insert, TextClause, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.config import ConfigError
from gateway.db import make_engine
from gateway.errors import ServiceUnavailableError
from gateway.ledger.models import TABLE, LedgerRow, record_of, row_values
from gateway.ledger.record import LedgerRecord

_TABLE = LedgerRow.metadata.tables[TABLE]


class LedgerUnavailableError(ServiceUnavailableError):
    """The ledger database cannot be reached (or is not migrated) right now."""

    default_code = "ledger_unavailable"


class LedgerRejectedError(Exception):
    """The database refused the rows themselves; retrying the same rows cannot help."""


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Map SQLAlchemy errors to the two ledger errors (most specific first)."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        if not exc.connection_invalidated and isinstance(
            exc, sa_exc.IntegrityError | sa_exc.DataError
        ):
            raise LedgerRejectedError(str(exc.orig)) from exc
        # Operational, interface and programming errors: the database is down, locked
        # or not migrated. The data is fine, so the writer keeps it and retries.
        raise LedgerUnavailableError("The ledger database is unavailable.") from exc
    except sa_exc.StatementError as exc:
        # Raised while binding parameters, before the database saw anything: bad values.
        raise LedgerRejectedError(str(exc.orig)) from exc
    except sa_exc.SQLAlchemyError as exc:  # pool timeouts, disconnections
        raise LedgerUnavailableError("The ledger database is unavailable.") from exc


_COLUMNS = tuple(c.name for c in _TABLE.columns)
_TIMESTAMPS = ("started_at", "finished_at")


def _pg_unnest_insert() -> TextClause:
    """One short statement for any batch size: a column of values per parameter.

    SQLAlchemy's multi-row VALUES renders rows x columns placeholders, and psycopg
    re-parses that long text on every batch (it only caches short queries): ~0.2 s per
    500 rows. ``unnest`` of one array per column keeps the text constant and cached.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    names = list(_TABLE.columns.keys())
    arrays = ", ".join(
        f"CAST(:{name} AS {_TABLE.columns[name].type.compile(dialect=dialect)}[])" for name in names
    )
    return text(
        f"INSERT INTO {TABLE} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    )


class LedgerStore:
    """Reads and writes ledger rows on SQLite (WAL) or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"ledger.url: unsupported database {dialect!r} (sqlite, postgresql)")
        self.engine = engine
        self.dialect = dialect
        self._insert = self._insert_statement()

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> LedgerStore:
        if url.startswith(("postgresql", "postgres")):
            # Fail fast when the server is unreachable instead of hanging a writer thread.
            engine_kwargs.setdefault("connect_args", {"connect_timeout": 3})
        return cls(make_engine(url, **engine_kwargs))

    def _insert_statement(self) -> Insert | TextClause:
        if self.dialect == "postgresql":
            return _pg_unnest_insert()
        # No RETURNING: with it, SQLAlchemy folds each batch into one multi-row INSERT whose
        # text depends on the batch size, and sqlite3 keeps up to 128 such prepared
        # statements per pooled connection, in C memory (measured: the gateway grew by
        # ~1.5 KiB per request, without end in sight). A plain executemany reuses one
        # statement; total_changes() counts the rows that were new.
        return sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=["request_id"])

    # ------------------------------------------------------------------ schema

    def migrate(self) -> None:
        """``alembic upgrade head`` (creates the ledger and key-store tables)."""
        from gateway.migrations import upgrade

        with translate_errors():
            upgrade(self.engine)

    def ping(self) -> None:
        with translate_errors(), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # ------------------------------------------------------------------ writes

    def insert(self, records: Sequence[LedgerRecord]) -> int:
        """Insert in one transaction; rows whose request id exists are skipped.

        Returns how many rows were new. Raises LedgerUnavailableError or
        LedgerRejectedError; on either, nothing of the batch was committed.
        """
        if not records:
            return 0
        params = [row_values(r) for r in records]
        with translate_errors(), self.engine.begin() as conn:
            return self._execute_insert(conn, params)

    def _execute_insert(self, conn: Connection, params: list[dict[str, Any]]) -> int:
        if self.dialect == "postgresql":
            columns = {name: [row[name] for row in params] for name in _COLUMNS}
            for name in _TIMESTAMPS:
                if any(v.tzinfo is None for v in columns[name]):
                    raise LedgerRejectedError(f"{name}: ledger timestamps must be timezone-aware")
            return len(conn.execute(self._insert, columns).all())
        changes = text("SELECT total_changes()")
        before = int(conn.execute(changes).scalar_one())
        conn.execute(self._insert, params)
        return int(conn.execute(changes).scalar_one()) - before

    # ------------------------------------------------------------------ reads

    def count(self) -> int:
        with translate_errors(), self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(_TABLE)).scalar_one())

    def request_ids(self) -> list[str]:
        with translate_errors(), self.engine.connect() as conn:
            return list(conn.execute(select(_TABLE.c.request_id)).scalars())

    def get(self, request_id: str) -> LedgerRecord | None:
        with translate_errors(), Session(self.engine) as session:
            row = session.get(LedgerRow, request_id)
            return record_of(row) if row is not None else None

    def all_records(self) -> list[LedgerRecord]:
        with translate_errors(), Session(self.engine) as session:
            rows = session.scalars(select(LedgerRow).order_by(LedgerRow.finished_at)).all()
            return [record_of(r) for r in rows]

    def dispose(self) -> None:
        self.engine.dispose()
