"""Build the quota store chosen by ``settings.quotas`` (called once, at start-up)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import Settings
from gateway.db import make_engine
from gateway.errors import QuotaStoreUnavailable
from gateway.quotas.base import QuotaStore, Unlimited
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.local import LocalQuotaStore, SpendSource
from gateway.quotas.redis import RedisQuotaStore

log = logging.getLogger(__name__)


class LedgerSpend:
    """A :class:`SpendSource` reading the ledger table (once, at start-up)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def spend_since(self, since: dt.datetime | None) -> Sequence[tuple[str, str | None, int]]:
        return await asyncio.to_thread(self._query, since)

    def _query(self, since: dt.datetime | None) -> list[tuple[str, str | None, int]]:
        from gateway.ledger.models import LedgerRow

        q = select(LedgerRow.key_id, LedgerRow.team, func.sum(LedgerRow.cost_nusd)).group_by(
            LedgerRow.key_id, LedgerRow.team
        )
        if since is not None:
            q = q.where(LedgerRow.finished_at >= since)
        with self._engine.connect() as conn:
            return [(k, t, int(n or 0)) for k, t, n in conn.execute(q)]


async def build_quota_store(
    settings: Settings, *, spend_source: SpendSource | None = None
) -> QuotaStore:
    """Unlimited, local (spend rebuilt from the ledger) or Redis behind the failover."""
    q = settings.quotas
    if not q.enabled:
        return Unlimited()
    if q.backend == "redis":
        primary = RedisQuotaStore(q)
        try:
            await primary.ping()
        except QuotaStoreUnavailable:
            log.error("redis unreachable at start-up: the failure policy applies until it is up")
        return FailoverQuotaStore(primary, q)
    store = LocalQuotaStore(q)
    if spend_source is not None:
        await store.load_spend(spend_source)
    elif settings.ledger.enabled:
        engine = make_engine(settings.ledger.url)
        try:
            await store.load_spend(LedgerSpend(engine))
        except SQLAlchemyError as exc:
            # A fresh install has no ledger table yet; anything else is worth a look.
            log.warning("spend not rebuilt from the ledger", extra={"error": str(exc)[:200]})
        finally:
            engine.dispose()
    return store
