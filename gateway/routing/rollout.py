"""Rollouts inside a tier: weighted canary or sticky A/B between engine versions, and shadow.

**Split.** When a tier's engines carry different ``version`` labels, each request is
assigned a version first, in proportion to the summed ``weight`` of each version's
engines (``large-v1`` weight 9 and ``large-v2`` weight 1: a 10 % canary). With
``split: sticky`` the draw is a hash of the API key id, so one key always sees the same
version (A/B). The replicas of the assigned version come first in the candidate list;
the other versions follow as failover.

**Shadow.** A sample of a tier's requests is copied to a candidate engine (which takes
no regular traffic). The copy never delays the client (it is started after routing and
runs on its own task), is dropped, never queued, when ``max_concurrency`` copies are
already running or the engine has no free slot, and is never billed to the key: its
latency and cost go to ``tollgate_shadow_*`` metrics and to the ledger as a record with
``status="shadow"`` under the pseudo key ``shadow`` (operator spend, not the client's).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.config import RolloutSettings, ShadowSettings
from gateway.engines import Engine, EngineClient
from gateway.errors import GatewayError
from gateway.ledger.record import LedgerRecord, Recorder
from gateway.protocol import Endpoint
from gateway.routing.balancer import stable_hash
from gateway.routing.pool import EnginePool

log = logging.getLogger(__name__)

_SPAN = float(1 << 64)


class TierRollout:
    """The version split of one tier (static: from config)."""

    def __init__(
        self, tier: str, engines: Sequence[Engine], settings: RolloutSettings | None
    ) -> None:
        shares: dict[str, float] = {}
        for e in engines:
            shares[e.settings.version or ""] = (
                shares.get(e.settings.version or "", 0.0) + e.settings.weight
            )
        self.versions = [v for v, w in shares.items() if w > 0]
        total = sum(shares[v] for v in self.versions)
        acc = 0.0
        self._cumulative: list[float] = []
        for v in self.versions:
            acc += shares[v] / total if total else 0.0
            self._cumulative.append(acc)
        self.sticky = settings is not None and settings.split == "sticky"
        self._salt = f"{tier}:{settings.salt if settings else ''}:"

    @property
    def active(self) -> bool:
        """A split exists: more than one version takes traffic."""
        return len(self.versions) > 1

    def pick(self, key_id: str | None, rng: random.Random) -> str:
        u = stable_hash(self._salt + key_id) / _SPAN if self.sticky and key_id else rng.random()
        i = bisect.bisect_right(self._cumulative, u)
        return self.versions[min(i, len(self.versions) - 1)]

    def order(self, engines: list[Engine], version: str) -> tuple[list[Engine], list[Engine]]:
        """(engines of ``version``, the rest)."""
        mine = [e for e in engines if (e.settings.version or "") == version]
        rest = [e for e in engines if (e.settings.version or "") != version]
        return mine, rest


class ShadowRunner:
    """Fires mirrored requests at shadow engines and records what they cost."""

    def __init__(
        self,
        *,
        pool: EnginePool,
        client: EngineClient,
        recorder: Recorder,
        registry: CollectorRegistry,
        cost_of: Callable[[Engine, dict[str, Any]], tuple[int, str]],
        settings: dict[str, ShadowSettings],
    ) -> None:
        self._pool = pool
        self._client = client
        self._recorder = recorder
        self._cost_of = cost_of
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
        usage: dict[str, Any] = {}
        status, http_status, code = "shadow", 200, None
        shadow_id = f"{request_id}:shadow"
        try:
            if stream:
                upstream = await self._client.open_stream(engine, endpoint, body, shadow_id)
                try:
                    async for payload in upstream.events():
                        if payload == b"[DONE]":
                            break
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        obj = orjson.loads(payload)
                        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                            usage = obj["usage"]
                finally:
                    await upstream.aclose()
            else:
                resp = await self._client.send(engine, endpoint, body, shadow_id)
                obj = orjson.loads(resp.body)
                if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                    usage = obj["usage"]
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
        cost, price_version = self._cost_of(engine, usage)
        if cost:
            self.cost.labels(engine.name).inc(cost / 1e9)
        self._recorder.record(
            LedgerRecord(
                request_id=shadow_id,
                started_at=started,
                finished_at=dt.datetime.now(dt.UTC),
                key_id="shadow",
                key_prefix="shadow",
                team=None,
                endpoint=endpoint.value,
                requested_model=requested_model,
                engine=engine.name,
                tier=engine.tier,
                upstream_model=engine.model,
                route_reason="shadow",
                stream=stream,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=0,
                usage_estimated=False,
                latency_ms=round(elapsed * 1000, 3),
                ttft_ms=round(ttft * 1000, 3) if ttft is not None else None,
                status=status,
                http_status=http_status,
                error_code=code,
                cost_nusd=cost,
                # Mirrored traffic is pure operator spend: routing saved nothing on it.
                counterfactual_nusd=cost,
                price_version=price_version,
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
