"""OpenAI-compatible routes: chat, completions, embeddings, models."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.auth import Principal
from gateway.errors import NotFoundError, PayloadTooLargeError, ServiceUnavailableError
from gateway.protocol import Endpoint
from gateway.services import services

router = APIRouter(prefix="/v1", tags=["openai"])

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(request: Request) -> str:
    """Honour a sane incoming X-Request-ID, else make one."""
    rid = request.headers.get("x-request-id")
    if rid is None or not _REQUEST_ID.match(rid):
        rid = secrets.token_hex(16)
    request.state.request_id = rid
    return rid


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _serve(request: Request, endpoint: Endpoint) -> Response:
    svc = services(request)
    rid = request_id(request)
    if svc.draining:
        raise ServiceUnavailableError(
            "The gateway is shutting down.", headers={"Retry-After": "1", "Connection": "close"}
        )
    pipeline = svc.pipeline
    ctx = pipeline.new_context(rid, endpoint)
    body = await read_body(request, svc.settings.server.max_body_bytes)
    # A client that hangs up while a non-streaming request runs aborts it upstream too
    # (streams have their own watcher in SSEResponse).
    task = asyncio.current_task()
    assert task is not None
    gone = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(request, task, gone))
    try:
        return await pipeline.handle(ctx, request.headers.get("authorization"), body)
    except asyncio.CancelledError:
        if not gone.is_set():
            raise
        task.uncancel()
        return Response(status_code=499)
    finally:
        watcher.cancel()


async def _watch_disconnect(
    request: Request, task: asyncio.Task[object], gone: asyncio.Event
) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                task.cancel()
                return


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, Endpoint.CHAT)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, Endpoint.COMPLETIONS)


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    return await _serve(request, Endpoint.EMBEDDINGS)


def _model_card(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tollgate"}


@router.get("/models")
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


@router.get("/models/{model_id:path}")
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
    from gateway.auth import bearer_token

    request_id(request)
    header = request.headers.get("authorization")
    return await services(request).authenticator.authenticate(bearer_token(header))
