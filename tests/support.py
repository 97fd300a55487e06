"""Shared test helpers: free ports, configs, and a gateway served for real.

Two ways to run the gateway:
* :func:`serve_in_thread` runs the app under uvicorn in a background thread of this
  process (fast; the test can reach ``app.state.services``).
* :class:`GatewayProcess` runs ``tollgate serve`` as a separate OS process (for
  multi-process quota tests and SIGTERM behaviour).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from gateway.app import create_app
from gateway.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CLIENT_KEY = "tg-test-client-key-0001"
ADMIN_TOKEN = "tg-test-admin-token-0001"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


def wait_http(url: str, timeout: float = 30.0, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code in ok:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s ({last})")


@dataclass
class RunningGateway:
    base_url: str
    settings: Settings
    app: Any = None

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    @property
    def services(self) -> Any:
        return self.app.state.services


@contextlib.contextmanager
def serve_in_thread(settings: Settings, **overrides: Any) -> Iterator[RunningGateway]:
    """Serve ``create_app(settings)`` with uvicorn in a background thread."""
    app = create_app(settings, **overrides)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="asyncio",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=settings.server.drain_seconds,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{settings.server.host}:{settings.server.port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        yield RunningGateway(base, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class GatewayProcess:
    """``tollgate serve -c CONFIG`` as a child process."""

    def __init__(
        self,
        config_path: Path,
        port: int,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.config_path = config_path
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = (log_dir or config_path.parent) / f"gateway-{port}.log"
        self._env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "-c", str(self.config_path)],
            cwd=ROOT,
            env=self._env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(self.base_url + "/health", timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                "gateway failed to start:\n" + self.log.read_text()[-3000:]
            ) from None
        return self

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(Exception):
            self._log_file.close()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def engines_health(gw: RunningGateway) -> dict[str, dict[str, object]]:
    """``GET /health/engines``, keyed by engine replica name."""
    rows = httpx.get(gw.base_url + "/health/engines", timeout=5).json()["engines"]
    return {row["name"]: row for row in rows}
