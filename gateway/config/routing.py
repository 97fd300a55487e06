"""Settings of where requests go: ``engines``, ``models``, ``timeouts`` and ``routing``."""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator

from gateway.config.accounting import data_dir
from gateway.config.base import Section


class EngineSettings(Section):
    """One configured engine entry: a single URL, a list of URLs, or a DNS name.

    ``url`` alone is one engine. ``urls`` is one replica per URL (named ``NAME-0``,
    ``NAME-1``...). ``discover: dns`` resolves ``url``'s host (a headless Service) to its
    A/AAAA records every ``discover_interval_s``; each address becomes its own replica
    (see :mod:`gateway.routing.discovery`). Replicas share every other field.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str | None = None
    urls: list[str] = Field(default_factory=list)
    discover: Literal["static", "dns"] = "static"
    discover_interval_s: float = Field(10.0, gt=0)
    tier: str
    #: The model name the engine serves (``--served-model-name``).
    model: str
    #: Price entry to bill this engine at; defaults to ``model``.
    price_model: str | None = None
    max_concurrency: int = Field(64, ge=1)
    max_queue: int = Field(256, ge=0)
    queue_timeout_s: float = Field(10.0, gt=0)
    weight: float = Field(1.0, ge=0)
    version: str | None = None
    embeddings: bool = False
    api_key: SecretStr | None = None
    #: Environment variable holding the engine's ``--api-key`` (sent as a Bearer token);
    #: read at load, so a missing secret fails at start.
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: Tokenizer folder (tokenizer.json) for exact prompt counting.
    tokenizer: str | None = None
    max_model_len: int | None = None

    @model_validator(mode="after")
    def _check_url(self) -> EngineSettings:
        if (self.url is None) == (not self.urls):
            raise ValueError("set exactly one of url (one engine or a DNS name) and urls")
        if self.discover == "dns" and self.url is None:
            raise ValueError("discover: dns needs url (http://headless-service:port)")
        for url in self.all_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"engine url must be http(s)://host:port, got {url!r}")
        if self.api_key_env is not None:
            if self.api_key is not None:
                raise ValueError("set api_key_env or api_key, not both")
            secret = os.environ.get(self.api_key_env)
            if not secret:
                raise ValueError(f"api_key_env: environment variable {self.api_key_env} is not set")
            self.api_key = SecretStr(secret)
        return self

    @property
    def all_urls(self) -> list[str]:
        return [self.url] if self.url is not None else list(self.urls)

    def static_replicas(self) -> list[EngineSettings]:
        """The engines this entry stands for without discovery (none for ``dns``)."""
        if self.discover == "dns":
            return []
        if self.url is not None:
            return [self]
        return [self.replica(f"{self.name}-{i}", url) for i, url in enumerate(self.urls)]

    def replica(self, name: str, url: str) -> EngineSettings:
        """This entry's settings for one replica (same tier, model and limits)."""
        return self.model_copy(update={"name": name, "url": url, "urls": [], "discover": "static"})


class ModelSettings(Section):
    """A client-facing model name."""

    name: str
    tier: str | None = None
    aliases: list[str] = Field(default_factory=list)
    #: Routed per request by ``routing.policy`` instead of a fixed tier.
    auto: bool = False
    #: Tier to try when this model's tier has no healthy engine (None: no fallback).
    fallback_tier: str | None = None

    @model_validator(mode="after")
    def _tier_or_auto(self) -> ModelSettings:
        if not self.auto and not self.tier:
            raise ValueError(f"model {self.name!r} needs a tier or auto: true")
        return self


