"""Run the gateway under uvicorn with a bounded graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway import logs
from gateway.api.openai import OpenAIRoutes
from gateway.app import create_app
from gateway.config import Settings


def app_from_env() -> OpenAIRoutes:
    """Factory for uvicorn workers: reads ``$TOLLGATE_CONFIG``."""
    settings = Settings.load()
    logs.configure(settings.server.log_level)
    return create_app(settings)


class DrainingServer(uvicorn.Server):
    """On SIGTERM: readiness 503 at once, then drain (new requests refused).

    For ``unready_seconds`` after the signal the gateway keeps serving while readiness
    answers 503, so a load balancer stops sending here before the listener closes. Then
    the app is marked draining, uvicorn stops accepting, waits up to
    ``timeout_graceful_shutdown`` for in-flight requests and streams, and runs the
    lifespan shutdown (ledger flush) before exiting 0. A second signal skips the wait.
    """

    def __init__(self, config: uvicorn.Config, unready_seconds: float = 0.0) -> None:
        super().__init__(config)
        self._unready_s = unready_seconds
        self._drain_at: float | None = None

    def _services(self) -> Any:
        app = self.config.loaded_app
        while app is not None and not isinstance(app, FastAPI):
            app = getattr(app, "app", None)
        return getattr(getattr(app, "state", None), "services", None)

    def handle_exit(self, sig: int, frame: Any) -> None:
        svc = self._services()
        if svc is not None:
            svc.stopping = True
        if self._unready_s > 0 and self._drain_at is None:
            self._drain_at = time.monotonic() + self._unready_s
            return
        self._drain(sig, frame)

    def _drain(self, sig: int, frame: Any) -> None:
        svc = self._services()
        if svc is not None:
            svc.draining = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        due = self._drain_at is not None and time.monotonic() >= self._drain_at
        if due and not self.should_exit:
            self._drain(signal.SIGTERM, None)
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the captured signal after shutdown, so the process dies "by
        # SIGTERM" (exit status -15). A drained, flushed gateway exits 0 instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.server.host,
        "port": settings.server.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": settings.server.drain_seconds,
        "timeout_keep_alive": 75,
        "backlog": 4096,
    }


def run(settings: Settings, config_path: str | None) -> None:
    logs.configure(settings.server.log_level)
    if settings.server.workers > 1:
        if config_path:
            os.environ["TOLLGATE_CONFIG"] = config_path
        uvicorn.run(
            "gateway.serve:app_from_env",
            factory=True,
            workers=settings.server.workers,
            **uvicorn_kwargs(settings),
        )
        return
    app = create_app(settings)
    server = DrainingServer(
        uvicorn.Config(app, **uvicorn_kwargs(settings)), settings.server.unready_seconds
    )
    admin_app = app.state.admin_app
    if admin_app is None:
        server.run()
        return
    kwargs = uvicorn_kwargs(settings) | {
        "host": settings.server.admin_host,
        "port": settings.server.admin_port,
        "lifespan": "off",
    }
    admin_server = _FollowerServer(uvicorn.Config(admin_app, **kwargs))
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(_serve_both(server, admin_server))


class _FollowerServer(uvicorn.Server):
    """The admin listener: stops when the main server stops; leaves signals to it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _serve_both(main: uvicorn.Server, admin: uvicorn.Server) -> None:
    main_task = asyncio.create_task(main.serve())
    while not main.started and not main_task.done():  # noqa: ASYNC110 - uvicorn has no event
        await asyncio.sleep(0.01)
    admin_task = asyncio.create_task(admin.serve())
    await main_task
    admin.should_exit = True
    await admin_task
