"""The request path in order: authenticate → admit → route → forward → settle → record.

:meth:`Pipeline.handle` is all a route calls. Unary and streaming requests share one
lifecycle: whatever happens after admission (success, engine error, client disconnect,
cancellation), :meth:`Pipeline.conclude` settles the reservation exactly once, and
:meth:`Pipeline.finish` writes the ledger record and the metrics exactly once. The
settlement happens before the client hears that its request ended, so the next request,
on any replica, already sees the slot free and the spend counted: a unary answer settles
before it is sent, and a stream settles just before its last frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

import orjson

from gateway.auth import Authenticator, bearer_token
from gateway.config import Settings
from gateway.errors import GatewayError, InternalError, QuotaExceededError, UpstreamError
from gateway.ledger.record import Recorder
from gateway.protocol import Endpoint
from gateway.quotas.base import Demand, QuotaStore
from gateway.request import headers, metering, route
from gateway.request.admission import Admission
from gateway.request.budget import StreamBudget
from gateway.request.context import Admitted, RequestContext
from gateway.request.forward import Forwarder, upstream_body
from gateway.request.metering import Meter, Usage
from gateway.request.observe import Observer
from gateway.request.reply import Reply
from gateway.request.shadow import ShadowRunner
from gateway.request.streaming import SSE_HEADERS, SSEResponse, StreamOutcome, UsageTracker, frame
from gateway.request.tracing import NullTracing, Tracing, incoming_traceparent
from gateway.routing.router import RouteDecision, Router
from gateway.tokens import TokenCounter
from gateway.upstream.engine import Engine
from gateway.upstream.errors import sanitize
from gateway.upstream.transport import Transport

log = logging.getLogger("tollgate.access")

#: Ends after which an engine that gave no usage had still worked on the request.
_ENGINE_WORKED = frozenset({"client_disconnect", "timeout"})


class Pipeline:
    """Runs the stages; built once at start-up with its collaborators."""

    def __init__(
        self,
        *,
        settings: Settings,
        authenticator: Authenticator,
        admission: Admission,
        router: Router,
        forwarder: Forwarder,
        transport: Transport,
        quotas: QuotaStore,
        meter: Meter,
        tokens: TokenCounter,
        recorder: Recorder,
        observer: Observer,
        shadow: ShadowRunner | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.admission = admission
        self.router = router
        self.forwarder = forwarder
        self.transport = transport
        self.quotas = quotas
        self.meter = meter
        self.tokens = tokens
        self.recorder = recorder
        self.observer = observer
        self.shadow = shadow
        self.tracing = tracing or NullTracing()
        self._server = settings.server
        self._cost_in_usage = settings.pricing.cost_in_usage
        self._cost_header = settings.pricing.cost_header
        self._cut_streams = settings.quotas.cut_stream_on_budget
        #: Requests between authentication and finish (the in-flight gauge reads it).
        self.active = 0

    def new_context(
        self, request_id: str, endpoint: Endpoint, traceparent: bytes | None = None
    ) -> RequestContext:
        ctx = RequestContext(request_id=request_id, endpoint=endpoint)
        if traceparent is not None:  # the client's trace context (see request/tracing.py)
            ctx.traceparent = incoming_traceparent(traceparent)
        return ctx

    async def handle(
        self, ctx: RequestContext, authorization: str | None, body: bytes
    ) -> Reply | SSEResponse:
        self.active += 1
        ctx.trace = trace = self.tracing.begin(ctx)
        try:
            trace.enter("authenticate")
            principal = await self.authenticator.authenticate(bearer_token(authorization))
            ctx.principal = principal
            trace.enter("admit")
            admitted = await self.admission.admit(ctx, principal, body)
        except BaseException as err:
            self.active -= 1
            refusal = err if isinstance(err, GatewayError) else None
            if refusal is not None:
                self.observer.rejected(ctx, refusal)
            trace.close(refusal)
            raise
        ctx.admitted = admitted
        if admitted.request.stream:
            return SSEResponse(
                self._stream_events(ctx, admitted),
                StreamLifecycle(self, ctx),
                keepalive_s=self._server.keepalive_seconds,
                send_timeout_s=self._server.send_timeout_s,
            )
        try:
            payload = await self._send(ctx, admitted, self._route(ctx, admitted))
            return self._unary_response(ctx, payload)
        except GatewayError as err:
            ctx.error = err
            raise
        except asyncio.CancelledError:  # the client hung up (or the server is stopping)
            ctx.status = "client_disconnect"
            ctx.http_status = 499
            raise
        except BaseException:
            ctx.error = InternalError("The gateway failed to serve the request.")
            raise
        finally:
            await self.finish(ctx)

    # ------------------------------------------------------------------ stages

    def _route(self, ctx: RequestContext, admitted: Admitted) -> RouteDecision:
        ctx.trace.enter("route")
        ctx.decision = decision = route.decide(admitted, self.router)
        self.forwarder.retry_budget.on_request()
        if decision.shadow is not None and self.shadow is not None:
            # Fire and forget: never awaited by, nor billed to, this request.
            req = admitted.request
            self.shadow.mirror(decision.shadow, ctx.endpoint, req.raw, ctx.request_id, req.model)
        ctx.trace.enter("forward")  # from here to the last byte of the answer
        return decision

    async def _send(
        self, ctx: RequestContext, admitted: Admitted, decision: RouteDecision
    ) -> bytes:
        async def call(engine: Engine) -> AsyncGenerator[bytes]:
            body = upstream_body(admitted, engine)
            resp = await self.transport.send(
                engine, ctx.endpoint, body, ctx.request_id, ctx.traceparent
            )
            yield resp.body

        payload = b""
        async with aclosing(self.forwarder.relay(ctx, decision, call)) as answers:
            async for answer in answers:
                payload = answer
        return payload

    async def _stream_events(
        self, ctx: RequestContext, admitted: Admitted
    ) -> AsyncGenerator[bytes]:
        """Relay one engine's stream; move to the next candidate while nothing was sent."""
        decision = self._route(ctx, admitted)
        wants_usage = admitted.request.client_wants_usage

        async def call(engine: Engine) -> AsyncGenerator[bytes]:
            tracker = UsageTracker()
            budget = self._stream_budget(admitted, engine)
            body = upstream_body(admitted, engine)
            upstream = await self.transport.open_stream(
                engine, ctx.endpoint, body, ctx.request_id, ctx.traceparent
            )
            try:
                async for batch in upstream.batches():
                    # Frames that arrived together leave together: one write, no delay.
                    out: list[bytes] = []
                    for payload in batch:
                        if payload == b"[DONE]":
                            if out:
                                yield b"".join(out)
                            return
                        frame_err, usage_only = tracker.inspect(payload)
                        if frame_err is not None:
                            if out:
                                yield b"".join(out)
                            message = frame_err.get("message") or "The engine failed mid-stream."
                            raise UpstreamError(
                                sanitize(str(message)), code="upstream_stream_error"
                            )
                        if ctx.ttft is None and tracker.chunks:
                            ctx.ttft = time.perf_counter() - ctx.t0
                            self.forwarder.success(engine)  # it generates: a probe has passed
                        if budget is not None and tracker.chunks > budget.limit:
                            if out:
                                yield b"".join(out)
                                out = []
                            try:
                                await budget.passed(tracker.chunks)
                            except QuotaExceededError:
                                ctx.status = "budget_cutoff"
                                raise
                        if usage_only and not wants_usage:
                            continue
                        out.append(frame(payload))
                    if out:
                        yield b"".join(out)
            finally:
                ctx.usage = tracker.usage
                ctx.output.text = tracker.text_parts
                ctx.output.chunks = tracker.chunks
                await upstream.aclose()

        async with aclosing(self.forwarder.relay(ctx, decision, call)) as frames:
            async for chunk in frames:
                yield chunk

    def _stream_budget(self, admitted: Admitted, engine: Engine) -> StreamBudget | None:
        """The stream's budget guard, when streams are cut on budget and it is priced."""
        if not self._cut_streams or not self.meter.priced(engine):
            return None
        return StreamBudget(self.quotas, self.meter, engine, admitted)

    # ------------------------------------------------------------------ the lifecycle

    async def conclude(self, ctx: RequestContext) -> None:
        """Decide the outcome, usage and cost, and settle the reservation; once."""
        if ctx.concluded:
            return
        ctx.concluded = True
        if ctx.error is not None:
            ctx.http_status = ctx.error.status_code
            if ctx.status == "ok":
                ctx.status = "timeout" if ctx.error.status_code == 504 else "error"
        ctx.trace.enter("settle")  # ends forward: at the last byte, or where it failed
        engine = ctx.engine
        if engine is not None and ctx.usage is None:
            if ctx.output.chunks or ctx.status in _ENGINE_WORKED:
                # Output was produced, or the engine had the prompt when the request
                # ended (a hang-up, a time-out): bill what it did, marked as estimated.
                self._estimate_usage(ctx, engine)
            else:  # the engine refused or failed: nothing to bill
                ctx.usage = metering.NO_USAGE
        ctx.cost_nusd = self.meter.cost(engine, ctx.usage or metering.NO_USAGE) if engine else 0
        try:
            await asyncio.shield(self._settle(ctx))
        except GatewayError as err:  # quota store down at settle: the TTL reclaims it
            log.warning("settle failed", extra={"request_id": ctx.request_id, "code": err.code})

    async def _settle(self, ctx: RequestContext) -> None:
        if ctx.admitted is None:
            return
        used = ctx.usage.total if ctx.usage is not None else 0
        await self.quotas.settle(
            ctx.admitted.reservation, Demand(tokens=used, cost_nusd=ctx.cost_nusd)
        )

    async def finish(self, ctx: RequestContext) -> None:
        """Settle (if not done yet), record and observe, exactly once, whatever happened."""
        if ctx.finished:
            return
        ctx.finished = True
        self.active -= 1
        await self.conclude(ctx)
        ctx.trace.enter("record")
        self._record(ctx)
        self.observer.finished(ctx)
        ctx.trace.close()

    def _record(self, ctx: RequestContext) -> None:
        engine, admitted = ctx.engine, ctx.admitted
        if engine is None or admitted is None:
            return  # never reached an engine: nothing was spent
        principal, req = admitted.principal, admitted.request
        who = metering.Attribution(
            request_id=ctx.request_id,
            started_at=ctx.started_at,
            key_id=principal.key_id,
            key_prefix=principal.key_prefix,
            team=principal.team,
            endpoint=ctx.endpoint.value,
            requested_model=req.model,
            route_reason=ctx.route_reason,
            stream=req.stream,
            route_score=ctx.decision.score if ctx.decision is not None else None,
        )
        usage = ctx.usage or metering.NO_USAGE
        money = metering.Charge(
            usage=usage,
            usage_estimated=ctx.usage_estimated,
            cost_nusd=ctx.cost_nusd,
            counterfactual_nusd=self.meter.counterfactual(usage, ctx.cost_nusd, routed=ctx.routed),
            price_version=self.meter.price_version(engine),
        )
        self.recorder.record(
            metering.ledger_record(
                who,
                engine,
                money,
                latency_s=time.perf_counter() - ctx.t0,
                ttft_s=ctx.ttft,
                status=ctx.status,
                http_status=ctx.http_status,
                error_code=ctx.error.code if ctx.error else None,
            )
        )

    def _estimate_usage(self, ctx: RequestContext, engine: Engine, data: object = None) -> None:
        prompt = ctx.admitted.prompt_tokens if ctx.admitted is not None else 0
        ctx.usage = metering.estimate(self.tokens, engine, prompt, ctx.output, data)
        ctx.usage_estimated = True

    # ------------------------------------------------------------------ responses

    def _unary_response(self, ctx: RequestContext, payload: bytes) -> Reply:
        data = orjson.loads(payload)
        raw_usage = data.get("usage") if isinstance(data, dict) else None
        ctx.usage = Usage.parse(raw_usage)
        engine = ctx.engine
        assert engine is not None  # relay() returned an answer: some engine served it
        if ctx.usage is None:
            self._estimate_usage(ctx, engine, data)
        ctx.cost_nusd = self.meter.cost(engine, ctx.usage or metering.NO_USAGE)
        if self._cost_in_usage and isinstance(raw_usage, dict):
            raw_usage["cost_usd"] = ctx.cost_nusd / 1e9
            payload = orjson.dumps(data)
        return Reply(payload, headers.response_headers(ctx, cost_header=self._cost_header))


class StreamLifecycle:
    """The pipeline's lifecycle, as the SSE response drives it (see SSEResponse)."""

    __slots__ = ("_ctx", "_pipeline")

    def __init__(self, pipeline: Pipeline, ctx: RequestContext) -> None:
        self._pipeline = pipeline
        self._ctx = ctx

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            *SSE_HEADERS,
            *headers.encode(headers.response_headers(self._ctx, cost_header=False)),
        ]

    def error_headers(self, err: GatewayError) -> list[tuple[bytes, bytes]]:
        return headers.encode(headers.error_headers(self._ctx, err))

    async def on_end(self, outcome: StreamOutcome) -> None:
        # The stream ended on its own: settle before the client hears [DONE].
        if outcome.error is not None and self._ctx.error is None:
            self._ctx.error = outcome.error
        await self._pipeline.conclude(self._ctx)

    async def on_finish(self, outcome: StreamOutcome) -> None:
        ctx = self._ctx
        if outcome.client_disconnected:
            ctx.status = "client_disconnect"
            ctx.http_status = 499
        if outcome.error is not None and ctx.error is None:
            ctx.error = outcome.error
        await self._pipeline.finish(ctx)
