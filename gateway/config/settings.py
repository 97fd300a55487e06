"""The one settings object: its sections, the checks across them, and loading.

``Settings.load(path)`` reads the YAML file, then applies environment variables
(``TOLLGATE_SERVER__PORT=9000`` overrides ``server.port``). Validation happens at
start: a bad config raises :class:`ConfigError` whose message names the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.config.accounting import LedgerSettings, PricingSettings, QuotaSettings
from gateway.config.base import ConfigError
from gateway.config.routing import (
    EngineSettings,
    ModelSettings,
    RoutingSettings,
    TimeoutSettings,
)
from gateway.config.server import AuthSettings, ServerSettings
from gateway.config.tracing import TracingSettings

DEFAULT_CONFIG = Path("configs/tollgate.yaml")


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
    tracing: TracingSettings = Field(default_factory=TracingSettings)

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
