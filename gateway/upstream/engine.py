"""One upstream vLLM engine (a replica) and its live counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import EngineSettings


@dataclass(slots=True)
class Engine:
    """One upstream vLLM engine and its live counters."""

    settings: EngineSettings
    in_flight: int = 0
    #: Scraped from the engine's /metrics (see routing.health).
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    metrics_at: float = 0.0
    #: Our own ``in_flight`` when the metrics were scraped (to correct them until the next).
    scraped_in_flight: int = 0
    healthy: bool = True
    #: Gone from discovery: takes no new requests, finishes those it has.
    retired: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def tier(self) -> str:
        return self.settings.tier

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def price_model(self) -> str:
        """The model name the price book knows this engine's output by."""
        return self.settings.price_model or self.settings.model

    @property
    def url(self) -> str:
        return (self.settings.url or "").rstrip("/")
