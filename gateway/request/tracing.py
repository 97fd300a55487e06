"""Traces of the request path: one span per stage, and the W3C ``traceparent`` upstream.

The pipeline marks its stages on the request's :class:`RequestTrace`:
``trace.enter(stage)`` ends the open stage's span and starts the next one, and
``trace.close()`` ends the last one and the request's own span, once. The stages are
authenticate, admit, route, forward, settle and record; the spans read their attributes
(tier, engine, route reason, tokens) from the :class:`RequestContext` when they end, so
the pipeline computes nothing for them.

Off (``tracing.enabled: false``, the default), :class:`NullTracing` hands every request
the same stateless :data:`NULL_TRACE`, whose methods do nothing: no object per request,
no OpenTelemetry import. An incoming ``traceparent`` is then passed to the engine
unchanged (checked for the W3C shape, else dropped), so a client's trace still reaches
the engine through a gateway that does not trace; none is ever made up.

On, :mod:`gateway.request.otel` makes the spans: a client's valid ``traceparent``
becomes the parent of the request's span, and the engine receives the ``forward``
span's own ``traceparent``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, Literal, Protocol

from gateway.config import TracingSettings
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.request.context import RequestContext

Stage = Literal["authenticate", "admit", "route", "forward", "settle", "record"]

#: version-traceid-parentid-flags, lower-case hex; version ff and all-zero ids are invalid.
_TRACEPARENT = re.compile(
    rb"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)


def incoming_traceparent(value: bytes) -> str | None:
    """A client's ``traceparent`` header if it has the W3C shape, else None (dropped)."""
    if _TRACEPARENT.fullmatch(value) is None:
        return None
    return value.decode("ascii")


class RequestTrace(Protocol):
    """One request's spans, driven by the pipeline."""

    def enter(self, stage: Stage) -> None:
        """End the open stage's span (if any) and start ``stage``'s."""
        ...

    def close(self, err: GatewayError | None = None) -> None:
        """End the open stage's span and the request's span; later calls do nothing."""
        ...


class Tracing(Protocol):
    """The gateway's tracer: built once at start-up, shut down at the drain."""

    def begin(self, ctx: RequestContext) -> RequestTrace:
        """Start the request's span (a child of the client's ``ctx.traceparent``)."""
        ...

    def flush(self) -> bool:
        """Export every ended span now; False if that did not finish in time."""
        ...

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking: call it off the event loop)."""
        ...


class NullTrace:
    """The trace of every request while tracing is off: does nothing, holds nothing."""

    __slots__ = ()

    def enter(self, stage: Stage) -> None:
        return None

    def close(self, err: GatewayError | None = None) -> None:
        return None


#: Stateless, so one serves every request (no allocation per request).
NULL_TRACE: Final = NullTrace()


class NullTracing:
    """Tracing off."""

    __slots__ = ()

    def begin(self, ctx: RequestContext) -> RequestTrace:
        return NULL_TRACE

    def flush(self) -> bool:
        return True

    def shutdown(self) -> None:
        return None


def build_tracing(settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracing:
    """The tracer ``settings`` ask for; ``exporter`` replaces OTLP (tests pass an in-memory one)."""
    if not settings.enabled:
        return NullTracing()
    from gateway.request.otel import OtelTracing  # OpenTelemetry is imported only when on

    return OtelTracing(settings, exporter)
