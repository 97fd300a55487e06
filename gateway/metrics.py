"""Prometheus collectors, one registry per app (no module-level mutable state).

Label values come only from configuration (model names, tiers, engine names) or fixed
vocabularies, never from request data, so cardinality stays bounded.

With ``server.workers > 1`` each worker counts into shared files and any worker's
``/metrics`` shows them all; every gauge declares how workers combine (``sum``, ``max``
or ``min``). See :mod:`gateway.metrics_multiproc`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway import metrics_multiproc
from gateway.metrics_multiproc import Mode, SampledRegistry

if TYPE_CHECKING:
    from gateway.upstream.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


#: How workers combine the gauges of collectors defined elsewhere (the ledger writer's);
#: any other gauge is summed. Counters are always summed.
FOREIGN_MODES: dict[str, Mode] = {
    # Each worker counts the shared spill directory's files: the same bytes, not N times.
    "tollgate_ledger_spill_pending_bytes": "max",
    "tollgate_ledger_database_up": "min",
}


class FunctionGauge:
    """A gauge read at scrape time, optionally labelled (``labels(...).set_function``).

    What ``Gauge.set_function`` does, as a collector of its own, so that several workers
    can publish it (:mod:`gateway.metrics_multiproc`) with a declared ``mode``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] = (),
        *,
        registry: CollectorRegistry,
        mode: Mode,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._functions: dict[tuple[str, ...], Callable[[], float]] = {}
        if isinstance(registry, SampledRegistry):
            registry.modes[name] = mode
        registry.register(self)

    def set_function(self, f: Callable[[], float]) -> None:
        self._functions[()] = f

    def labels(self, *values: str) -> _FunctionChild:
        return _FunctionChild(self, tuple(values))

    def remove(self, *values: str) -> None:
        del self._functions[tuple(values)]

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        if not self.labelnames:
            f = self._functions.get(())
            yield GaugeMetricFamily(self.name, self.documentation, value=f() if f else 0.0)
            return
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, f in list(self._functions.items()):
            family.add_metric(list(values), float(f()))
        yield family


class _FunctionChild:
    def __init__(self, parent: FunctionGauge, values: tuple[str, ...]) -> None:
        self._parent, self._values = parent, values

    def set_function(self, f: Callable[[], float]) -> None:
        self._parent._functions[self._values] = f


