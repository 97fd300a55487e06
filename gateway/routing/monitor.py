"""Background engine monitor: health probes and vLLM /metrics scraping.

Health probes re-admit ejected engines and eject dead ones; the scraped queue gauges
(``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
``vllm:kv_cache_usage_perc``) feed load-aware routing. One task per app, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.config import BreakerSettings
from gateway.errors import EngineUnavailableError, GatewayError
from gateway.routing.health import Breakers
from gateway.routing.pool import EnginePool
from gateway.upstream.engine import Engine
from gateway.upstream.transport import Transport

log = logging.getLogger(__name__)

#: Time allowed for one /health or /metrics answer.
PROBE_TIMEOUT_S = 2.0

_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
}


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Sum the gauges we use across label sets (one engine may serve several names)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition("{") if "{" in line else line.partition(" ")
        attr = _GAUGES.get(name.strip())
        if attr is None:
            continue
        value = rest.rsplit(" ", 1)[-1] if "{" in line else rest
        try:
            out[attr] = out.get(attr, 0.0) + float(value)
        except ValueError:
            continue
    return out


class EngineMonitor:
    """Polls every engine's /health and /metrics in the background."""

    def __init__(
        self, pool: EnginePool, client: Transport, breakers: Breakers, settings: BreakerSettings
    ) -> None:
        self._pool = pool
        self._client = client
        self._breakers = breakers
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> None:
        await asyncio.gather(*(self._probe(e) for e in self._pool.engines.values()))

    async def _probe(self, engine: Engine) -> None:
        # Not tied to the interval: a short interval must not turn a busy engine's slow
        # answer into an ejection.
        timeout = PROBE_TIMEOUT_S
        definite = False
        try:
            resp = await self._client.get(engine, "/health", timeout)
            ok = resp.status_code == 200
        except EngineUnavailableError:
            ok, definite = False, True  # refused: nobody is there
        except GatewayError:
            ok = False
        if ok:
            was_out = self._breakers.state(engine).by_health
            self._breakers.health_passed(engine)
            if was_out:
                log.info("engine passed its health check again", extra={"engine": engine.name})
            await self._scrape(engine, timeout)
        else:
            was_out = self._breakers.state(engine).by_health
            self._breakers.health_failed(engine, definite=definite)
            if self._breakers.state(engine).by_health:
                if not was_out:
                    log.warning("engine failed its health check", extra={"engine": engine.name})
                engine.metrics_at = 0.0  # its last metrics say nothing about it now

    async def _scrape(self, engine: Engine, timeout: float) -> None:
        try:
            resp = await self._client.get(engine, "/metrics", timeout)
        except GatewayError:
            return
        if resp.status_code != 200:
            return
        values = parse_vllm_metrics(resp.text)
        engine.waiting = values.get("waiting", 0.0)
        engine.running = values.get("running", 0.0)
        engine.kv_cache_usage = values.get("kv_cache_usage", 0.0)
        engine.scraped_in_flight = engine.in_flight
        engine.metrics_at = time.monotonic()

    async def scrape_once(self) -> None:
        """Refresh the load gauges of every engine that is not ejected."""
        timeout = PROBE_TIMEOUT_S
        await asyncio.gather(
            *(self._scrape(e, timeout) for e in self._pool.engines.values() if e.healthy)
        )

    async def _run(self) -> None:
        # Health every health_interval_s; metrics (cheap, and what load-aware routing
        # reads) every metrics_interval_s in between.
        s = self._settings
        loop = asyncio.get_running_loop()
        next_health = loop.time() + s.health_interval_s
        while True:
            await asyncio.sleep(min(s.metrics_interval_s, max(0.0, next_health - loop.time())))
            with contextlib.suppress(Exception):
                if loop.time() >= next_health:
                    next_health = loop.time() + s.health_interval_s
                    await self.check_once()
                else:
                    await self.scrape_once()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
