"""The stand-in's ASGI app: its routes, vLLM's ``--api-key`` check, HTTP error shape."""

from __future__ import annotations

import hmac

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engines.standin.config import StandinConfig
from engines.standin.engine import StandinEngine
from engines.standin.streams import RAW_SEND
from engines.standin.wire import json_response


class _StandinApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope (see RAW_SEND)."""

    api_key: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        if (
            self.api_key is not None
            and scope["type"] == "http"
            and _unauthorized(scope, self.api_key)
        ):
            # vLLM's --api-key middleware: 401 on /v1 paths, health and metrics stay open
            body = b'{"error":"Unauthorized"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await super().__call__(scope, receive, send)


def _unauthorized(scope: Scope, key: bytes) -> bool:
    if not str(scope.get("path", "")).startswith("/v1"):
        return False
    given = dict(scope.get("headers") or ()).get(b"authorization", b"")
    return not hmac.compare_digest(given, b"Bearer " + key)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # FastAPI's shape, which vLLM (on FastAPI) sends
    return json_response(orjson.dumps({"detail": exc.detail}), exc.headers or {}, exc.status_code)


def create_app(config: StandinConfig) -> Starlette:
    """Build the stand-in's ASGI app; its `StandinEngine` is `app.state.engine`."""
    engine = StandinEngine(config)
    routes = [
        Route("/health", engine.health, methods=["GET"]),
        Route("/metrics", engine.metrics, methods=["GET"]),
        Route("/v1/models", engine.models, methods=["GET"]),
        Route("/v1/chat/completions", engine.chat, methods=["POST"]),
        Route("/v1/completions", engine.completions, methods=["POST"]),
        *engine.hooks.routes(),
    ]
    if config.embeddings:
        routes.append(Route("/v1/embeddings", engine.embeddings, methods=["POST"]))
    app = _StandinApp(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.engine = engine
    app.api_key = config.api_key.encode() if config.api_key else None
    return app
