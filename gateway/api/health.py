"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from gateway.deps import services

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    svc = services(request)
    pool = svc.pipeline.pool
    engines = {
        e.name: {"tier": e.tier, "healthy": e.healthy, "in_flight": e.in_flight}
        for e in pool.engines.values()
    }
    tiers_up = {t for t, es in pool.by_tier.items() if any(e.healthy for e in es)}
    ok = not svc.draining and tiers_up == set(pool.by_tier)
    body = {"status": "ready" if ok else "not_ready", "draining": svc.draining, "engines": engines}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
