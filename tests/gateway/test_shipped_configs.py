"""Every config file shipped in the repo loads, as the CLI loads it (reliability item 25).

A config that only tests ever load can be broken in production and nobody notices: the
production file once asked for ``workers: 4`` with an admin listener, which the settings
refuse, so every deployment crash-looped. Here each shipped file goes through
``tollgate check-config`` with the environment its deployment gives it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import Settings
from gateway.pricing import PriceBook
from tests.support import ROOT, production_env

SETTINGS_FILES = sorted(
    [*ROOT.glob("configs/tollgate*.yaml"), *ROOT.glob("deploy/config/tollgate*.yaml")]
)
PRICE_FILES = sorted([*ROOT.glob("configs/prices*.yaml"), *ROOT.glob("deploy/config/prices*.yaml")])
#: Where a deployment mounts deploy/config (compose volume, k8s ConfigMap).
MOUNT = "/etc/tollgate/"


def _env_for(path: Path) -> dict[str, str]:
    return production_env() if path.parent.name == "config" else {}


def test_every_shipped_yaml_is_covered() -> None:
    shipped = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("deploy/config/*.yaml")])
    assert shipped and sorted(SETTINGS_FILES + PRICE_FILES) == shipped


@pytest.mark.parametrize("path", SETTINGS_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_check_config_accepts_shipped_file(path: Path) -> None:
    result = CliRunner().invoke(app, ["check-config", "-c", str(path)], env=_env_for(path))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok:")


@pytest.mark.parametrize("path", SETTINGS_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_file_prices_every_engine(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env_for(path).items():
        monkeypatch.setenv(name, value)
    settings = Settings.load(path)
    price_file = settings.pricing.file
    if price_file.startswith(MOUNT):
        price_file = str(path.parent / price_file.removeprefix(MOUNT))
    prices = PriceBook.load(ROOT / price_file)
    for engine in settings.engines:
        assert prices.has(engine.price_model or engine.model), engine.name


@pytest.mark.parametrize("path", PRICE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_price_file_loads(path: Path) -> None:
    assert PriceBook.load(path) is not None


def test_production_config_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The properties the deployment relies on (k8s manifests name the same Services)."""
    for name, value in production_env().items():
        monkeypatch.setenv(name, value)
    s = Settings.load(ROOT / "deploy/config/tollgate.yaml")
    assert s.server.workers == 1
    assert s.server.admin_port is not None and s.server.admin_port != s.server.port
    assert s.server.admin_host == "127.0.0.1"
    assert s.quotas.backend == "redis"
    assert s.quotas.redis_url is not None
    assert s.ledger.url.startswith("postgresql://")
    hosts = {e.tier: e.url for e in s.engines}
    assert hosts == {
        "small": "http://engine-small-headless:8000",
        "large": "http://engine-large-headless:8000",
    }
    for e in s.engines:
        assert e.discover == "dns"
        assert e.api_key is not None
        assert e.api_key.get_secret_value() == production_env()["TOLLGATE_ENGINE_API_KEY"]
    raw = yaml.safe_load((ROOT / "deploy/config/tollgate.yaml").read_text())
    assert all("api_key" not in e for e in raw["engines"])  # the secret never in YAML


@pytest.mark.parametrize(
    ("missing", "field"),
    [("TOLLGATE_QUOTAS__REDIS_URL", "quotas"), ("TOLLGATE_ENGINE_API_KEY", "api_key_env")],
)
def test_production_config_fails_fast_without_a_secret(missing: str, field: str) -> None:
    env: dict[str, str | None] = {**production_env(), missing: None}
    path = ROOT / "deploy/config/tollgate.yaml"
    result = CliRunner().invoke(app, ["check-config", "-c", str(path)], env=env)
    assert result.exit_code == 2
    assert field in result.output
