"""The shadow runner: fires sampled copies of requests at a shadow engine.

Which requests are copied, and where to, is the router's decision (see
:mod:`gateway.routing.rollout`). A copy never delays the client, is dropped (never
queued) at capacity, and is never billed to the key: its cost goes to the ledger under
the pseudo key ``shadow``, priced by the same :class:`~gateway.request.metering.Meter`
as every request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import replace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.config import ShadowSettings
from gateway.errors import GatewayError
from gateway.ledger.record import Recorder
from gateway.protocol import Endpoint
from gateway.request.metering import (
    NO_USAGE,
    Attribution,
    Charge,
    Meter,
    Usage,
    charge,
    ledger_record,
)
from gateway.routing.pool import EnginePool
from gateway.upstream.engine import Engine
from gateway.upstream.transport import Transport


class ShadowRunner:
    """Fires mirrored requests at shadow engines and records what they cost."""

    def __init__(
        self,
        *,
        pool: EnginePool,
        transport: Transport,
        recorder: Recorder,
        registry: CollectorRegistry,
        meter: Meter,
        settings: dict[str, ShadowSettings],
    ) -> None:
        self._pool = pool
        self._client = transport
        self._recorder = recorder
        self._meter = meter
        self._limits = {s.engine: s.max_concurrency for s in settings.values()}
        self._running: dict[str, int] = {name: 0 for name in self._limits}
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = Counter(
            "tollgate_shadow_requests",
            "Mirrored (shadow) requests by engine and outcome (ok, error, dropped).",
            ["engine", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "tollgate_shadow_duration_seconds",
            "Latency of mirrored requests on the shadow engine.",
            ["engine"],
            registry=registry,
        )
        self.ttft = Histogram(
            "tollgate_shadow_time_to_first_token_seconds",
            "Time to first token of mirrored streaming requests.",
            ["engine"],
            registry=registry,
        )
        self.cost = Counter(
            "tollgate_shadow_cost_usd",
            "What mirrored requests cost (operator spend; never billed to a key).",
            ["engine"],
            registry=registry,
        )

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def mirror(
        self,
        engine: Engine,
        endpoint: Endpoint,
        raw: dict[str, Any],
        request_id: str,
        requested_model: str,
    ) -> bool:
        """Start one mirrored request; False when it was dropped (at capacity)."""
        name = engine.name
        if self._running.get(name, 0) >= self._limits.get(name, 0):
            self.requests.labels(name, "dropped").inc()
            return False
        slot = self._pool.try_acquire(engine)
        if slot is None:
            self.requests.labels(name, "dropped").inc()
            return False
        self._running[name] = self._running.get(name, 0) + 1
        body = dict(raw)
        body["model"] = engine.model
        stream = bool(body.get("stream"))
        if stream:
            opts = body.get("stream_options")
            body["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                      "include_usage": True}  # fmt: skip

        async def run() -> None:
            try:
                await self._run(engine, endpoint, orjson.dumps(body), request_id,
                                requested_model, stream)  # fmt: skip
            finally:
                slot.release()
                self._running[name] -= 1

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        requested_model: str,
        stream: bool,
    ) -> None:
        started = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        ttft: float | None = None
        usage: Usage | None = None
        status, http_status, code = "shadow", 200, None
        shadow_id = f"{request_id}:shadow"
        try:
            if stream:
                upstream = await self._client.open_stream(engine, endpoint, body, shadow_id)
                try:
                    done = False
                    async for batch in upstream.batches():
                        for payload in batch:
                            if payload == b"[DONE]":
                                done = True
                                break
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            obj = orjson.loads(payload)
                            if isinstance(obj, dict):
                                usage = Usage.parse(obj.get("usage")) or usage
                        if done:
                            break
                finally:
                    await upstream.aclose()
            else:
                resp = await self._client.send(engine, endpoint, body, shadow_id)
                obj = orjson.loads(resp.body)
                if isinstance(obj, dict):
                    usage = Usage.parse(obj.get("usage"))
            self.requests.labels(engine.name, "ok").inc()
        except GatewayError as err:
            http_status, code = err.status_code, err.code
            self.requests.labels(engine.name, "error").inc()
        except (orjson.JSONDecodeError, ValueError):
            http_status, code = 502, "bad_shadow_response"
            self.requests.labels(engine.name, "error").inc()
        elapsed = time.perf_counter() - t0
        self.latency.labels(engine.name).observe(elapsed)
        if ttft is not None:
            self.ttft.labels(engine.name).observe(ttft)
        # Mirrored traffic is pure operator spend: routing saved nothing on it, so its
        # counterfactual is its own cost. Cached tokens are not discounted for it.
        if usage is not None and self._meter.priced(engine):
            money = charge(
                self._meter, engine, replace(usage, cached=0), estimated=False, routed=False
            )
        else:
            money = Charge(usage or NO_USAGE, False, 0, 0, "unpriced")
        if money.cost_nusd:
            self.cost.labels(engine.name).inc(money.cost_nusd / 1e9)
        who = Attribution(
            request_id=shadow_id,
            started_at=started,
            key_id="shadow",
            key_prefix="shadow",
            team=None,
            endpoint=endpoint.value,
            requested_model=requested_model,
            route_reason="shadow",
            stream=stream,
        )
        self._recorder.record(
            ledger_record(
                who,
                engine,
                money,
                latency_s=elapsed,
                ttft_s=ttft,
                status=status,
                http_status=http_status,
                error_code=code,
            )
        )

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for mirrored requests, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
