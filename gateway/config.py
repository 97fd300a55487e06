"""The one settings object: YAML file plus ``TOLLGATE_*`` environment overrides.

``Settings.load(path)`` reads the YAML file, then applies environment variables
(``TOLLGATE_SERVER__PORT=9000`` overrides ``server.port``). Validation happens at
start: a bad config raises :class:`ConfigError` whose message names the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG = Path("configs/tollgate.yaml")


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: Serve /admin on its own listener when set (recommended in production).
    admin_port: int | None = Field(None, ge=1, le=65535)
    admin_host: str = "127.0.0.1"
    #: Worker processes on this host, sharing ``port`` (see gateway/workers.py); more
    #: than one needs ``quotas.backend: redis``.
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(2048, ge=1)
    max_n: int = Field(16, ge=1)
    #: Upper bound on max_tokens a client may ask for (and the default when absent).
    max_tokens_cap: int = Field(8192, ge=1)
    drain_seconds: float = Field(30.0, ge=0)
    #: After SIGTERM, keep serving this long with readiness 503 (so load balancers stop
    #: sending here) before the listener closes and the drain starts.
    unready_seconds: float = Field(0.0, ge=0)
    keepalive_seconds: float = Field(15.0, gt=0)
    #: Overload control, per worker (gateway/request/overload.py): past either limit a
    #: request gets 503 + Retry-After at once, before any quota or engine work.
    max_in_flight: int = Field(1024, ge=1)
    #: Event-loop lag, sustained over 60 ms, that means "saturated"; 0 turns it off.
    max_loop_lag_ms: float = Field(250.0, ge=0)
    #: Client limits (gateway/api/connections.py): a request's headers must arrive
    #: within header_timeout_s of its first byte and its body within body_timeout_s
    #: (else 408); a connection idle this long is closed; past max_connections a new
    #: connection is closed at once; a stream whose client reads nothing for
    #: send_timeout_s is ended (billed as a hang-up).
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    idle_connection_s: float = Field(75.0, gt=0)
    max_connections: int = Field(4096, ge=1)
    send_timeout_s: float = Field(30.0, gt=0)
    log_level: str = "INFO"
    access_log: bool = True


class KeyLimits(_Section):
    """Limits of a key declared in config; absent or ``null`` means unlimited."""

    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    concurrency: int | None = Field(None, ge=0)
    budget_daily_usd: float | None = Field(None, ge=0)
    budget_monthly_usd: float | None = Field(None, ge=0)
    budget_total_usd: float | None = Field(None, ge=0)


class StaticKey(_Section):
    key: SecretStr
    name: str = "static"
    team: str | None = None
    models: list[str] | None = None
    limits: KeyLimits = Field(default_factory=lambda: KeyLimits())


class AuthSettings(_Section):
    #: Client keys from config (used when no key store is configured, and in tests).
    static_keys: list[StaticKey] = Field(default_factory=list)
    #: Token for /admin; distinct from every client key.
    admin_token: SecretStr | None = None
    #: Use the managed key store (database) in addition to static keys.
    key_store: bool = True
    #: Key store database; defaults to ``ledger.url`` (same database as the ledger).
    database_url: str | None = None
    #: How long a looked-up key stays cached (bounds how late a revocation takes effect).
    key_cache_ttl_s: float = Field(10.0, ge=0)
    key_cache_size: int = Field(10_000, ge=1)
    #: Wrong admin tokens from one address within ``admin_lockout_s`` before it is locked
    #: out (429 + Retry-After) of the admin API and dashboard for the rest of the window.
    admin_max_failures: int = Field(10, ge=1)
    admin_lockout_s: float = Field(300.0, gt=0)


class EngineSettings(_Section):
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


class ModelSettings(_Section):
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


class TimeoutSettings(_Section):
    connect_s: float = Field(2.0, gt=0)
    #: Time to first token (first byte of the body for non-streaming).
    ttft_s: float = Field(60.0, gt=0)
    #: Longest silence between two chunks of a stream.
    idle_s: float = Field(30.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class RetrySettings(_Section):
    attempts: int = Field(2, ge=1, le=5)
    #: Retries allowed as a fraction of recent requests (retry budget).
    budget_ratio: float = Field(0.2, ge=0, le=1)
    budget_min_per_s: float = Field(5.0, ge=0)


class BreakerSettings(_Section):
    failure_threshold: int = Field(5, ge=1)
    open_seconds: float = Field(10.0, gt=0)
    health_interval_s: float = Field(5.0, gt=0)
    metrics_interval_s: float = Field(1.0, gt=0)
    #: Each consecutive trip doubles the open period, up to this.
    max_open_seconds: float = Field(60.0, gt=0)
    #: Scraped engine metrics older than this are ignored by load-aware routing.
    metrics_stale_s: float = Field(5.0, gt=0)


class ShadowSettings(_Section):
    """Mirror a sample of a tier's requests to a candidate engine; answers are discarded."""

    #: An engine from ``engines``; it then takes no regular traffic.
    engine: str
    #: Fraction of the tier's requests mirrored.
    sample: float = Field(0.0, ge=0, le=1)
    #: Mirrored requests in flight at once; a sample over this is dropped, never queued.
    max_concurrency: int = Field(2, ge=1)


