"""Run the gateway under uvicorn with a bounded graceful drain on SIGTERM.

One worker (``server.workers: 1``): this process binds ``server.port`` (and
``server.admin_port``), serves, and on SIGTERM does what :class:`DrainingServer` says:
readiness 503 for ``unready_seconds``, then stop accepting, drain in-flight requests and
streams for up to ``drain_seconds``, flush the ledger, exit 0.

Several workers: :class:`gateway.workers.Supervisor` starts N processes that each run
:func:`serve` on a socket it bound for them, forwards SIGTERM/SIGINT so every worker
drains exactly as above, restarts a worker that dies, and exits 0 once all have. See
:mod:`gateway.workers` for the sockets, the admin listener and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway import logs
from gateway.api.connections import guarded_protocol
from gateway.app import create_app
from gateway.config import Settings


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

    def services(self) -> Any:
        """The app's services once its lifespan has built them (else None)."""
        app = self.config.loaded_app
        while app is not None and not isinstance(app, FastAPI):
            app = getattr(app, "app", None)
        return getattr(getattr(app, "state", None), "services", None)

    def handle_exit(self, sig: int, frame: Any) -> None:
        svc = self.services()
        if svc is not None:
            svc.stopping = True
        if self._unready_s > 0 and self._drain_at is None:
            self._drain_at = time.monotonic() + self._unready_s
            return
        self._drain(sig, frame)

    def _drain(self, sig: int, frame: Any) -> None:
        svc = self.services()
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
        "http": guarded_protocol(settings.server),
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": settings.server.drain_seconds,
        "timeout_keep_alive": settings.server.idle_connection_s,
        "backlog": 4096,
    }


def run(settings: Settings, config_path: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; with ``server.workers > 1`` under a supervisor."""
    logs.configure(settings.server.log_level)
    if settings.server.workers > 1:
        from gateway.workers import Supervisor

        raise SystemExit(Supervisor(settings).run())
    serve(settings)


#: Runs beside a started server (a worker's metrics publisher); cancelled after it stops.
Companion = Callable[[uvicorn.Server], Coroutine[Any, Any, None]]


def serve(
    settings: Settings,
    *,
    sockets: list[socket.socket] | None = None,
    admin_sockets: list[socket.socket] | None = None,
    companion: Companion | None = None,
) -> None:
    """Serve one process until SIGTERM/SIGINT and its drain are over.

    Without ``sockets`` the server binds ``server.host:port`` itself and serves the admin
    app on ``server.admin_port`` when set. A worker passes the sockets its supervisor
    bound; only the worker given ``admin_sockets`` serves the admin app.
    """
    app = create_app(settings)
    server = DrainingServer(
        uvicorn.Config(app, **uvicorn_kwargs(settings)), settings.server.unready_seconds
    )
    admin_app = app.state.admin_app
    admin_server = None
    if admin_app is not None and (sockets is None or admin_sockets is not None):
        kwargs = uvicorn_kwargs(settings) | {
            "host": settings.server.admin_host,
            "port": settings.server.admin_port,
            "lifespan": "off",
        }
        admin_server = _FollowerServer(uvicorn.Config(admin_app, **kwargs))
    if admin_server is None and sockets is None and companion is None:
        server.run()
        return
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(_serve_all(server, sockets, admin_server, admin_sockets, companion))


class _FollowerServer(uvicorn.Server):
    """The admin listener: stops when the main server stops; leaves signals to it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _serve_all(
    main: uvicorn.Server,
    sockets: list[socket.socket] | None,
    admin: uvicorn.Server | None,
    admin_sockets: list[socket.socket] | None,
    companion: Companion | None,
) -> None:
    main_task = asyncio.create_task(main.serve(sockets=sockets))
    while not main.started and not main_task.done():  # noqa: ASYNC110 - uvicorn has no event
        await asyncio.sleep(0.01)
    started = main.started  # else startup failed: main_task is done, with its exit status
    admin_task = (
        asyncio.create_task(admin.serve(sockets=admin_sockets)) if admin and started else None
    )
    side_task = asyncio.create_task(companion(main)) if companion and started else None
    try:
        await main_task
    finally:
        if admin is not None and admin_task is not None:
            admin.should_exit = True
            await admin_task
        if side_task is not None:
            side_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await side_task
