"""The one settings object: YAML file plus ``TOLLGATE_*`` environment overrides.

``Settings.load(path)`` reads the YAML file, then applies environment variables
(``TOLLGATE_SERVER__PORT=9000`` overrides ``server.port``). Validation happens at
start: a bad config raises :class:`ConfigError` whose message names the field.

``Settings`` is one object; its sections live by concern:

- :mod:`gateway.config.server`: ``server`` and ``auth`` (listeners, keys, admin)
- :mod:`gateway.config.routing`: ``engines``, ``models``, ``timeouts``, ``routing``
- :mod:`gateway.config.accounting`: ``quotas``, ``ledger``, ``pricing``
- :mod:`gateway.config.tracing`: ``tracing`` (OpenTelemetry, off by default)
- :mod:`gateway.config.settings`: ``Settings`` (cross-section checks, loading)
"""

from gateway.config.accounting import LedgerSettings, PricingSettings, QuotaSettings, data_dir
from gateway.config.base import ConfigError
from gateway.config.routing import (
    BreakerSettings,
    EngineSettings,
    ModelSettings,
    RetrySettings,
    RolloutSettings,
    RoutingSettings,
    ScorerSettings,
    ShadowSettings,
    TimeoutSettings,
)
from gateway.config.server import AuthSettings, KeyLimits, ServerSettings, StaticKey
from gateway.config.settings import DEFAULT_CONFIG, Settings, describe_validation_error
from gateway.config.tracing import TracingSettings

__all__ = [
    "DEFAULT_CONFIG",
    "AuthSettings",
    "BreakerSettings",
    "ConfigError",
    "EngineSettings",
    "KeyLimits",
    "LedgerSettings",
    "ModelSettings",
    "PricingSettings",
    "QuotaSettings",
    "RetrySettings",
    "RolloutSettings",
    "RoutingSettings",
    "ScorerSettings",
    "ServerSettings",
    "Settings",
    "ShadowSettings",
    "StaticKey",
    "TimeoutSettings",
    "TracingSettings",
    "data_dir",
    "describe_validation_error",
]
