"""Metrics and the access log for one request (labels come from config, never the request)."""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from gateway.errors import GatewayError, QuotaStoreUnavailable, RateLimitError
from gateway.metrics import Metrics
from gateway.request.context import RequestContext

log = logging.getLogger("tollgate.access")


class _Series(NamedTuple):
    """One (model, tier)'s metric children, looked up once (labels() is not free)."""

    latency: Any
    ttft: Any
    prompt: Any
    completion: Any
    cost: Any


class Observer:
    def __init__(self, metrics: Metrics, *, access_log: bool) -> None:
        self._m = metrics
        self._access_log = access_log
        # Label values come from config and fixed vocabularies, so these stay small.
        self._series: dict[tuple[str, str], _Series] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._decisions: dict[tuple[str, str], Any] = {}

    def _of(self, model: str, tier: str) -> _Series:
        series = self._series.get((model, tier))
        if series is None:
            m = self._m
            series = self._series[(model, tier)] = _Series(
                m.latency.labels(model, tier),
                m.ttft.labels(model, tier),
                m.tokens.labels(model, tier, "prompt"),
                m.tokens.labels(model, tier, "completion"),
                m.cost.labels(model, tier),
            )
        return series

    def _count(self, model: str, tier: str, status: int) -> None:
        child = self._requests.get((model, tier, status))
        if child is None:
            child = self._requests[(model, tier, status)] = self._m.requests.labels(
                model, tier, str(status)
            )
        child.inc()

    def rejected(self, ctx: RequestContext, err: GatewayError) -> None:
        """Refused before reaching an engine (auth, validation, quota)."""
        m = self._m
        self._count(ctx.model_label, "none", err.status_code)
        if isinstance(err, RateLimitError):
            m.quota_refusals.labels(err.headers.get("x-tollgate-limit", "other")).inc()
        elif isinstance(err, QuotaStoreUnavailable):
            m.quota_refusals.labels("store_unavailable").inc()
        if self._access_log:
            log.info(
                "rejected",
                extra={
                    "request_id": ctx.request_id,
                    "key": ctx.principal.key_prefix if ctx.principal else None,
                    "model": ctx.model_label,
                    "status": err.status_code,
                    "code": err.code,
                },
            )

    def finished(self, ctx: RequestContext) -> None:
        tier = ctx.tier
        model = ctx.model_label
        elapsed = time.perf_counter() - ctx.t0
        self._count(model, tier, ctx.http_status)
        series = self._of(model, tier)
        series.latency.observe(elapsed)
        if ctx.ttft is not None:
            series.ttft.observe(ctx.ttft)
        usage = ctx.usage
        if usage is not None:
            series.prompt.inc(usage.prompt)
            series.completion.inc(usage.completion)
        if ctx.cost_nusd:
            series.cost.inc(ctx.cost_nusd / 1e9)
        decision = ctx.decision
        if decision is not None:
            key = (decision.tier, decision.reason)
            child = self._decisions.get(key)
            if child is None:
                child = self._decisions[key] = self._m.route_decisions.labels(*key)
            child.inc()
        if self._access_log:
            log.info(
                "request",
                extra={
                    "request_id": ctx.request_id,
                    "key": ctx.principal.key_prefix if ctx.principal else None,
                    "model": model,
                    "tier": tier,
                    "engine": ctx.engine.name if ctx.engine else None,
                    "stream": ctx.stream,
                    "status": ctx.http_status,
                    "outcome": ctx.status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "ttft_ms": round(ctx.ttft * 1000, 2) if ctx.ttft is not None else None,
                    "prompt_tokens": usage.prompt if usage is not None else None,
                    "completion_tokens": usage.completion if usage is not None else None,
                    "estimated": ctx.usage_estimated,
                },
            )
