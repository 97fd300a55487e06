"""Builders for routing unit tests: settings, pools and a controllable clock."""

from __future__ import annotations

from typing import Any

from gateway.config import Settings
from gateway.routing.features import Features
from tests.support import ListRecorder

__all__ = ["FakeClock", "ListRecorder", "engine", "features", "make_settings"]


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def engine(name: str, tier: str, port: int = 9, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": f"http://127.0.0.1:{port}",
        "tier": tier,
        "model": f"model-{tier}",
        **extra,
    }


def make_settings(engines: list[dict[str, Any]] | None = None, **routing: Any) -> Settings:
    engines = engines or [engine("small-0", "small"), engine("large-0", "large")]
    tiers = sorted({e["tier"] for e in engines})
    return Settings(
        engines=engines,
        models=[{"name": t, "tier": t} for t in tiers] + [{"name": "auto", "auto": True}],
        routing=routing,
    )


def features(
    *,
    prompt_tokens: int = 20,
    max_tokens: int = 0,
    messages: int = 1,
    has_tools: bool = False,
    json_mode: bool = False,
    text: str = "hello there",
    budget_remaining_nusd: int | None = None,
    key_defaults: dict[str, Any] | None = None,
    key_id: str | None = None,
    prefix_hash: int = 0,
) -> Features:
    return Features(
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        messages=messages,
        has_tools=has_tools,
        json_mode=json_mode,
        text=text,
        budget_remaining_nusd=budget_remaining_nusd,
        key_defaults=key_defaults,
        key_id=key_id,
        prefix_hash=prefix_hash,
    )
