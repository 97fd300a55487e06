"""Build the quota store chosen by ``settings.quotas`` (called once, at start-up)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from gateway.config import Settings
from gateway.db import make_engine
from gateway.errors import QuotaStoreUnavailable
from gateway.quotas.base import QuotaStore, Unlimited
from gateway.quotas.fallback import FailoverQuotaStore
from gateway.quotas.local import LocalQuotaStore
from gateway.quotas.redis import RedisQuotaStore
from gateway.quotas.spend import LedgerSpend, SpendSource

log = logging.getLogger(__name__)


async def build_quota_store(
    settings: Settings, *, spend_source: SpendSource | None = None
) -> QuotaStore:
    """Unlimited, local (spend rebuilt from the ledger) or Redis behind the failover."""
    q = settings.quotas
    if not q.enabled:
        return Unlimited()
    if q.backend == "redis":
        if spend_source is None and settings.ledger.enabled:
            # Kept for the store's lifetime: Redis may lose its data at any time.
            spend_source = LedgerSpend(make_engine(settings.ledger.url))
        failover = FailoverQuotaStore(RedisQuotaStore(q), q, spend_source=spend_source)
        try:
            await failover.primary.ping()
        except QuotaStoreUnavailable:
            log.error("redis unreachable at start-up: the failure policy applies until it is up")
        else:
            await failover.seed()  # before the first request, if Redis is new or lost data
        return failover
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
