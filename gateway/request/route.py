"""Routing stage: the request's features, the router's decision, the shadow mirror."""

from __future__ import annotations

from typing import Any

from gateway.request.context import Admitted
from gateway.routing.features import Features
from gateway.routing.router import RouteDecision, Router


def features(admitted: Admitted, router: Router) -> Features:
    """Cheap facts about the request and its key, for the routing policy."""
    req = admitted.request
    raw = req.raw
    fmt = raw.get("response_format")
    requested = req.requested_max_tokens
    principal = admitted.principal
    return Features(
        prompt_tokens=admitted.prompt_tokens,
        # What the client asked for: the default (the whole context) says nothing.
        max_tokens=requested * req.n if requested else 0,
        messages=len(raw.get("messages") or ()),
        has_tools=bool(raw.get("tools")),
        json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"),
        text=last_user_text(raw),
        budget_remaining_nusd=admitted.reservation.budget_remaining_nusd,
        key_defaults=principal.routing,
        key_id=principal.key_id,
        prefix_hash=router.prefix_hash(raw),
        prefix_blocks=router.prefix_blocks(raw),
    )


def decide(admitted: Admitted, router: Router) -> RouteDecision:
    return router.decide(admitted.model, features(admitted, router))


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
