"""Moved to :mod:`tests.support.postgres`; kept so existing imports still work."""

from tests.support.postgres import PostgresCluster, pg_bindir

__all__ = ["PostgresCluster", "pg_bindir"]
