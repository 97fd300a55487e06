"""Response and error headers: request id, rate limits, tier, route reason, engine, cost."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.request.context import RequestContext


def response_headers(ctx: RequestContext, *, cost_header: bool) -> dict[str, str]:
    h = {"x-request-id": ctx.request_id}
    admitted = ctx.admitted
    if admitted is not None:
        h.update(admitted.reservation.snapshot.headers())
    if ctx.decision is not None:
        h["x-tollgate-tier"] = ctx.tier
        h["x-tollgate-route-reason"] = ctx.route_reason
    if ctx.engine is not None:
        h["x-tollgate-engine"] = ctx.engine.name
    if cost_header and not ctx.stream:
        h["x-request-cost-usd"] = f"{ctx.cost_nusd / 1e9:.9f}"
    return h


def error_headers(ctx: RequestContext, err: GatewayError) -> dict[str, str]:
    h = {"x-request-id": ctx.request_id, **err.headers}
    if ctx.admitted is not None:
        h.update(ctx.admitted.reservation.snapshot.headers())
    return h


def encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