class RolloutSettings(_Section):
    """Per-tier rollout: how traffic splits between engine versions, and shadowing.

    The split follows ``engines[].version``: each version gets the sum of its engines'
    ``weight``. ``weighted`` draws per request; ``sticky`` assigns each API key to one
    version by a hash of its id (A/B), so a key sees one version consistently.
    """

    split: Literal["weighted", "sticky"] = "weighted"
    #: Salt for sticky assignment; change it to reshuffle keys between versions.
    salt: str = ""
    shadow: ShadowSettings | None = None


class RoutingSettings(_Section):
    policy: str = "rules"
    balancer: Literal["least_outstanding", "p2c"] = "least_outstanding"
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


class QuotaSettings(_Section):
    #: Off: no limits are enforced and no spend is counted (benchmarks, trusted setups).
    enabled: bool = True
    backend: Literal["local", "redis"] = "local"
    redis_url: SecretStr | None = None
    redis_timeout_s: float = Field(0.25, gt=0)
    reservation_ttl_s: float = Field(900.0, gt=0)
    #: Failure policy per limit kind when the quota store is unreachable.
    on_store_error_budgets: Literal["fail_closed", "fail_open"] = "fail_closed"
    on_store_error_rates: Literal["fail_closed", "local", "fail_open"] = "local"
    #: End a stream whose key runs out of budget part-way.
    cut_stream_on_budget: bool = True
    #: Replicas sharing the limit, used to size the local fallback limiter.
    replicas: int = Field(1, ge=1)
    #: Quota calls waiting on Redis per gateway process (one multiplexed connection),
    #: beyond which a call fails at once as if Redis were unreachable.
    redis_max_in_flight: int = Field(4096, ge=1)
    #: Prefix of every Redis key the quota store writes.
    redis_prefix: str = Field("tg:q:", pattern=r"^[A-Za-z0-9_.:-]{0,32}$")
    #: Breaker on the Redis client: open after this many consecutive failures...
    breaker_failures: int = Field(3, ge=1)
    #: ...for this long, then let one probe through.
    breaker_open_s: float = Field(2.0, gt=0)
    #: Settlements queued for Redis (sent off the request path, kept while it is
    #: unreachable, replayed when it is back); the oldest are dropped beyond this.
    pending_settles_max: int = Field(10_000, ge=1)

    @model_validator(mode="after")
    def _redis_url(self) -> QuotaSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("quotas.backend: redis needs quotas.redis_url")
        if self.redis_url is not None:
            from gateway.quotas.urls import parse_url  # the one parser of Redis URLs

            try:
                parse_url(self.redis_url.get_secret_value())
            except ValueError as exc:  # the message never repeats the URL (it may hold a password)
                raise ValueError(f"quotas.redis_url: {exc}") from None
        return self


def data_dir() -> Path:
    """Where local data goes unless the config says otherwise: ``$XDG_DATA_HOME/tollgate``
    (``~/.local/share/tollgate``), which any user can create."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "tollgate"


class LedgerSettings(_Section):
    url: str = Field(default_factory=lambda: f"sqlite:///{data_dir() / 'ledger.db'}")
    enabled: bool = True
    batch_size: int = Field(500, ge=1)
    flush_interval_s: float = Field(0.5, gt=0)
    queue_max: int = Field(100_000, ge=100)
    spill_dir: str = Field(default_factory=lambda: str(data_dir() / "spill"))
    #: Run the Alembic migrations (upgrade head) when the writer first reaches the database.
    auto_migrate: bool = True
    #: Longest wait between attempts to reach a database that is down.
    retry_max_s: float = Field(5.0, gt=0)
    #: Bound on the flush at shutdown; what is left goes to the spill file.
    shutdown_timeout_s: float = Field(10.0, gt=0)
    #: Write each record to a journal in ``spill_dir`` before it waits in memory, so a
    #: killed process (SIGKILL, OOM) loses none (see gateway/ledger/journal.py).
    journal: bool = True
    #: Accept a SQLite ledger with ``quotas.backend: redis``. Each process then keeps its
    #: own ledger, and a Redis that comes back empty gets back only the spend of the
    #: replica that restores it (gateway/quotas/fallback.py): budgets may be overspent.
    partial_restore_ok: bool = False

    @property
    def per_process(self) -> bool:
        """A ledger only this host's processes write (SQLite), not one every replica shares."""
        return self.enabled and self.url.startswith("sqlite")


