"""Liveness, readiness, per-engine health and Prometheus metrics.

Probe design (Kubernetes): liveness is ``/health`` (the process answers; never depends
on a backend), readiness is ``/health/ready``: 200 while every configured model can
still be served, through fallback included, 503 while draining or when some model has
no engine left at all. One engine (or a whole tier with a fallback) being down must not
take every gateway pod out of its Service; that shows on ``/health/engines`` and in
``tollgate_engine_up`` instead.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gateway.services import services

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready", responses={503: {"description": "Draining, or a model has no engine."}}
)
async def ready(request: Request) -> Response:
    svc = services(request)
    routing = svc.router
    models = {m.name: routing.servable(m) for m in routing.public_models()}
    unservable = sorted(name for name, ok in models.items() if not ok)
    stopping = svc.draining or svc.stopping
    ok = not stopping and not unservable
    body = {
        "status": "ready" if ok else "not_ready",
        "draining": stopping,
        "models": models,
        "unservable": unservable,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/health/engines")
async def engines(request: Request) -> Response:
    """Every engine replica's health, for operators (always 200)."""
    svc = services(request)
    pool, breakers = svc.pool, svc.breakers
    rows = [
        {
            "name": e.name,
            "tier": e.tier,
            "model": e.model,
            "healthy": e.healthy,
            "breaker": breakers.describe(e),
            "in_flight": e.in_flight,
            "queue": pool.queue_depth(e),
            "waiting": e.waiting,
            "running": e.running,
        }
        for e in pool.engines.values()
    ]
    tiers = {tier: sum(1 for e in engines if e.healthy) for tier, engines in pool.by_tier.items()}
    return JSONResponse({"engines": rows, "healthy_by_tier": tiers})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
