"""The ledger writer's counters: a snapshot, and its export to Prometheus at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the writer's counters (also exported to Prometheus)."""

    queue_depth: int
    queue_capacity: int
    accepted: int
    written: int
    duplicates: int
    spilled: int
    replayed: int
    rejected: int
    dropped: int
    failures: int
    spill_pending_bytes: int
    database_up: bool

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class StatsSource(Protocol):
    """What :class:`WriterCollector` reads: the ledger writer."""

    def stats(self) -> WriterStats: ...


class WriterCollector(Collector):
    """Exports :meth:`LedgerWriter.stats` at scrape time (nothing on the request path)."""

    def __init__(self, writer: StatsSource) -> None:
        self._writer = writer

    def collect(self) -> Iterator[Metric]:
        s = self._writer.stats()
        gauges = {
            "queue_depth": ("Records waiting in the ledger writer's queue.", s.queue_depth),
            "queue_capacity": ("Capacity of the ledger writer's queue.", s.queue_capacity),
            "spill_pending_bytes": (
                "Bytes of spilled ledger records waiting for replay.",
                s.spill_pending_bytes,
            ),
            "database_up": ("1 if the last ledger write succeeded.", int(s.database_up)),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"tollgate_ledger_{name}", doc, value=value)
        counters = {
            "records_accepted": ("Records handed to the ledger writer.", s.accepted),
            "records_written": ("Records newly inserted in the ledger database.", s.written),
            "records_duplicate": ("Records already present (idempotent skips).", s.duplicates),
            "records_spilled": ("Records written to the spill file.", s.spilled),
            "records_replayed": ("Records replayed from spill files.", s.replayed),
            "records_rejected": ("Records the database refused (set aside).", s.rejected),
            "records_dropped": ("Records lost (queue full and spill unwritable).", s.dropped),
            "write_failures": ("Failed attempts to write to the ledger database.", s.failures),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"tollgate_ledger_{name}", doc, value=value)
