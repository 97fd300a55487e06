"""Routing stage: the request's features, the router's decision, the shadow mirror."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.auth import Principal
from gateway.protocol import ParsedRequest
from gateway.request.context import Admitted
from gateway.routing.features import Features
from gateway.routing.router import RouteDecision, Router


def features(admitted: Admitted, router: Router) -> Features:
    """Cheap facts about the request and its key, for the routing policy."""
    return features_of(
        admitted.request,
        admitted.principal,
        admitted.prompt_tokens,
        router,
        admitted.reservation.budget_remaining_nusd,
    )


def features_of(
    req: ParsedRequest,
    principal: Principal,
    prompt_tokens: int,
    router: Router,
    budget_remaining_nusd: int | None = None,
) -> Features:
    """The features, before anything is reserved (the budget left unknown) or after."""
    raw = req.raw
    fmt = raw.get("response_format")
    requested = req.requested_max_tokens
    return Features(
        prompt_tokens=prompt_tokens,
        # What the client asked for: the default (the whole context) says nothing.
        max_tokens=requested * req.n if requested else 0,
        messages=len(raw.get("messages") or ()),
        has_tools=bool(raw.get("tools")),
        json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"),
        text=last_user_text(raw),
        budget_remaining_nusd=budget_remaining_nusd,
        key_defaults=principal.routing,
        key_id=principal.key_id,
        prefix_hash=router.prefix_hash(raw),
        prefix_blocks=router.prefix_blocks(raw),
    )


def decide(admitted: Admitted, router: Router) -> RouteDecision:
    """The route. An ``auto`` request reuses admission's features and tier plan, now
    with the remaining budget its reservation reported."""
    plan = admitted.plan
    if plan is None:
        return router.decide(admitted.model, features(admitted, router))
    f = plan.features
    remaining = admitted.reservation.budget_remaining_nusd
    if remaining is not None:
        f = replace(f, budget_remaining_nusd=remaining)
    return router.decide(admitted.model, f, plan)


def last_user_text(raw: dict[str, Any]) -> str:
    messages = raw.get("messages")
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                content = msg.get("content")
                return content if isinstance(content, str) else ""
        return ""
    prompt = raw.get("prompt")
    return prompt if isinstance(prompt, str) else ""