class PricingSettings(_Section):
    file: str = "configs/prices.yaml"
    #: Expose cost to clients.
    cost_header: bool = False
    cost_in_usage: bool = False


class Settings(BaseSettings):
    """Everything the gateway reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="TOLLGATE_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    engines: list[EngineSettings] = Field(default_factory=list)
    models: list[ModelSettings] = Field(default_factory=list)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    pricing: PricingSettings = Field(default_factory=PricingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the YAML file (passed as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        names = [e.name for e in self.engines]
        names += [r.name for e in self.engines if e.urls for r in e.static_replicas()]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"engines: duplicate engine name(s) {sorted(dupes)}")
        tiers = {e.tier for e in self.engines}
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            for name in (m.name, *m.aliases):
                if name in seen:
                    raise ValueError(f"models[{i}]: model name {name!r} is defined twice")
                seen.add(name)
            for field in ("tier", "fallback_tier"):
                tier = getattr(m, field)
                if tier is not None and tier not in tiers:
                    raise ValueError(
                        f"models[{i}].{field}: tier {tier!r} has no engine "
                        f"(engine tiers: {sorted(tiers)})"
                    )
        engines_by_name = {e.name: e for e in self.engines}
        for tier, rollout in self.routing.rollouts.items():
            if tier not in tiers:
                raise ValueError(f"routing.rollouts.{tier}: no engine has tier {tier!r}")
            shadow = rollout.shadow
            if shadow is not None and shadow.engine not in engines_by_name:
                raise ValueError(
                    f"routing.rollouts.{tier}.shadow.engine: unknown engine {shadow.engine!r}"
                )
            if shadow is not None and engines_by_name[shadow.engine].url is None:
                raise ValueError(
                    f"routing.rollouts.{tier}.shadow.engine: a shadow engine takes one url"
                )
            if shadow is not None and engines_by_name[shadow.engine].discover == "dns":
                raise ValueError(
                    f"routing.rollouts.{tier}.shadow.engine: a shadow engine takes one url"
                )
        own = {(self.server.host, self.server.port), ("localhost", self.server.port)}
        if self.server.host in ("0.0.0.0", "127.0.0.1", "::"):
            own |= {("127.0.0.1", self.server.port), ("localhost", self.server.port)}
        for i, e in enumerate(self.engines):
            for url in e.all_urls:
                parts = urlsplit(url)
                if (parts.hostname, parts.port) in own:
                    raise ValueError(f"engines[{i}].url points at the gateway itself (a loop)")
        if self.quotas.reservation_ttl_s <= self.timeouts.total_s:
            raise ValueError(
                "quotas.reservation_ttl_s must exceed timeouts.total_s "
                "(a quota reservation must outlive the longest request)"
            )
        q, ledger = self.quotas, self.ledger
        partial = ledger.per_process and not ledger.partial_restore_ok
        if q.enabled and q.backend == "redis" and partial:
            raise ValueError(
                "quotas.backend: redis with a SQLite ledger.url: each replica would keep "
                "its own ledger, and a Redis that comes back empty would get back one "
                "replica's spend only. Point ledger.url at a database every replica "
                "writes (postgresql://...), or set ledger.partial_restore_ok: true to "
                "accept a partial restore"
            )
        if self.server.workers > 1 and self.quotas.backend != "redis":
            raise ValueError(
                "server.workers > 1 needs quotas.backend: redis (limits must be shared)"
            )
        return self

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Read YAML (``path``, ``$TOLLGATE_CONFIG`` or the default) plus env overrides."""
        chosen = path or os.environ.get("TOLLGATE_CONFIG")
        data: dict[str, Any] = {}
        if chosen is not None or DEFAULT_CONFIG.exists():
            file = Path(chosen) if chosen is not None else DEFAULT_CONFIG
            try:
                loaded = yaml.safe_load(file.read_text()) or {}
            except FileNotFoundError:
                raise ConfigError(f"config file not found: {file}") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {file} must hold a mapping at the top level")
            data = loaded
        data.update(overrides)
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
