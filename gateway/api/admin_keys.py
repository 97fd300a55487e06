"""Admin API for managed keys and teams (``/admin/keys``, ``/admin/teams``).

Every route needs the admin token (:func:`gateway.api.admin.require_admin`), never a
client key. A key is in a response body only once: from create and from rotate, sent
with ``Cache-Control: no-store``. The logic lives in :class:`gateway.keys.KeyStore`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse, Response

from gateway.api.admin import require_admin
from gateway.api.docs import errors, json_body
from gateway.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from gateway.keys import KeyCreate, KeyRotate, KeyServices, KeyUpdate, TeamCreate, TeamUpdate
from gateway.services import services

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=errors(400, 401, 404, 409, 429, 503),
)

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
_NO_STORE = {"cache-control": "no-store"}


def key_services(request: Request) -> KeyServices:
    keys = services(request).keys
    if keys is None:
        raise NotFoundError(
            "The managed key store is disabled (auth.key_store: false).",
            code="key_store_disabled",
        )
    return keys


async def parse(request: Request, model: type[M]) -> M:
    """Validate a JSON body, naming the offending fields (never echoing values)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRequestError(f"Invalid request body: {problems}") from None


async def run(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Run a store call off the event loop; a database failure is a 503."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except SQLAlchemyError:
        raise ServiceUnavailableError(
            "The key store database is unavailable.", code="key_store_unavailable"
        ) from None


def _json(
    data: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------- keys


@router.post("/keys", status_code=201, openapi_extra=json_body(KeyCreate))
async def create_key(request: Request) -> Response:
    keys = key_services(request)
    created = await run(keys.store.create_key, await parse(request, KeyCreate))
    return _json(created, 201, _NO_STORE)


@router.get("/keys")
async def list_keys(
    request: Request, team: str | None = None, include_revoked: bool = False
) -> Response:
    keys = key_services(request)
    found = await run(keys.store.list_keys, team=team, include_revoked=include_revoked)
    return _json({"object": "list", "data": [k.model_dump(mode="json") for k in found]})


@router.get("/keys/{key_id}")
async def get_key(request: Request, key_id: str) -> Response:
    return _json(await run(key_services(request).store.get_key, key_id))


@router.patch("/keys/{key_id}", openapi_extra=json_body(KeyUpdate))
async def update_key(request: Request, key_id: str) -> Response:
    keys = key_services(request)
    info = await run(keys.store.update_key, key_id, await parse(request, KeyUpdate))
    keys.authenticator.invalidate()
    return _json(info)


@router.delete("/keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> Response:
    keys = key_services(request)
    info = await run(keys.store.revoke_key, key_id)
    keys.authenticator.invalidate()
    return _json(info)


@router.post("/keys/{key_id}/rotate", openapi_extra=json_body(KeyRotate, required=False))
async def rotate_key(request: Request, key_id: str) -> Response:
    """New secret; ``{"grace_seconds": N}`` keeps the old one working N more seconds."""
    keys = key_services(request)
    spec = await parse(request, KeyRotate) if await request.body() else KeyRotate()
    created = await run(keys.store.rotate_key, key_id, grace_s=spec.grace_seconds)
    keys.authenticator.invalidate()
    return _json(created, headers=_NO_STORE)


# ---------------------------------------------------------------------- teams


@router.post("/teams", status_code=201, openapi_extra=json_body(TeamCreate))
async def create_team(request: Request) -> Response:
    keys = key_services(request)
    return _json(await run(keys.store.create_team, await parse(request, TeamCreate)), 201)


@router.get("/teams")
async def list_teams(request: Request) -> Response:
    found = await run(key_services(request).store.list_teams)
    return _json({"object": "list", "data": [t.model_dump(mode="json") for t in found]})


@router.get("/teams/{name}")
async def get_team(request: Request, name: str) -> Response:
    return _json(await run(key_services(request).store.get_team, name))


@router.patch("/teams/{name}", openapi_extra=json_body(TeamUpdate))
async def update_team(request: Request, name: str) -> Response:
    keys = key_services(request)
    info = await run(keys.store.update_team, name, await parse(request, TeamUpdate))
    keys.authenticator.invalidate()
    return _json(info)


@router.delete("/teams/{name}", status_code=204)
async def delete_team(request: Request, name: str) -> Response:
    keys = key_services(request)
    await run(keys.store.delete_team, name)
    keys.authenticator.invalidate()
    return Response(status_code=204)


# ---------------------------------------------------------------------- quotas


@router.get("/quotas/status")
async def quota_status(request: Request) -> Response:
    """The quota store's health: backend, Redis reachability, queued settlements."""
    quotas = services(request).quotas
    status = getattr(quotas, "status", None)
    data: dict[str, Any] = status() if callable(status) else {"backend": type(quotas).__name__}
    return _json(data)
