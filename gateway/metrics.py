"""Prometheus collectors, one registry per app (no module-level mutable state).

Label values come only from configuration (model names, tiers, engine names) or fixed
vocabularies, never from request data, so cardinality stays bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from gateway.upstream.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """All gateway collectors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
        self.in_flight = Gauge(
            "tollgate_in_flight_requests", "Requests being served by this process.", registry=r
        )
        self.engine_in_flight = Gauge(
            "tollgate_engine_in_flight_requests",
            "In-flight requests per engine.",
            ["engine", "tier"],
            registry=r,
        )
        self.engine_up = Gauge(
            "tollgate_engine_up",
            "1 while an engine (one replica) takes traffic (breaker closed), else 0.",
            ["engine", "tier"],
            registry=r,
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
            "How late the event loop woke a 250 ms timer (saturation).",
            registry=r,
        )
        self.cost = Counter(
            "tollgate_cost_usd", "Cost of served requests in USD.", ["model", "tier"], registry=r
        )

        self.quota_refusals = Counter(
            "tollgate_quota_refusals",
            "Requests refused by a quota, by the limit hit (rpm, tpm, concurrency, "
            "budget_daily, budget_monthly, budget_total, store_unavailable).",
            ["limit"],
            registry=r,
        )
        self.quota_store_up = Gauge(
            "tollgate_quota_store_up",
            "1 while the shared quota store (Redis) is reachable, 0 while its breaker is "
            "open and the failure policy applies.",
            registry=r,
        )
        self.quota_pending_settlements = Gauge(
            "tollgate_quota_pending_settlements",
            "Settlements queued for the quota store (grows while Redis is out).",
            registry=r,
        )
        self.quota_dropped_settlements = Gauge(
            "tollgate_quota_dropped_settlements",
            "Settlements dropped because the queue was full (spend not counted in Redis; "
            "the ledger still has it).",
            registry=r,
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
