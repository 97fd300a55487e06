"""Metrics and the access log for one request (labels come from config, never the request)."""

from __future__ import annotations

import logging
import time

from gateway.errors import GatewayError, QuotaStoreUnavailable, RateLimitError
from gateway.metrics import Metrics
from gateway.request.context import RequestContext

log = logging.getLogger("tollgate.access")


class Observer:
    def __init__(self, metrics: Metrics, *, access_log: bool) -> None:
        self._m = metrics
        self._access_log = access_log

    def rejected(self, ctx: RequestContext, err: GatewayError) -> None:
        """Refused before reaching an engine (auth, validation, quota)."""
        m = self._m
        m.requests.labels(ctx.model_label, "none", str(err.status_code)).inc()
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
        m = self._m
        tier = ctx.tier
        model = ctx.model_label
        elapsed = time.perf_counter() - ctx.t0
        m.requests.labels(model, tier, str(ctx.http_status)).inc()
        m.latency.labels(model, tier).observe(elapsed)
        if ctx.ttft is not None:
            m.ttft.labels(model, tier).observe(ctx.ttft)
        usage = ctx.usage
        if usage is not None:
            m.tokens.labels(model, tier, "prompt").inc(usage.prompt)
            m.tokens.labels(model, tier, "completion").inc(usage.completion)
        if ctx.cost_nusd:
            m.cost.labels(model, tier).inc(ctx.cost_nusd / 1e9)
        if ctx.decision is not None:
            m.route_decisions.labels(ctx.decision.tier, ctx.decision.reason).inc()
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
