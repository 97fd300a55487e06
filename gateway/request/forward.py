"""Forwarding: one attempt loop for unary and streaming requests.

:meth:`Forwarder.relay` tries the route's candidates in order. Each attempt takes a
slot on the engine (our own queue may shed it), runs the caller's ``call`` (send a
request, or open and read a stream), and passes on what it yields. A failure moves on to
the next candidate only while nothing has reached the client, the error is retryable,
the retry budget has a token and the next engine's breaker admits it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from typing import TypeVar

import orjson

from gateway.config import RetrySettings
from gateway.errors import EngineUnavailableError, GatewayError
from gateway.metrics import Metrics
from gateway.request.context import Admitted, RequestContext
from gateway.routing.health import Breakers, RetryBudget
from gateway.routing.pool import EnginePool, Slot
from gateway.routing.router import RouteDecision
from gateway.upstream.engine import Engine

T = TypeVar("T")


class Forwarder:
    def __init__(
        self,
        *,
        pool: EnginePool,
        breakers: Breakers,
        retry_budget: RetryBudget,
        retries: RetrySettings,
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._breakers = breakers
        self.retry_budget = retry_budget
        self._retries = retries
        self._metrics = metrics

    async def relay(
        self,
        ctx: RequestContext,
        decision: RouteDecision,
        call: Callable[[Engine], AsyncGenerator[T]],
    ) -> AsyncGenerator[T]:
        """Yield what ``call(engine)`` yields, from the first candidate that serves."""
        last: GatewayError | None = None
        for engine in self._candidates(ctx, decision):
            try:
                slot = await self._acquire(engine)
            except GatewayError as err:  # shed by our own queue: the engine saw nothing
                self._breakers.release(engine)
                last = err
                continue
            sent = False
            ctx.engine = engine  # from here on the engine may be working on it: billable
            try:
                async with aclosing(call(engine)) as items:
                    async for item in items:
                        sent = True
                        yield item
            except GatewayError as err:
                self.failed(engine, err)
                if sent or not err.retryable:
                    raise
                last = err  # nothing reached the client yet: try the next candidate
                continue
            finally:
                slot.release()
                self._breakers.release(engine)
            self._breakers.success(engine)
            return
        raise exhausted(last)

    def success(self, engine: Engine) -> None:
        """The engine produced output (a half-open breaker's probe has passed)."""
        self._breakers.success(engine)

    def failed(self, engine: Engine, err: GatewayError) -> None:
        self._metrics.upstream_errors.labels(engine.name, err.code or "error").inc()
        self._breakers.record(engine, err)

    def _candidates(self, ctx: RequestContext, decision: RouteDecision) -> Iterator[Engine]:
        """Candidates to try, lazily: asking for the next one is a retry.

        A retry needs a token from the retry budget and a breaker that admits the engine
        (an ejected engine is skipped; a half-open one takes this request as its probe).
        """
        limit = self._retries.attempts
        tried = 0
        for engine in decision.candidates:
            if tried >= limit:
                return
            if not self._breakers.available(engine):
                continue  # ejected since the decision was made
            if tried and not self.retry_budget.try_spend():
                return
            if not self._breakers.admit(engine):
                continue
            if tried:
                self._metrics.retries.labels(engine.tier).inc()
            tried += 1
            ctx.attempts = tried
            yield engine

    async def _acquire(self, engine: Engine) -> Slot:
        if engine.in_flight < engine.settings.max_concurrency:
            return await self._pool.acquire(engine)
        t = time.perf_counter()
        try:
            return await self._pool.acquire(engine)
        finally:
            self._metrics.queue_wait.labels(engine.tier).observe(time.perf_counter() - t)


def upstream_body(admitted: Admitted, engine: Engine) -> bytes:
    """The client's own JSON with the engine's model name (and usage asked of a stream)."""
    req = admitted.request
    body = dict(req.raw)
    body["model"] = engine.model
    if req.stream:
        opts = body.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        opts["include_usage"] = True
        body["stream_options"] = opts
    return orjson.dumps(body)


def exhausted(last: GatewayError | None) -> GatewayError:
    """The error for a request no candidate could serve (503s carry Retry-After)."""
    err = last or EngineUnavailableError("No engine could serve the request.")
    if err.status_code == 503 and "Retry-After" not in err.headers:
        err.headers["Retry-After"] = "1"
    return err
