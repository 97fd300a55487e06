"""Gateway configs for tests and benchmarks: engines, keys, prices, the YAML file.

:func:`gateway_config` is the one builder: a test passes its sections, and the
benchmarks (``bench/rig.py``) layer their own defaults over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENT_KEY = "tg-test-client-key-0001"
ADMIN_TOKEN = "tg-test-admin-token-0001"


@dataclass
class EngineSpec:
    name: str
    url: str
    tier: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)


def gateway_config(
    tmp_path: Path,
    engines: Sequence[EngineSpec],
    *,
    port: int | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A complete config dict for tests (static client key, admin token, SQLite ledger)."""
    price_file = tmp_path / "prices.yaml"
    price_map = prices or {
        e.model: (0.5 if e.tier == "large" else 0.05, 1.5 if e.tier == "large" else 0.2)
        for e in engines
    }
    large = next((e.model for e in engines if e.tier == "large"), None)
    price_file.write_text(
        yaml.safe_dump(
            {
                "reference_model": large,
                "prices": [
                    {
                        "model": m,
                        "effective": "2020-01-01",
                        "prompt_per_mtok": p,
                        "completion_per_mtok": c,
                    }
                    for m, (p, c) in price_map.items()
                ],
            }
        )
    )
    tiers = sorted({e.tier for e in engines})
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port or free_port(), "keepalive_seconds": 15},
        "auth": {
            "static_keys": [{"key": CLIENT_KEY, "name": "test", "team": "qa"}],
            "admin_token": ADMIN_TOKEN,
        },
        "engines": [
            {"name": e.name, "url": e.url, "tier": e.tier, "model": e.model, **e.extra}
            for e in engines
        ],
        "models": [{"name": t, "tier": t} for t in tiers]
        + ([{"name": "auto", "auto": True}] if len(tiers) > 1 else []),
        "timeouts": {"connect_s": 1, "ttft_s": 10, "idle_s": 10, "total_s": 60},
        "routing": {"breaker": {"health_interval_s": 0.5, "metrics_interval_s": 0.5}},
        "ledger": {"url": f"sqlite:///{tmp_path}/ledger.db", "spill_dir": str(tmp_path / "spill")},
        "pricing": {"file": str(price_file)},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(name), dict):
            cfg[name] = {**cfg[name], **value}
        else:
            cfg[name] = value
    return cfg


def write_config(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "tollgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


#: The secrets compose and k8s hand the production gateway, as environment variables
#: (deploy/docker-compose.yml, deploy/k8s/gateway.yaml); the values are placeholders.
def production_env(
    *,
    redis_url: str = "redis://:redis-password@redis:6379/0",
    ledger_url: str = "postgresql://tollgate:pg-password@postgres:5432/tollgate",
    admin_token: str = "tg-prod-admin-token-0001",
    engine_api_key: str = "engine-api-key-0001",
) -> dict[str, str]:
    return {
        "TOLLGATE_AUTH__ADMIN_TOKEN": admin_token,
        "TOLLGATE_QUOTAS__REDIS_URL": redis_url,
        "TOLLGATE_LEDGER__URL": ledger_url,
        "TOLLGATE_ENGINE_API_KEY": engine_api_key,
    }