class Metrics:
    """All gateway collectors."""

    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ) -> None:
        """``multiprocess_dir`` defaults to the directory a worker was started with."""
        self.registry = registry or SampledRegistry()
        self.multiprocess_dir = multiprocess_dir or metrics_multiproc.active_dir()
        if isinstance(self.registry, SampledRegistry):
            self.registry.modes.update(FOREIGN_MODES)
        r = self.registry
        self.requests = Counter(
            "tollgate_requests",
            "Requests by client model, tier and status.",
            ["model", "tier", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tollgate_request_duration_seconds",
            "End-to-end request latency.",
            ["model", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tollgate_time_to_first_token_seconds",
            "Time to first streamed token.",
            ["model", "tier"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tollgate_tokens",
            "Tokens by model, tier and kind (prompt, completion).",
            ["model", "tier", "kind"],
            registry=r,
        )
        self.in_flight = FunctionGauge(
            "tollgate_in_flight_requests",
            "Requests being served by this gateway (all its workers).",
            registry=r,
            mode="sum",
        )
        self.engine_in_flight = FunctionGauge(
            "tollgate_engine_in_flight_requests",
            "In-flight requests per engine.",
            ("engine", "tier"),
            registry=r,
            mode="sum",
        )
        # An engine takes traffic while some worker's breaker lets requests through.
        self.engine_up = FunctionGauge(
            "tollgate_engine_up",
            "1 while an engine (one replica) takes traffic (breaker closed), else 0.",
            ("engine", "tier"),
            registry=r,
            mode="max",
        )
        self.queue_wait = Histogram(
            "tollgate_engine_queue_wait_seconds",
            "Time spent waiting for an engine slot.",
            ["tier"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "tollgate_upstream_errors",
            "Engine failures by engine and error code.",
            ["engine", "code"],
            registry=r,
        )
        self.retries = Counter(
            "tollgate_retries", "Requests retried on another engine.", ["tier"], registry=r
        )
        self.route_decisions = Counter(
            "tollgate_route_decisions",
            "Routing decisions by tier and reason.",
            ["tier", "reason"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "tollgate_event_loop_lag_seconds",
            "How late the event loop woke a 250 ms timer (saturation; the worst worker).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.cost = Counter(
            "tollgate_cost_usd", "Cost of served requests in USD.", ["model", "tier"], registry=r
        )

        self.overload_refusals = Counter(
            "tollgate_overload_refusals",
            "Requests refused at once because the process was past capacity, by signal "
            "(in_flight, loop_lag).",
            ["signal"],
            registry=r,
        )
        self.feedback = Counter(
            "tollgate_feedback",
            "POST /v1/feedback answers by outcome (stored, replaced, not_found, invalid, "
            "unauthorized, rate_limited, unavailable).",
            ["outcome"],
            registry=r,
        )
        self.quota_refusals = Counter(
            "tollgate_quota_refusals",
            "Requests refused by a quota, by the limit hit (rpm, tpm, concurrency, "
            "budget_daily, budget_monthly, budget_total, store_unavailable).",
            ["limit"],
            registry=r,
        )
        # Down if any worker's breaker is open: the failure policy applies there.
        self.quota_store_up = FunctionGauge(
            "tollgate_quota_store_up",
            "1 while the shared quota store (Redis) is reachable, 0 while its breaker is "
            "open and the failure policy applies.",
            registry=r,
            mode="min",
        )
        self.quota_pending_settlements = FunctionGauge(
            "tollgate_quota_pending_settlements",
            "Settlements queued for the quota store (grows while Redis is out).",
            registry=r,
            mode="sum",
        )
        self.quota_dropped_settlements = FunctionGauge(
            "tollgate_quota_dropped_settlements",
            "Settlements dropped because the queue was full (spend not counted in Redis; "
            "the ledger still has it).",
            registry=r,
            mode="sum",
        )

    def watch_quota_store(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """Read the store's status at scrape time (nothing on the request path)."""
        self.quota_store_up.set_function(lambda: float(status().get("redis", "ok") == "ok"))
        self.quota_pending_settlements.set_function(
            lambda: float(status().get("pending_settlements", 0))
        )
        self.quota_dropped_settlements.set_function(
            lambda: float(status().get("dropped_settlements", 0))
        )

    def watch_engine(self, engine: Engine, added: bool) -> None:
        """Per-engine gauges, read at scrape time; removed with the engine (discovery)."""
        labels = (engine.name, engine.tier)
        if not added:
            for gauge in (self.engine_in_flight, self.engine_up):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            return
        self.engine_in_flight.labels(*labels).set_function(lambda: engine.in_flight)
        self.engine_up.labels(*labels).set_function(lambda: float(engine.healthy))

    def watch_worker(self, index: int, requests: Callable[[], int]) -> None:
        """A worker's own HTTP request count (``server.workers > 1``: the balance)."""
        self.registry.register(_WorkerRequests(str(index), requests))

    def publish(self) -> None:
        """Share the scrape-time values with the other workers (no-op for one worker)."""
        if self.multiprocess_dir is not None and isinstance(self.registry, SampledRegistry):
            metrics_multiproc.publish(self.multiprocess_dir, self.registry)

    def render(self) -> bytes:
        if self.multiprocess_dir is not None and isinstance(self.registry, SampledRegistry):
            return metrics_multiproc.render(self.multiprocess_dir, self.registry)
        return generate_latest(self.registry)


class _WorkerRequests:
    def __init__(self, worker: str, requests: Callable[[], int]) -> None:
        self._worker, self._requests = worker, requests

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tollgate_worker_http_requests",
            "HTTP requests answered by each worker process (all routes).",
            labels=["worker"],
        )
        family.add_metric([self._worker], self._requests())
        yield family
