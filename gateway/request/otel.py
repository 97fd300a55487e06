"""Tracing on: OpenTelemetry spans for one request, exported over OTLP/HTTP.

Imported only when ``tracing.enabled`` (see :func:`gateway.request.tracing.build_tracing`).
The tracer provider is the gateway's own, built once per app and shut down at the drain;
nothing is set globally. Spans end on the event loop into a :class:`BatchSpanProcessor`,
whose thread does the exporting.

The request's span (kind SERVER, named ``POST /v1/chat/completions`` and so on) has one
child per stage. Attributes, read from the request when each span ends:

* admit: ``gen_ai.request.model``, ``tollgate.prompt_tokens_bound``, ``tollgate.max_tokens``
* route: ``tollgate.tier``, ``tollgate.route_reason`` (the router's), ``tollgate.candidates``
* forward (kind CLIENT): ``tollgate.engine``, ``tollgate.tier``, ``tollgate.attempts``,
  ``tollgate.ttft_s``; its ``traceparent`` is what the engine receives
* settle: ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
  ``tollgate.usage_estimated``, ``tollgate.cost_usd``
* record: ``tollgate.recorded`` (whether a ledger record was written)
* the request: all of those that are known (the route reason names a fallback), plus
  ``tollgate.request_id``, ``tollgate.stream``, ``tollgate.outcome`` and
  ``http.response.status_code``

An error is named (``error.type``, its code) on the stage span where it happened and on
the request's span; a 5xx also sets their status to ERROR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TracingSettings
from gateway.errors import GatewayError
from gateway.protocol import Endpoint
from gateway.request.tracing import RequestTrace, Stage

if TYPE_CHECKING:
    from gateway.request.context import RequestContext


class OtelTracing:
    """A tracer provider of the gateway's own, with one batch exporter."""

    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        self._provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=settings.endpoint, timeout=settings.export_timeout_s
            )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("tollgate")
        self._propagator = TraceContextTextMapPropagator()
        self._names = {e: f"POST {e.path}" for e in Endpoint}

    def begin(self, ctx: RequestContext) -> RequestTrace:
        parent: Context | None = None
        if ctx.traceparent is not None:  # already checked for the W3C shape
            parent = self._propagator.extract({"traceparent": ctx.traceparent})
        root = self._tracer.start_span(
            self._names[ctx.endpoint],
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"tollgate.request_id": ctx.request_id},
        )
        return OtelTrace(self._tracer, root, ctx)

    def flush(self) -> bool:
        return self._provider.force_flush()

    def shutdown(self) -> None:
        self._provider.shutdown()


class OtelTrace:
    """One request's spans: the request's own, and the open stage's."""

    __slots__ = (
        "_blamed", "_closed", "_ctx", "_parent", "_recording", "_root", "_span", "_stage",
        "_tracer",
    )  # fmt: skip

    def __init__(self, tracer: Tracer, root: Span, ctx: RequestContext) -> None:
        self._tracer = tracer
        self._root = root
        self._parent = set_span_in_context(root)
        self._ctx = ctx
        self._span: Span | None = None
        self._stage: Stage | None = None
        self._closed = False
        #: False for a trace the sampler dropped: its spans only carry the context on.
        self._recording = root.is_recording()
        #: The error is named on the stage span where it happened, and only there.
        self._blamed = False

    def enter(self, stage: Stage) -> None:
        if self._closed:
            return
        self._end_stage(None)
        kind = SpanKind.CLIENT if stage == "forward" else SpanKind.INTERNAL
        self._span = span = self._tracer.start_span(stage, context=self._parent, kind=kind)
        self._stage = stage
        if stage == "forward":  # the engine's spans become children of this one
            sc = span.get_span_context()
            self._ctx.traceparent = (
                f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
            )

    def close(self, err: GatewayError | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._end_stage(err)
        ctx, root = self._ctx, self._root
        if not self._recording:
            root.end()
            return
        attrs = _request_attributes(ctx)
        attrs["http.response.status_code"] = err.status_code if err else ctx.http_status
        if err is not None:  # refused before reaching an engine
            attrs["tollgate.outcome"] = "rejected"
        root.set_attributes(attrs)
        _name_error(root, err or ctx.error)
        root.end()

    def _end_stage(self, err: GatewayError | None) -> None:
        span, stage = self._span, self._stage
        if span is None or stage is None:
            return
        self._span = self._stage = None
        if not self._recording:
            span.end()
            return
        span.set_attributes(_stage_attributes(stage, self._ctx))
        err = err or self._ctx.error
        if err is not None and not self._blamed:
            self._blamed = True
            _name_error(span, err)
        span.end()


def _name_error(span: Span, err: GatewayError | None) -> None:
    if err is None:
        return
    code = err.code or type(err).__name__
    span.set_attribute("error.type", code)
    if err.status_code >= 500:
        span.set_status(Status(StatusCode.ERROR, code))


def _stage_attributes(stage: Stage, ctx: RequestContext) -> dict[str, Any]:
    if stage == "admit":
        admitted = ctx.admitted
        if admitted is None:
            return {}
        return {
            "gen_ai.request.model": admitted.request.model,
            "tollgate.prompt_tokens_bound": admitted.prompt_tokens,
            "tollgate.max_tokens": admitted.max_tokens,
        }
    if stage == "route":
        decision = ctx.decision
        if decision is None:
            return {}
        return {
            "tollgate.tier": decision.tier,
            "tollgate.route_reason": decision.reason,
            "tollgate.candidates": len(decision.candidates),
        }
    if stage == "forward":
        attrs: dict[str, Any] = {"tollgate.attempts": ctx.attempts}
        if ctx.engine is not None:
            attrs["tollgate.engine"] = ctx.engine.name
            attrs["tollgate.tier"] = ctx.engine.tier
        if ctx.ttft is not None:
            attrs["tollgate.ttft_s"] = ctx.ttft
        if ctx.status != "ok":
            attrs["tollgate.outcome"] = ctx.status
        return attrs
    if stage == "settle":
        return _usage_attributes(ctx)
    if stage == "record":
        return {"tollgate.recorded": ctx.engine is not None and ctx.admitted is not None}
    return {}


def _usage_attributes(ctx: RequestContext) -> dict[str, Any]:
    usage = ctx.usage
    if usage is None:
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.prompt,
        "gen_ai.usage.output_tokens": usage.completion,
        "tollgate.usage_estimated": ctx.usage_estimated,
        "tollgate.cost_usd": ctx.cost_nusd / 1e9,
    }


def _request_attributes(ctx: RequestContext) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "tollgate.stream": ctx.stream,
        "tollgate.outcome": ctx.status,
        "tollgate.tier": ctx.tier,
    }
    if ctx.admitted is not None:
        attrs["gen_ai.request.model"] = ctx.admitted.request.model
    if ctx.decision is not None:
        attrs["tollgate.route_reason"] = ctx.route_reason
    if ctx.engine is not None:
        attrs["tollgate.engine"] = ctx.engine.name
    attrs.update(_usage_attributes(ctx))
    return attrs
