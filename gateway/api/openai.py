"""OpenAI-compatible routes: chat, completions and embeddings as raw ASGI; models on FastAPI.

The three generation routes are the hot path, so they skip FastAPI's routing, dependency
and exception machinery (measured in bench/results/throughput.md): :class:`OpenAIRoutes`
wraps the FastAPI app, answers those paths itself, and passes everything else on.
Errors keep the one shape of :mod:`gateway.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.types import Receive, Scope, Send

from gateway.api.docs import errors
from gateway.auth import Principal, bearer_token
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from gateway.protocol import Endpoint, ModelCard, ModelList
from gateway.request.reply import Reply
from gateway.services import Services, services

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ENDPOINTS = {e.path: e for e in Endpoint}


class RequestIds:
    """Request ids for requests that bring none: a random process prefix and a counter."""

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:016x}"


class OpenAIRoutes:
    """ASGI app: POST /v1/chat/completions, /v1/completions, /v1/embeddings; else ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._ids = RequestIds()

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        authorization = client_id = length = traceparent = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-request-id":
                client_id = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"traceparent":
                traceparent = value
        rid = client_id if client_id and _REQUEST_ID.match(client_id) else self._ids.next()
        try:
            if scope["method"] != "POST":
                refusal = InvalidRequestError("Method Not Allowed", code="http_405")
                refusal.status_code = 405
                raise refusal
            response = await self._serve(receive, endpoint, rid, authorization, length, traceparent)
        except GatewayError as err:
            response = Reply.error(err, {"x-request-id": rid, **err.headers})
        except Exception as exc:  # the one place a bug becomes a 500, never a trace
            log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
            internal = InternalError("The gateway hit an internal error.")
            response = Reply.error(internal, {"x-request-id": rid})
        if response is not None:
            await response(scope, receive, send)

    async def _serve(
        self,
        receive: Receive,
        endpoint: Endpoint,
        rid: str,
        authorization: str | None,
        length: bytes | None,
        traceparent: bytes | None,
    ) -> Any:
        svc: Services = self.app.state.services
        if svc.draining:
            raise ServiceUnavailableError(
                "The gateway is shutting down.", headers={"Retry-After": "1", "Connection": "close"}
            )
        pipeline = svc.pipeline
        svc.overload.check(pipeline.active)
        server = svc.settings.server
        try:
            async with asyncio.timeout(server.body_timeout_s):
                body = await read_body(receive, length, server.max_body_bytes)
        except TimeoutError:
            raise RequestTimeoutError(
                f"The request body did not arrive within {server.body_timeout_s:g} s."
            ) from None
        if body is None:
            return None
        ctx = pipeline.new_context(rid, endpoint, traceparent)
        # A client that hangs up while a non-streaming request runs aborts it upstream too
        # (streams have their own watcher in SSEResponse).
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, gone))
        try:
            return await pipeline.handle(ctx, authorization, body)
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            task.uncancel()
            return None  # nobody is listening
        finally:
            watcher.cancel()


async def read_body(receive: Receive, length: bytes | None, limit: int) -> bytes | None:
    """The whole request body, within ``limit`` (413 beyond); None if the client left."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client left before sending all of its body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], gone: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                task.cancel()
                return


def request_id(request: Request) -> str:
    """Honour a sane incoming X-Request-ID, else make one (FastAPI routes)."""
    rid = request.headers.get("x-request-id")
    if rid is None or not _REQUEST_ID.match(rid):
        rid = secrets.token_hex(16)
    request.state.request_id = rid
    return rid


def _model_card(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tollgate"}


@router.get("/models", responses={200: {"model": ModelList}, **errors(401, 503)})
async def list_models(request: Request) -> dict[str, object]:
    svc = services(request)
    principal = await _authenticate(request)
    created = int(svc.started_at)
    data = []
    for m in svc.settings.models:
        if principal.models is not None and m.name not in principal.models:
            continue  # only what this key may use
        for name in (m.name, *m.aliases):
            data.append(_model_card(name, created))
    return {"object": "list", "data": data}


@router.get(
    "/models/{model_id:path}", responses={200: {"model": ModelCard}, **errors(401, 403, 404, 503)}
)
async def get_model(model_id: str, request: Request) -> dict[str, object]:
    svc = services(request)
    principal = await _authenticate(request)
    created = int(svc.started_at)
    for m in svc.settings.models:
        if model_id == m.name or model_id in m.aliases:
            principal.check_model(m.name)
            return _model_card(model_id, created)
    raise NotFoundError(f"The model '{model_id}' does not exist.", param="model")


async def _authenticate(request: Request) -> Principal:
    request_id(request)
    header = request.headers.get("authorization")
    return await services(request).authenticator.authenticate(bearer_token(header))