class TimeoutSettings(Section):
    connect_s: float = Field(2.0, gt=0)
    #: Time to first token (first byte of the body for non-streaming).
    ttft_s: float = Field(60.0, gt=0)
    #: Longest silence between two chunks of a stream.
    idle_s: float = Field(30.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class RetrySettings(Section):
    attempts: int = Field(2, ge=1, le=5)
    #: Retries allowed as a fraction of recent requests (retry budget).
    budget_ratio: float = Field(0.2, ge=0, le=1)
    budget_min_per_s: float = Field(5.0, ge=0)


class BreakerSettings(Section):
    failure_threshold: int = Field(5, ge=1)
    open_seconds: float = Field(10.0, gt=0)
    health_interval_s: float = Field(5.0, gt=0)
    metrics_interval_s: float = Field(1.0, gt=0)
    #: Each consecutive trip doubles the open period, up to this.
    max_open_seconds: float = Field(60.0, gt=0)
    #: Scraped engine metrics older than this are ignored by load-aware routing.
    metrics_stale_s: float = Field(5.0, gt=0)


class ShadowSettings(Section):
    """Mirror a sample of a tier's requests to a candidate engine; answers are discarded."""

    #: An engine from ``engines``; it then takes no regular traffic.
    engine: str
    #: Fraction of the tier's requests mirrored.
    sample: float = Field(0.0, ge=0, le=1)
    #: Mirrored requests in flight at once; a sample over this is dropped, never queued.
    max_concurrency: int = Field(2, ge=1)


class RolloutSettings(Section):
    """Per-tier rollout: how traffic splits between engine versions, and shadowing.

    The split follows ``engines[].version``: each version gets the sum of its engines'
    ``weight``. ``weighted`` draws per request; ``sticky`` assigns each API key to one
    version by a hash of its id (A/B), so a key sees one version consistently.
    """

    split: Literal["weighted", "sticky"] = "weighted"
    #: Salt for sticky assignment; change it to reshuffle keys between versions.
    salt: str = ""
    shadow: ShadowSettings | None = None


class ScorerSettings(Section):
    """The ``scored`` balancer: one score per replica from prefix hits and load signals.

    ``score = w_prefix * matched - w_queue * queue - w_kv * kv_usage - w_inflight * inflight``
    where ``matched`` is the fraction of the request's prefix blocks this gateway last sent
    to the replica (an approximate view of its prefix cache), ``queue`` and ``inflight``
    are the replica's waiting and outstanding requests over their scales (capped at 1)
    and ``kv_usage`` its scraped KV-cache usage. A replica ``w_prefix / w_inflight *
    inflight_scale`` requests busier than another loses a full prefix advantage.
    """

    w_prefix: float = Field(1.0, ge=0, le=100)
    w_queue: float = Field(0.5, ge=0, le=100)
    w_kv: float = Field(0.25, ge=0, le=100)
    w_inflight: float = Field(0.5, ge=0, le=100)
    #: Waiting requests (vLLM's queue plus ours) that count as a full queue (1.0).
    queue_scale: float = Field(4.0, gt=0)
    #: Outstanding requests (per unit of engine weight) that count as fully busy (1.0).
    inflight_scale: float = Field(4.0, gt=0)
    #: Characters per prefix block (vLLM caches whole blocks of tokens; ~4 chars/token).
    block_chars: int = Field(256, ge=16, le=65536)
    #: Blocks hashed per request at most (longer conversations match on their start).
    max_blocks: int = Field(128, ge=1, le=4096)
    #: Blocks remembered per replica (LRU), sized like the replica's KV cache:
    #: about KV tokens * 4 / block_chars.
    index_blocks: int = Field(4096, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _some_weight(self) -> ScorerSettings:
        if self.w_prefix + self.w_queue + self.w_kv + self.w_inflight <= 0:
            raise ValueError("routing.scorer: at least one weight must be above 0")
        return self


class RoutingSettings(Section):
    policy: str = "rules"
    #: ``scored``: the multi-signal, prefix-aware scorer (see :class:`ScorerSettings`).
    balancer: Literal["least_outstanding", "p2c", "scored"] = "least_outstanding"
    scorer: ScorerSettings = Field(default_factory=ScorerSettings)
    #: Prefer one replica per conversation prefix (vLLM prefix-cache hits), bounded by load.
    prefix_affinity: bool = False
    #: Characters from the start of the conversation hashed for affinity.
    affinity_prefix_chars: int = Field(1024, ge=16)
    #: The preferred replica is used while its load stays under this factor of the mean.
    affinity_load_factor: float = Field(1.5, ge=1.0)
    params: dict[str, Any] = Field(default_factory=dict)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    #: Fall back to another tier when a tier has no healthy engine.
    fallback: bool = True
    #: Per-tier rollout (canary split, sticky A/B, shadow), keyed by tier.
    rollouts: dict[str, RolloutSettings] = Field(default_factory=dict)
    #: The learned policy's calibrated threshold (and trained weights), written by
    #: ``tollgate routing calibrate|train``; every replica applies it at start and when
    #: it changes. Point every replica at one shared file (or copy it to each).
    state_file: str = Field(default_factory=lambda: str(data_dir() / "routing-state.json"))
    #: How often a replica looks at the state file's mtime (no I/O per request).
    state_poll_s: float = Field(2.0, gt=0)
