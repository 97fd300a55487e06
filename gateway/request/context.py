"""What one request carries through the stages: typed stage results, then its outcome."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from gateway.auth import Principal
from gateway.config import ModelSettings
from gateway.errors import GatewayError
from gateway.protocol import Endpoint, ParsedRequest
from gateway.quotas.base import Reservation
from gateway.request.metering import Output, Usage
from gateway.request.tracing import NULL_TRACE, RequestTrace
from gateway.routing.plan import TierPlan
from gateway.routing.router import RouteDecision
from gateway.upstream.engine import Engine


@dataclass(frozen=True, slots=True)
class Admitted:
    """The result of admission: a parsed, sized request with its quota reserved."""

    principal: Principal
    request: ParsedRequest
    model: ModelSettings
    #: An estimate of the prompt's tokens (see gateway.tokens).
    prompt_tokens: int
    #: The output it may produce, all choices together (what was reserved).
    max_tokens: int
    reservation: Reservation
    #: For an ``auto`` model: the tier admission reserved for (routing stays within it).
    plan: TierPlan | None = None


@dataclass(slots=True)
class RequestContext:
    """One request: who and what (set by the stages), then how it ended."""

    request_id: str
    endpoint: Endpoint
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    t0: float = field(default_factory=time.perf_counter)
    #: Known once authenticated (labels a rejection's log line).
    principal: Principal | None = None
    #: Known once the model name resolved (labels a rejection's metrics).
    model: ModelSettings | None = None
    admitted: Admitted | None = None
    decision: RouteDecision | None = None
    #: The engine that served (or last failed) the request.
    engine: Engine | None = None
    attempts: int = 0
    usage: Usage | None = None
    usage_estimated: bool = False
    output: Output = field(default_factory=Output)
    ttft: float | None = None
    #: ok | error | client_disconnect | budget_cutoff | timeout
    status: str = "ok"
    http_status: int = 200
    error: GatewayError | None = None
    cost_nusd: int = 0
    concluded: bool = False
    finished: bool = False
    #: The request's spans (the shared no-op one while tracing is off).
    trace: RequestTrace = NULL_TRACE
    #: The ``traceparent`` sent to the engine: the client's (checked) while tracing is
    #: off, the forward span's while it is on; None sends none.
    traceparent: str | None = None

    @property
    def tier(self) -> str:
        if self.engine is not None:
            return self.engine.tier
        return self.decision.tier if self.decision is not None else "none"

    @property
    def model_label(self) -> str:
        return self.model.name if self.model is not None else "unknown"

    @property
    def stream(self) -> bool:
        return self.admitted is not None and self.admitted.request.stream

    @property
    def routed(self) -> bool:
        """Whether a policy chose the tier that served: an ``auto`` model, or a fallback."""
        if self.model is not None and self.model.auto:
            return True
        return (
            self.engine is not None
            and self.decision is not None
            and self.engine.tier != self.decision.tier
        )

    @property
    def route_reason(self) -> str:
        """The router's reason, with the fallback named when another tier served."""
        if self.decision is None:
            return "by_name"
        reason = self.decision.reason
        if self.decision.replica_note:
            reason += f";{self.decision.replica_note}"
        if self.engine is not None and self.engine.tier != self.decision.tier:
            reason += f";fallback_from:{self.decision.tier}"
        return reason
