"""A gateway served for real, two ways.

* :func:`serve_in_thread` runs the app under uvicorn in a background thread of this
  process (fast; the test can reach ``app.state.services``).
* :class:`GatewayProcess` runs ``tollgate serve`` as a separate OS process (for
  multi-process quota tests, SIGTERM behaviour and benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.config import Settings
from tests.support.configs import ROOT
from tests.support.net import wait_http


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
    from gateway.api.connections import guarded_protocol
    from gateway.app import create_app

    app = create_app(settings, **overrides)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="asyncio",
        http=guarded_protocol(settings.server),  # the client limits, as `tollgate serve`
        timeout_keep_alive=settings.server.idle_connection_s,  # type: ignore[arg-type]
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
        cpus: set[int] | None = None,
    ) -> None:
        self.config_path = config_path
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = (log_dir or config_path.parent) / f"gateway-{port}.log"
        self._env = {**os.environ, **(env or {})}
        #: Pin the process (and the workers it forks) to these cores from its start.
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "-c", str(self.config_path)],
            cwd=ROOT,
            env=self._env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=None if self.cpus is None else self._pin,
        )
        try:
            wait_http(self.base_url + "/health", timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                "gateway failed to start:\n" + self.log.read_text()[-3000:]
            ) from None
        return self

    def _pin(self) -> None:
        assert self.cpus is not None
        os.sched_setaffinity(0, self.cpus)

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


def engines_health(gw: RunningGateway) -> dict[str, dict[str, object]]:
    """``GET /health/engines``, keyed by engine replica name."""
    rows = httpx.get(gw.base_url + "/health/engines", timeout=5).json()["engines"]
    return {row["name"]: row for row in rows}
