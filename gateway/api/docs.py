"""What routers say about themselves in the OpenAPI document (:mod:`gateway.api.schema`).

Routers that read their JSON bodies themselves declare them with :func:`json_body`,
and every router names the error statuses it answers with :func:`errors`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.protocol import ErrorResponse

REF = "#/components/schemas/{model}"
#: Where each operation's own component schemas wait until the document is assembled.
PENDING = "x-tollgate-components"

#: README's Errors table (and the admin API's own refusals).
ERROR_TEXT = {
    400: "Invalid JSON or UTF-8, a field that fails validation (named in `param`), "
    "a forbidden upstream field, engine-side validation.",
    401: "Missing, malformed, unknown, revoked or expired key (or admin token).",
    403: "The key may not use that model.",
    404: "Unknown model, object or path.",
    409: "The object exists already, or is revoked.",
    413: "The body is above `server.max_body_bytes`.",
    429: "A rate limit or a budget (or too many wrong admin tokens); with `Retry-After`.",
    502: "The engine failed or answered badly.",
    503: "No healthy engine, engine queue full, quota store or database down, draining.",
    504: "Time to first token, idle or total timeout.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these statuses, each with the error shape (JSON)."""
    return {s: error_response(s) for s in statuses}


def components(*models: type[BaseModel]) -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads and validates its JSON body itself."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": ref(model)}},
        },
        PENDING: components(model),
    }


def error_response(status: int) -> dict[str, Any]:
    """The OpenAPI response object of one error status."""
    return {
        "description": ERROR_TEXT[status],
        "content": {"application/json": {"schema": ref(ErrorResponse)}},
    }
