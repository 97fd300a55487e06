"""Admin API root: every /admin route requires the admin token (never a client key).

Feature modules add their own routers under this prefix with :data:`AdminAuth`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.auth import check_admin_token
from gateway.deps import services


async def require_admin(request: Request) -> None:
    settings = services(request).settings
    token = settings.auth.admin_token
    check_admin_token(
        request.headers.get("authorization"), token.get_secret_value() if token else None
    )


AdminAuth = Annotated[None, Depends(require_admin)]

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/engines")
async def engines(request: Request) -> dict[str, object]:
    pool = services(request).pipeline.pool
    return {
        "engines": [
            {
                "name": e.name,
                "tier": e.tier,
                "model": e.model,
                "healthy": e.healthy,
                "in_flight": e.in_flight,
                "queue": pool.queue_depth(e),
                "waiting": e.waiting,
                "running": e.running,
                "kv_cache_usage": e.kv_cache_usage,
            }
            for e in pool.engines.values()
        ]
    }
