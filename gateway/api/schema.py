"""The gateway's OpenAPI 3.1 document, built once at start-up from the code.

Nothing in it is written by hand twice:

* FastAPI's ``get_openapi`` over the routes the apps really serve (models, health,
  admin, this document's own route); the routers declare their error statuses with
  :func:`errors` and the admin key routes their bodies with :func:`json_body`.
* The raw ASGI generation routes (:class:`gateway.api.openai.OpenAIRoutes`) from the
  request and response models of :mod:`gateway.protocol`.
* Two bearer schemes: ``clientKey`` for ``/v1``, ``adminToken`` for ``/admin`` and
  ``/openapi.json``; every error has the one shape of :class:`ErrorResponse`.

It is served at ``/openapi.json`` on the admin listener (on the main one when there is
no admin port), behind the admin token: it maps the admin surface, which a client has
no need to see, and a client already has OpenAI's own documentation.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.responses import Response

from gateway.api.admin import require_admin
from gateway.api.docs import PENDING, components, error_response, errors, ref
from gateway.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    Endpoint,
    ErrorResponse,
)

SECURITY_SCHEMES = {
    "clientKey": {"type": "http", "scheme": "bearer", "description": "A client API key."},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "`auth.admin_token`."},
    "adminSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "tollgate_admin",
        "description": "The dashboard's session cookie (GET and HEAD only).",
    },
}
#: One server-sent event of a stream (OpenAPI 3.1: ``schema`` describes each event).
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A JSON chunk; after a failure past the first byte, an error "
            "object; the last event is `[DONE]`.",
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
    },
}
_GENERATION: dict[Endpoint, tuple[type[BaseModel], type[BaseModel], bool]] = {
    Endpoint.CHAT: (ChatCompletionRequest, ChatCompletion, True),
    Endpoint.COMPLETIONS: (CompletionRequest, Completion, True),
    Endpoint.EMBEDDINGS: (EmbeddingRequest, EmbeddingList, False),
}


def _generation(endpoint: Endpoint) -> tuple[dict[str, Any], dict[str, Any]]:
    request, response, streams = _GENERATION[endpoint]
    content: dict[str, Any] = {"application/json": {"schema": ref(response)}}
    if streams:
        content["text/event-stream"] = {"schema": _SSE_EVENT}
    failures = (400, 401, 403, 404, 413, 429, 502, 503, 504)
    operation = {
        "tags": ["openai"],
        "summary": f"Create {endpoint.value}",
        "operationId": f"create_{endpoint.value}",
        "security": [{"clientKey": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ref(request)}},
        },
        "responses": {
            "200": {"description": "Successful Response", "content": content},
            **{str(s): error_response(s) for s in failures},
        },
    }
    return operation, components(request, response, ErrorResponse)


def _default_security(path: str) -> list[dict[str, list[str]]]:
    if path.startswith("/v1/"):
        return [{"clientKey": []}]
    if path.startswith("/admin/") or path == "/openapi.json":
        return [{"adminToken": []}, {"adminSession": []}]
    return []  # health and metrics: for probes and scrapers


def _tidy(operation: dict[str, Any], path: str, schemas: dict[str, Any]) -> None:
    schemas.update(operation.pop(PENDING, {}))
    operation.setdefault("security", _default_security(path))
    responses = operation["responses"]
    # Our handler answers a failed validation 400 in the error shape, never FastAPI's 422.
    if responses.pop("422", None) is not None and "400" not in responses:
        responses["400"] = error_response(400)


def build_openapi(*apps: FastAPI, version: str = "0.1.0") -> dict[str, Any]:
    """The whole API: every route of ``apps`` plus the raw generation routes."""
    doc = get_openapi(
        title="Tollgate",
        version=version,
        openapi_version="3.1.0",
        summary="OpenAI-compatible gateway for vLLM engines: routing, quotas, cost ledger.",
        routes=[route for app in apps for route in app.routes],
    )
    parts = doc.setdefault("components", {})
    schemas: dict[str, Any] = parts.setdefault("schemas", {})
    schemas.update(components(ErrorResponse))  # the routers' errors refer to it
    for name in ("HTTPValidationError", "ValidationError"):  # 422 is never answered
        schemas.pop(name, None)
    for path, item in doc["paths"].items():
        for operation in item.values():
            _tidy(operation, path, schemas)
    for endpoint in Endpoint:
        operation, needed = _generation(endpoint)
        schemas.update(needed)
        doc["paths"][endpoint.path] = {"post": operation}
    parts["securitySchemes"] = SECURITY_SCHEMES
    return doc


router = APIRouter(tags=["operations"], dependencies=[Depends(require_admin)])


@router.get("/openapi.json", responses=errors(401, 429))
async def openapi(request: Request) -> Response:
    """This document (admin token)."""
    return Response(request.app.state.openapi_json, media_type="application/json")


def serve_openapi(target: FastAPI, *apps: FastAPI) -> None:
    """Add ``/openapi.json`` to ``target`` and build the document of ``apps`` (after it)."""
    target.include_router(router)
    target.state.openapi_json = orjson.dumps(build_openapi(*apps))
