"""The ledger as one service: store, writer and reports, built at start-up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.config import LedgerSettings
from gateway.ledger.feedback import FeedbackStore
from gateway.ledger.reports import Reports
from gateway.ledger.store import LedgerStore
from gateway.ledger.writer import LedgerWriter


@dataclass(slots=True)
class Ledger:
    """What the app keeps on ``Services.ledger``."""

    store: LedgerStore
    writer: LedgerWriter
    reports: Reports
    #: Outcome labels from ``POST /v1/feedback`` (same database).
    feedback: FeedbackStore

    @classmethod
    async def open(
        cls, settings: LedgerSettings, registry: CollectorRegistry | None = None
    ) -> Ledger:
        """Build and start the writer. The database may be down: it migrates on reaching it."""
        store = await asyncio.to_thread(LedgerStore.from_url, settings.url)
        writer = LedgerWriter(store, settings, registry=registry)
        await writer.start()
        return cls(store, writer, Reports(store.engine), FeedbackStore(store.engine))

    async def aclose(self) -> None:
        """Flush the writer (bounded), then release the database."""
        try:
            await self.writer.aclose()
        finally:
            await asyncio.to_thread(self.store.dispose)
