"""The request path as explicit stages: authenticate → admit → route → forward → settle → record.

Each stage is one method with one job, testable without HTTP. The route handlers only call
:meth:`Pipeline.handle`. Whatever happens after admission (success, engine error, client
disconnect, cancellation), :meth:`Pipeline.finish` runs exactly once: it settles the quota
reservation (:meth:`Pipeline.conclude`) and writes the ledger record. The settlement is
written before the client hears that its request ended, so the next request, on any
replica, already sees the slot free and the spend counted: a unary answer settles before
it is sent, and a stream settles just before its last frame.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response

from gateway.auth import Authenticator, Principal, bearer_token
from gateway.config import ModelSettings, Settings
from gateway.engines import Engine, EngineClient, sanitize
from gateway.errors import (
    EngineUnavailableError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    QuotaExceededError,
    QuotaStoreUnavailable,
    RateLimitError,
    UpstreamError,
)
from gateway.ledger.record import LedgerRecord, Recorder
from gateway.metrics import Metrics
from gateway.pricing import PriceBook
from gateway.protocol import Endpoint, ParsedRequest, parse_request
from gateway.quotas.base import Demand, QuotaStore, Reservation
from gateway.routing.health import Breakers, RetryBudget
from gateway.routing.policies import Features
from gateway.routing.pool import EnginePool, Slot
from gateway.routing.rollout import ShadowRunner
from gateway.routing.router import RouteDecision, Router
from gateway.streaming import SSE_HEADERS, SSEResponse, StreamOutcome, UsageTracker, frame
from gateway.tokens import TokenCounter

log = logging.getLogger("tollgate.access")

#: Check the budget of a running stream every this many chunks.
BUDGET_CHECK_EVERY = 16


@dataclass(slots=True)
class RequestContext:
    """Everything one request accumulates on its way through the stages."""

    request_id: str
    endpoint: Endpoint
    started_at: dt.datetime
    t0: float
    principal: Principal | None = None
    request: ParsedRequest | None = None
    model: ModelSettings | None = None
    prompt_tokens_est: int = 0
    max_tokens: int = 0
    reservation: Reservation | None = None
    decision: RouteDecision | None = None
    engine: Engine | None = None
    attempts: int = 0
    usage: dict[str, Any] | None = None
    usage_estimated: bool = False
    completion_text: list[str] = field(default_factory=list)
    completion_chunks: int = 0
    ttft: float | None = None
    status: str = "ok"
    http_status: int = 200
    error: GatewayError | None = None
    cost_nusd: int = 0
    concluded: bool = False
    finished: bool = False

    @property
    def tier(self) -> str:
        return (
            self.engine.tier if self.engine else (self.decision.tier if self.decision else "none")
        )

    @property
    def model_label(self) -> str:
        return self.model.name if self.model else "unknown"


class Pipeline:
    """Runs the stages; built once at start-up with its collaborators."""

    def __init__(
        self,
        *,
        settings: Settings,
        authenticator: Authenticator,
        quotas: QuotaStore,
        router: Router,
        pool: EnginePool,
        client: EngineClient,
        breakers: Breakers,
        retry_budget: RetryBudget,
        tokens: TokenCounter,
        prices: PriceBook,
        recorder: Recorder,
        metrics: Metrics,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.settings = settings
        self.authenticator = authenticator
        self.quotas = quotas
        self.router = router
        self.pool = pool
        self.client = client
        self.breakers = breakers
        self.retry_budget = retry_budget
        self.tokens = tokens
        self.prices = prices
        self.recorder = recorder
        self.metrics = metrics
        self.shadow = shadow
        self._server = settings.server
        self._reference = prices.reference_model or self._default_reference()
        #: Requests between authentication and finish (the in-flight gauge reads it).
        self.active = 0

    # ------------------------------------------------------------------ entry point

    def new_context(self, request_id: str, endpoint: Endpoint) -> RequestContext:
        return RequestContext(
            request_id=request_id,
            endpoint=endpoint,
            started_at=dt.datetime.now(dt.UTC),
            t0=time.perf_counter(),
        )

    async def handle(self, ctx: RequestContext, authorization: str | None, body: bytes) -> Response:
        self.active += 1
        try:
            await self.authenticate(ctx, authorization)
            self.parse(ctx, body)
            await self.admit(ctx)
        except BaseException as err:
            self.active -= 1
            if isinstance(err, GatewayError):
                self._observe_rejection(ctx, err)
            raise
        assert ctx.request is not None
        if ctx.request.stream:
            return self.stream_response(ctx)
        try:
            self.route(ctx)
            payload = await self.forward_unary(ctx)
            return self.unary_response(ctx, payload)
        except GatewayError as err:
            ctx.error = err
            raise
        except BaseException as exc:
            ctx.error = InternalError("The gateway failed to serve the request.")
            if isinstance(exc, asyncio.CancelledError):
                ctx.status = "client_disconnect"
            raise
        finally:
            await self.finish(ctx)

    # ------------------------------------------------------------------ stages

    async def authenticate(self, ctx: RequestContext, authorization: str | None) -> None:
        ctx.principal = await self.authenticator.authenticate(bearer_token(authorization))

    def parse(self, ctx: RequestContext, body: bytes) -> None:
        s = self._server
        req = parse_request(ctx.endpoint, body, max_messages=s.max_messages, max_n=s.max_n)
        ctx.request = req
        model = self.router.resolve(req.model)
        assert ctx.principal is not None
        ctx.principal.check_model(model.name)
        ctx.model = model
        if req.stream and ctx.endpoint is Endpoint.EMBEDDINGS:
            raise InvalidRequestError("Embeddings cannot be streamed.", param="stream")
        requested = req.requested_max_tokens
        if requested is not None and requested > s.max_tokens_cap:
            raise InvalidRequestError(
                f"max_tokens={requested} is above this gateway's limit of {s.max_tokens_cap}.",
                param="max_tokens",
            )
        token_model = self._token_model(model)
        ctx.prompt_tokens_est = self.tokens.count_prompt(token_model, req)
        if ctx.endpoint is Endpoint.EMBEDDINGS:
            ctx.max_tokens = 0
        elif requested is not None:
            ctx.max_tokens = requested * req.n
        else:
            ctx.max_tokens = self._default_max_tokens(model, ctx.prompt_tokens_est) * req.n

    async def admit(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None and ctx.model is not None
        worst = 0
        for tier in self.router.reachable_tiers(ctx.model):
            price_model = self._price_model_of_tier(tier)
            if price_model is not None:
                cost = self.prices.price(price_model).cost_nusd(
                    ctx.prompt_tokens_est, ctx.max_tokens
                )
                worst = max(worst, cost)
        demand = Demand(tokens=ctx.prompt_tokens_est + ctx.max_tokens, cost_nusd=worst)
        ctx.reservation = await self.quotas.reserve(ctx.principal, ctx.request_id, demand)

    def route(self, ctx: RequestContext) -> None:
        assert ctx.model is not None and ctx.request is not None
        raw = ctx.request.raw
        fmt = raw.get("response_format")
        requested = ctx.request.requested_max_tokens
        features = Features(
            prompt_tokens=ctx.prompt_tokens_est,
            # What the client asked for: the default (the whole context) says nothing.
            max_tokens=requested * ctx.request.n if requested else 0,
            messages=len(raw.get("messages") or ()),
            has_tools=bool(raw.get("tools")),
            json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"),
            text=_last_user_text(raw),
            budget_remaining_nusd=(
                ctx.reservation.budget_remaining_nusd if ctx.reservation else None
            ),
            key_defaults=ctx.principal.routing if ctx.principal else None,
            key_id=ctx.principal.key_id if ctx.principal else None,
            prefix_hash=self.router.prefix_hash(raw),
        )
        ctx.decision = decision = self.router.decide(ctx.model, features)
        self.retry_budget.on_request()
        if decision.shadow is not None and self.shadow is not None:
            # Fire and forget: never awaited by, nor billed to, this request.
            self.shadow.mirror(
                decision.shadow, ctx.endpoint, raw, ctx.request_id, ctx.request.model
            )

    async def forward_unary(self, ctx: RequestContext) -> bytes:
        """Send to the best candidate; retry on another before any byte reached the client."""
        assert ctx.request is not None
        last: GatewayError | None = None
        for engine in self._attempts(ctx):
            body = self._upstream_body(ctx, engine)
            try:
                slot = await self._acquire(engine)
            except GatewayError as err:  # shed by our own queue: the engine saw nothing
                self.breakers.release(engine)
                last = err
                continue
            try:
                resp = await self.client.send(engine, ctx.endpoint, body, ctx.request_id)
            except GatewayError as err:
                ctx.engine = engine
                last = self._engine_failed(engine, err)
                if not err.retryable:
                    raise
                continue
            finally:
                slot.release()
                self.breakers.release(engine)
            self.breakers.success(engine)
            ctx.engine = engine
            return resp.body
        raise _exhausted(last)

    async def settle(self, ctx: RequestContext) -> None:
        if ctx.reservation is None:
            return
        usage = ctx.usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        await self.quotas.settle(
            ctx.reservation, Demand(tokens=prompt + completion, cost_nusd=ctx.cost_nusd)
        )

    def record(self, ctx: RequestContext) -> None:
        engine = ctx.engine
        if engine is None or ctx.principal is None or ctx.request is None:
            return  # never reached an engine: nothing was spent
        usage = ctx.usage or {}
        finished = dt.datetime.now(dt.UTC)
        elapsed = time.perf_counter() - ctx.t0
        reason = ctx.decision.reason if ctx.decision else "by_name"
        if ctx.decision and engine.tier != ctx.decision.tier:
            reason += f";fallback_from:{ctx.decision.tier}"
        price_model = engine.settings.price_model or engine.model
        self.recorder.record(
            LedgerRecord(
                request_id=ctx.request_id,
                started_at=ctx.started_at,
                finished_at=finished,
                key_id=ctx.principal.key_id,
                key_prefix=ctx.principal.key_prefix,
                team=ctx.principal.team,
                endpoint=ctx.endpoint.value,
                requested_model=ctx.request.model,
                engine=engine.name,
                tier=engine.tier,
                upstream_model=engine.model,
                route_reason=reason,
                stream=ctx.request.stream,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=_cached(usage),
                usage_estimated=ctx.usage_estimated,
                latency_ms=round(elapsed * 1000, 3),
                ttft_ms=round(ctx.ttft * 1000, 3) if ctx.ttft is not None else None,
                status=ctx.status,
                http_status=ctx.http_status,
                error_code=ctx.error.code if ctx.error else None,
                cost_nusd=ctx.cost_nusd,
                counterfactual_nusd=self._counterfactual(usage),
                price_version=self.prices.price(price_model).version
                if self.prices.has(price_model)
                else "unpriced",
            )
        )

    async def finish(self, ctx: RequestContext) -> None:
        """Settle (if not done yet) and record, exactly once, whatever happened."""
        if ctx.finished:
            return
        ctx.finished = True
        self.active -= 1
        await self.conclude(ctx)
        self.record(ctx)
        self._observe(ctx)

    async def conclude(self, ctx: RequestContext) -> None:
        """Decide the outcome, usage and cost, and settle the reservation; once."""
        if ctx.concluded:
            return
        ctx.concluded = True
        if ctx.error is not None:
            ctx.http_status = ctx.error.status_code
            if ctx.status == "ok":
                ctx.status = "timeout" if ctx.error.status_code == 504 else "error"
        if ctx.engine is not None and ctx.usage is None:
            if ctx.completion_chunks or ctx.status == "client_disconnect":
                # Output was produced (or the prompt was being processed): bill it.
                self._estimate_usage(ctx)
            else:
                ctx.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        ctx.cost_nusd = self._cost(ctx)
        try:
            await asyncio.shield(self.settle(ctx))
        except GatewayError as err:  # quota store down at settle: the TTL reclaims it
            log.warning("settle failed", extra={"request_id": ctx.request_id, "code": err.code})

    # ------------------------------------------------------------------ responses

    def unary_response(self, ctx: RequestContext, payload: bytes) -> Response:
        data = orjson.loads(payload)
        usage = data.get("usage") if isinstance(data, dict) else None
        ctx.usage = usage if isinstance(usage, dict) else None
        if ctx.usage is None:
            ctx.usage_estimated = True
            self._estimate_usage(ctx, data)
        ctx.cost_nusd = self._cost(ctx)
        if self.settings.pricing.cost_in_usage and isinstance(usage, dict):
            usage["cost_usd"] = ctx.cost_nusd / 1e9
            payload = orjson.dumps(data)
        return Response(payload, media_type="application/json", headers=self.response_headers(ctx))

    def stream_response(self, ctx: RequestContext) -> SSEResponse:
        outcome = StreamOutcome()

        def headers() -> list[tuple[bytes, bytes]]:
            return SSE_HEADERS + [
                (k.encode(), v.encode()) for k, v in self.response_headers(ctx).items()
            ]

        def error_headers(err: GatewayError) -> list[tuple[bytes, bytes]]:
            return [(k.encode(), v.encode()) for k, v in self.error_headers(ctx, err).items()]

        async def on_end(out: StreamOutcome) -> None:
            # The stream ended on its own: settle before the client hears [DONE].
            if out.error is not None and ctx.error is None:
                ctx.error = out.error
            await self.conclude(ctx)

        async def on_finish(out: StreamOutcome) -> None:
            if out.client_disconnected:
                ctx.status = "client_disconnect"
                ctx.http_status = 499
            if out.error is not None and ctx.error is None:
                ctx.error = out.error
            await self.finish(ctx)

        return SSEResponse(
            self._stream_events(ctx),
            headers=headers,
            error_headers=error_headers,
            on_finish=on_finish,
            on_end=on_end,
            keepalive_s=self._server.keepalive_seconds,
            outcome=outcome,
        )

    async def _stream_events(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        """Relay one engine's stream; move to the next candidate while nothing was sent."""
        assert ctx.request is not None
        self.route(ctx)
        wants_usage = ctx.request.client_wants_usage
        last: GatewayError | None = None
        for engine in self._attempts(ctx):
            tracker = UsageTracker()
            sent = False
            try:
                slot = await self._acquire(engine)
            except GatewayError as err:  # shed by our own queue: the engine saw nothing
                self.breakers.release(engine)
                last = err
                continue
            ctx.engine = engine
            body = self._upstream_body(ctx, engine)
            try:
                upstream = await self.client.open_stream(engine, ctx.endpoint, body, ctx.request_id)
            except BaseException as exc:
                slot.release()
                self.breakers.release(engine)
                if not isinstance(exc, GatewayError):
                    raise
                last = self._engine_failed(engine, exc)
                if not exc.retryable:
                    raise
                continue
            try:
                async for payload in upstream.events():
                    if payload == b"[DONE]":
                        break
                    frame_err, usage_only = tracker.inspect(payload)
                    if frame_err is not None:
                        message = frame_err.get("message") or "The engine failed mid-stream."
                        raise UpstreamError(sanitize(str(message)), code="upstream_stream_error")
                    if ctx.ttft is None and tracker.chunks:
                        ctx.ttft = time.perf_counter() - ctx.t0
                        self.breakers.success(engine)  # it generates: a probe has passed
                    if usage_only and not wants_usage:
                        continue
                    sent = True
                    yield frame(payload)
                    if tracker.chunks % BUDGET_CHECK_EVERY == 0:
                        await self._check_stream_budget(ctx, tracker)
                self.breakers.success(engine)
                return
            except GatewayError as err:
                self._engine_failed(engine, err)
                if sent or not err.retryable:
                    ctx.error = err
                    raise
                last = err  # nothing reached the client yet: try the next candidate
            finally:
                ctx.usage = tracker.usage
                ctx.completion_text = tracker.text_parts
                ctx.completion_chunks = tracker.chunks
                await upstream.aclose()
                slot.release()
                self.breakers.release(engine)
        ctx.error = _exhausted(last)
        raise ctx.error

    def response_headers(self, ctx: RequestContext) -> dict[str, str]:
        h = {"x-request-id": ctx.request_id}
        if ctx.reservation is not None:
            h.update(ctx.reservation.snapshot.headers())
        if ctx.decision is not None:
            h["x-tollgate-tier"] = ctx.tier
            reason = ctx.decision.reason
            if ctx.engine is not None and ctx.engine.tier != ctx.decision.tier:
                reason += f";fallback_from:{ctx.decision.tier}"
            h["x-tollgate-route-reason"] = reason
        if ctx.engine is not None:
            h["x-tollgate-engine"] = ctx.engine.name
        if self.settings.pricing.cost_header and not (ctx.request and ctx.request.stream):
            h["x-request-cost-usd"] = f"{ctx.cost_nusd / 1e9:.9f}"
        return h

    def error_headers(self, ctx: RequestContext, err: GatewayError) -> dict[str, str]:
        h = {"x-request-id": ctx.request_id, **err.headers}
        if ctx.reservation is not None:
            h.update(ctx.reservation.snapshot.headers())
        return h

    # ------------------------------------------------------------------ helpers

    def _attempts(self, ctx: RequestContext) -> Iterator[Engine]:
        """Candidates to try, lazily: asking for the next one is a retry.

        A retry needs a token from the retry budget and a breaker that admits the engine
        (an ejected engine is skipped; a half-open one takes this request as its probe).
        """
        assert ctx.decision is not None
        limit = self.settings.routing.retries.attempts
        tried = 0
        for engine in ctx.decision.candidates:
            if tried >= limit:
                return
            if not self.breakers.available(engine):
                continue  # ejected since the decision was made
            if tried and not self.retry_budget.try_spend():
                return
            if not self.breakers.admit(engine):
                continue
            if tried:
                self.metrics.retries.labels(engine.tier).inc()
            tried += 1
            ctx.attempts = tried
            yield engine

    async def _acquire(self, engine: Engine) -> Slot:
        if engine.in_flight < engine.settings.max_concurrency:
            return await self.pool.acquire(engine)
        t = time.perf_counter()
        try:
            return await self.pool.acquire(engine)
        finally:
            self.metrics.queue_wait.labels(engine.tier).observe(time.perf_counter() - t)

    def _engine_failed(self, engine: Engine, err: GatewayError) -> GatewayError:
        self.metrics.upstream_errors.labels(engine.name, err.code or "error").inc()
        self.breakers.record(engine, err)
        return err

    async def _check_stream_budget(self, ctx: RequestContext, tracker: UsageTracker) -> None:
        """End a stream whose output so far costs more than its key may still spend.

        Admission reserved the worst case, so this only fires when output outgrows it (an
        engine ignoring max_tokens, a reservation made while budgets failed open); only
        then is the live remaining budget read from the quota store.
        """
        res, engine = ctx.reservation, ctx.engine
        if not self.settings.quotas.cut_stream_on_budget or res is None or engine is None:
            return
        price_model = engine.settings.price_model or engine.model
        if not self.prices.has(price_model):
            return
        spent = self.prices.price(price_model).cost_nusd(ctx.prompt_tokens_est, tracker.chunks)
        beyond = spent - res.demand.cost_nusd
        if beyond <= 0:
            return
        remaining = await self.quotas.budget_remaining_nusd(res.principal)
        if remaining is None or beyond <= remaining:
            return
        ctx.status = "budget_cutoff"
        raise QuotaExceededError(
            "Budget exhausted during this stream: the output was cut at "
            f"{tracker.chunks} chunks (about ${spent / 1e9:.6f}) to stay within the budget."
        )

    def _upstream_body(self, ctx: RequestContext, engine: Engine) -> bytes:
        assert ctx.request is not None
        body = dict(ctx.request.raw)
        body["model"] = engine.model
        if ctx.request.stream:
            opts = body.get("stream_options")
            opts = dict(opts) if isinstance(opts, dict) else {}
            opts["include_usage"] = True
            body["stream_options"] = opts
        return orjson.dumps(body)

    def _estimate_usage(self, ctx: RequestContext, data: Any = None) -> None:
        model = ctx.engine.model if ctx.engine else ""
        text = "".join(ctx.completion_text)
        if not text and isinstance(data, dict):
            for c in data.get("choices") or ():
                msg = c.get("message")
                text += (
                    (msg.get("content") or "") if isinstance(msg, dict) else (c.get("text") or "")
                )
        completion = (
            max(self.tokens.count_text(model, text), ctx.completion_chunks)
            if text
            else ctx.completion_chunks
        )
        ctx.usage = {
            "prompt_tokens": ctx.prompt_tokens_est,
            "completion_tokens": completion,
            "total_tokens": ctx.prompt_tokens_est + completion,
        }
        ctx.usage_estimated = True

    def _cost(self, ctx: RequestContext) -> int:
        if ctx.engine is None or ctx.usage is None:
            return 0
        price_model = ctx.engine.settings.price_model or ctx.engine.model
        if not self.prices.has(price_model):
            return 0
        u = ctx.usage
        return self.prices.price(price_model).cost_nusd(
            int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), _cached(u)
        )

    def _counterfactual(self, usage: dict[str, Any]) -> int:
        ref = self._reference
        if ref is None or not self.prices.has(ref):
            return 0
        return self.prices.price(ref).cost_nusd(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            _cached(usage),
        )

    def _default_reference(self) -> str | None:
        large = self.pool.entries_by_tier.get("large")
        if large:
            return large[0].price_model or large[0].model
        return None

    def _price_model_of_tier(self, tier: str) -> str | None:
        best: tuple[Any, str] | None = None
        for e in self.pool.entries_by_tier.get(tier, ()):
            pm = e.price_model or e.model
            if self.prices.has(pm):
                p = self.prices.price(pm)
                key = (p.prompt + p.completion, pm)
                if best is None or key > best:
                    best = key
        return best[1] if best else None

    def _token_model(self, model: ModelSettings) -> str:
        tiers = self.router.reachable_tiers(model)
        entries = self.pool.entries_by_tier.get(tiers[0]) if tiers else None
        return entries[0].model if entries else ""

    def _default_max_tokens(self, model: ModelSettings, prompt_tokens: int) -> int:
        cap = self._server.max_tokens_cap
        lens = [
            e.max_model_len
            for t in self.router.reachable_tiers(model)
            for e in self.pool.entries_by_tier.get(t, ())
            if e.max_model_len
        ]
        if lens:
            return max(1, min(cap, max(lens) - prompt_tokens))
        return cap

    def _observe_rejection(self, ctx: RequestContext, err: GatewayError) -> None:
        self.metrics.requests.labels(ctx.model_label, "none", str(err.status_code)).inc()
        if isinstance(err, RateLimitError):
            self.metrics.quota_refusals.labels(err.headers.get("x-tollgate-limit", "other")).inc()
        elif isinstance(err, QuotaStoreUnavailable):
            self.metrics.quota_refusals.labels("store_unavailable").inc()
        if self._server.access_log:
            log.info(
                "rejected",
                extra={
                    "request_id": ctx.request_id,
                    "key": ctx.principal.key_prefix if ctx.principal else None,
                    "model": ctx.model_label,
                    "status": err.status_code,
                    "code": err.code,
                },
            )

    def _observe(self, ctx: RequestContext) -> None:
        m = self.metrics
        tier = ctx.tier
        model = ctx.model_label
        elapsed = time.perf_counter() - ctx.t0
        m.requests.labels(model, tier, str(ctx.http_status)).inc()
        m.latency.labels(model, tier).observe(elapsed)
        if ctx.ttft is not None:
            m.ttft.labels(model, tier).observe(ctx.ttft)
        if ctx.usage:
            m.tokens.labels(model, tier, "prompt").inc(int(ctx.usage.get("prompt_tokens") or 0))
            m.tokens.labels(model, tier, "completion").inc(
                int(ctx.usage.get("completion_tokens") or 0)
            )
        if ctx.cost_nusd:
            m.cost.labels(model, tier).inc(ctx.cost_nusd / 1e9)
        if ctx.decision is not None:
            m.route_decisions.labels(ctx.decision.tier, ctx.decision.reason).inc()
        if self._server.access_log:
            log.info(
                "request",
                extra={
                    "request_id": ctx.request_id,
                    "key": ctx.principal.key_prefix if ctx.principal else None,
                    "model": model,
                    "tier": tier,
                    "engine": ctx.engine.name if ctx.engine else None,
                    "stream": bool(ctx.request and ctx.request.stream),
                    "status": ctx.http_status,
                    "outcome": ctx.status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "ttft_ms": round(ctx.ttft * 1000, 2) if ctx.ttft is not None else None,
                    "prompt_tokens": (ctx.usage or {}).get("prompt_tokens"),
                    "completion_tokens": (ctx.usage or {}).get("completion_tokens"),
                    "estimated": ctx.usage_estimated,
                },
            )


def _exhausted(last: GatewayError | None) -> GatewayError:
    """The error for a request no candidate could serve (503s carry Retry-After)."""
    err = last or EngineUnavailableError("No engine could serve the request.")
    if err.status_code == 503 and "Retry-After" not in err.headers:
        err.headers["Retry-After"] = "1"
    return err


def _cached(usage: dict[str, Any]) -> int:
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        return int(details.get("cached_tokens") or 0)
    return 0


def _last_user_text(raw: dict[str, Any]) -> str:
    messages = raw.get("messages")
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                content = msg.get("content")
                return content if isinstance(content, str) else ""
        return ""
    prompt = raw.get("prompt")
    return prompt if isinstance(prompt, str) else ""
