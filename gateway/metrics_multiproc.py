"""One ``/metrics`` for several worker processes (``server.workers > 1``).

Two kinds of series, two mechanisms, both in one private directory that the supervisor
(:mod:`gateway.workers`) creates empty, hands to every worker as
``PROMETHEUS_MULTIPROC_DIR`` and removes at exit:

* **Counted on the request path** (counters, histograms, the loop-lag gauge):
  prometheus_client's multiprocess mode. Each worker's values live in memory-mapped
  ``*.db`` files, so any worker's scrape sums every worker's current counts, and a
  worker killed outright (SIGKILL, OOM) keeps what it counted: the page cache outlives
  the process, and the supervisor calls ``mark_process_dead`` for its ``live*`` gauges.
  The price is a locked write to a mapped page per update (see the README's
  ``server.workers`` for the timeit numbers). One worker never pays it: the variable is
  only set for workers, and prometheus_client picks its value class at import.
* **Read at scrape time** (``set_function`` gauges, the engine and quota-store gauges,
  the ledger writer's collector): multiprocess mode cannot store these, and a removed
  engine could never leave its files. Each worker publishes a snapshot of them,
  ``sampled_<pid>.json``, every second and whenever it is scraped; the scraped worker
  merges every snapshot with a per-family :data:`Mode`: ``sum`` (in-flight requests,
  queue depths, counters), ``max`` (an engine is up if some worker sends it traffic;
  spill bytes, counted from the shared spill directory by each worker) or ``min`` (the
  quota store or the ledger database is down if one worker sees it down). A sibling's
  gauges are thus at most a second old; its counters stay exact. When a worker exits,
  :func:`retire` folds the counters of its last snapshot into ``sampled_retired.json``
  so their sums never go backwards, and drops its gauges.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.values import ValueClass

ENV = "PROMETHEUS_MULTIPROC_DIR"
Mode = Literal["sum", "max", "min"]
SNAPSHOT_PREFIX = "sampled_"
RETIRED = "sampled_retired.json"


def active_dir() -> Path | None:
    """The shared directory when this process counts in multiprocess mode, else None.

    prometheus_client chose its value class from ``$PROMETHEUS_MULTIPROC_DIR`` when it
    was imported; this reads the same variable, and only trusts it if the choice agrees.
    """
    path = os.environ.get(ENV)
    if not path or not getattr(ValueClass, "_multiprocess", False):
        return None
    return Path(path)


class SampledRegistry(CollectorRegistry):
    """A registry that knows which of its collectors are read at scrape time.

    Plain counters, gauges and histograms keep their values in the multiprocess files;
    every other collector (custom collectors, :class:`FunctionGauge`) is *sampled*.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sampled: list[Collector] = []
        self.modes: dict[str, Mode] = {}

    def register(self, collector: Collector) -> None:
        super().register(collector)
        if not isinstance(collector, MetricWrapperBase):
            self.sampled.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        if collector in self.sampled:
            self.sampled.remove(collector)


def _encode(families: Iterable[Metric], modes: dict[str, Mode]) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name,
            "type": f.type,
            "help": f.documentation,
            "mode": modes.get(f.name, "sum"),
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
        for f in families
    ]


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []  # retired between glob and read, or not a snapshot of ours
    return data if isinstance(data, list) else []


def publish(directory: Path, registry: SampledRegistry, name: str | None = None) -> None:
    """Write this process's sampled families to ``sampled_<pid>.json`` (atomically)."""
    families = [f for c in list(registry.sampled) for f in c.collect()]
    path = directory / f"{SNAPSHOT_PREFIX}{name or os.getpid()}.json"
    _write_json(path, _encode(families, registry.modes))


def write_families(directory: Path, name: str, families: Iterable[Metric]) -> None:
    """Publish families under ``sampled_<name>.json`` (the supervisor's own counters)."""
    _write_json(directory / f"{SNAPSHOT_PREFIX}{name}.json", _encode(families, {}))


_Key = tuple[str, tuple[tuple[str, str], ...]]
_COMBINE: dict[str, Callable[[float, float], float]] = {
    "sum": lambda a, b: a + b,
    "max": max,
    "min": min,
}


def _merge(snapshots: Iterable[list[dict[str, Any]]]) -> list[Metric]:
    """Families of every snapshot, samples combined by each family's mode."""
    heads: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[_Key, float]] = {}
    for snapshot in snapshots:
        for fam in snapshot:
            name = fam["name"]
            heads.setdefault(name, fam)
            mode = "sum" if fam["type"] == "counter" else heads[name]["mode"]
            combine, into = _COMBINE[mode], values.setdefault(name, {})
            for sample_name, labels, value in fam["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                into[key] = combine(into[key], value) if key in into else value
    merged = []
    for name, head in heads.items():
        metric = Metric(name, head["help"], head["type"])
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        merged.append(metric)
    return merged


class _Aggregate:
    """Collector over the directory: multiprocess files plus the merged snapshots."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def collect(self) -> Iterator[Metric]:
        files = MultiProcessCollector(None, path=str(self._dir))  # type: ignore[no-untyped-call]
        yield from files.collect()  # type: ignore[no-untyped-call]
        paths = sorted(self._dir.glob(f"{SNAPSHOT_PREFIX}*.json"))
        yield from _merge(_read_json(p) for p in paths)


def render(directory: Path, registry: SampledRegistry) -> bytes:
    """Every worker's metrics as one exposition (this worker's snapshot refreshed first)."""
    publish(directory, registry)
    aggregate = CollectorRegistry()
    aggregate.register(_Aggregate(directory))
    return generate_latest(aggregate)


def retire(directory: Path, pid: int) -> None:
    """Book-keeping for an exited worker: keep its counters, drop its live gauges."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    snapshot = directory / f"{SNAPSHOT_PREFIX}{pid}.json"
    counters = [f for f in _read_json(snapshot) if f["type"] == "counter"]
    if counters:
        retired = directory / RETIRED
        kept = _merge([_read_json(retired), counters])
        _write_json(retired, _encode(kept, {}))
    with contextlib.suppress(FileNotFoundError):
        snapshot.unlink()
