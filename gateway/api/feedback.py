"""``POST /v1/feedback``: a client rates one of its own answered requests.

Body: ``{"request_id": "...", "score": 0.8}`` or ``{"request_id": "...", "label": "bad"}``
(exactly one of ``score`` in [0, 1] and ``label`` in ``good``/``bad``). The request id is
the ``x-request-id`` of the answer. Authenticated by the client key; a request id that is
not this key's (another key's, or unknown) is 404, the same answer either way. Counted
against the key's requests-per-minute (and concurrency) like any request, at no token or
dollar cost. Sending feedback again for the same request replaces it (last write wins,
``"replaced": true``), so retries are safe. Stored in the ledger database
(:mod:`gateway.ledger.feedback`) for ``tollgate routing train``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.api.docs import errors, json_body
from gateway.api.openai import request_id
from gateway.auth import bearer_token
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
)
from gateway.ledger.feedback import LABELS, Feedback
from gateway.quotas.base import Demand
from gateway.services import services

router = APIRouter(prefix="/v1", tags=["feedback"])

_MAX_BODY = 4096
_NOTHING = Demand(tokens=0, cost_nusd=0)
_REQUEST_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


class FeedbackRequest(BaseModel):
    """How good the answer to ``request_id`` was: a ``score`` or a ``label``, not both."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    score: float | None = Field(None, ge=0, le=1, description="Quality, 0 (bad) to 1 (good).")
    label: Literal["good", "bad"] | None = None


class FeedbackAck(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    score: float
    label: Literal["good", "bad"] | None = None
    #: True when this replaced earlier feedback on the same request.
    replaced: bool


def parse_feedback(body: bytes) -> Feedback:
    """The feedback in a body, or a 400 naming the field at fault (values never echoed)."""
    if len(body) > _MAX_BODY:
        raise PayloadTooLargeError(f"The feedback body is larger than {_MAX_BODY} bytes.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    unknown = sorted(str(k) for k in data if k not in FeedbackRequest.model_fields)
    if unknown:
        raise InvalidRequestError(f"Unknown field '{unknown[0][:64]}'.", param=unknown[0][:64])
    rid = data.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128 or not set(rid) <= _REQUEST_ID_CHARS:
        raise InvalidRequestError(
            "request_id must be the x-request-id of an answer (1-128 of A-Z a-z 0-9 . _ : -).",
            param="request_id",
        )
    score, label = data.get("score"), data.get("label")
    if (score is None) == (label is None):
        raise InvalidRequestError("Send exactly one of score and label.", param="score")
    if label is not None:
        if label not in LABELS:
            raise InvalidRequestError("label must be 'good' or 'bad'.", param="label")
        return Feedback(rid, LABELS[label], label)
    if (
        not isinstance(score, int | float)
        or isinstance(score, bool)
        or not math.isfinite(score)
        or not 0 <= score <= 1
    ):
        raise InvalidRequestError("score must be a number from 0 to 1.", param="score")
    return Feedback(rid, float(score), None)


def _outcome(err: GatewayError) -> str:
    if isinstance(err, RateLimitError):
        return "rate_limited"
    if isinstance(err, NotFoundError):
        return "not_found"
    if isinstance(err, InvalidRequestError | PayloadTooLargeError):
        return "invalid"
    if isinstance(err, AuthenticationError):
        return "unauthorized"
    return "unavailable"


@router.post(
    "/feedback",
    openapi_extra=json_body(FeedbackRequest),
    responses={200: {"model": FeedbackAck}, **errors(400, 401, 404, 413, 429, 503)},
)
async def post_feedback(request: Request) -> Response:
    """Rate the answer to one of this key's requests (for the learned router)."""
    request_id(request)
    svc = services(request)
    try:
        principal = await svc.authenticator.authenticate(
            bearer_token(request.headers.get("authorization"))
        )
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > _MAX_BODY:  # before reading it
            raise PayloadTooLargeError(f"The feedback body is larger than {_MAX_BODY} bytes.")
        feedback = parse_feedback(await request.body())
        ledger = svc.ledger
        if ledger is None:
            raise NotFoundError(
                "Feedback needs the ledger (ledger.enabled: false).", code="ledger_disabled"
            )
        reservation = await svc.quotas.reserve(principal, request.state.request_id, _NOTHING)
        try:
            stored = await asyncio.to_thread(ledger.feedback.put, principal.key_id, feedback)
            # Just answered here, its record may still wait in this process's writer.
            if stored is None and await ledger.writer.flush(timeout=2.0):
                stored = await asyncio.to_thread(ledger.feedback.put, principal.key_id, feedback)
        finally:
            await svc.quotas.settle(reservation, _NOTHING)
        if stored is None:
            raise NotFoundError(
                "This key has no request with that id in the ledger.",
                param="request_id",
                code="request_not_found",
            )
    except GatewayError as err:
        svc.metrics.feedback.labels(_outcome(err)).inc()
        raise
    svc.metrics.feedback.labels("replaced" if stored.replaced else "stored").inc()
    ack = FeedbackAck(
        request_id=stored.request_id,
        score=stored.score,
        label=stored.label,
        replaced=stored.replaced,
    )
    return Response(
        orjson.dumps(ack.model_dump()),
        media_type="application/json",
        headers={"x-request-id": request.state.request_id, **reservation.snapshot.headers()},
    )
