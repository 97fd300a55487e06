"""The ledger record: what one request cost and why it went where it went."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class LedgerRecord:
    request_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    key_id: str
    key_prefix: str
    team: str | None
    endpoint: str
    requested_model: str
    engine: str
    tier: str
    upstream_model: str
    route_reason: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    #: True when the engine gave no usage and the gateway counted tokens itself.
    usage_estimated: bool
    latency_ms: float
    ttft_ms: float | None
    #: ok | error | client_disconnect | budget_cutoff | timeout
    status: str
    http_status: int
    error_code: str | None
    cost_nusd: int
    #: What the same usage would have cost on the reference (large) tier.
    counterfactual_nusd: int
    price_version: str
    #: The learned router's P(large needed), when it routed this request.
    route_score: float | None = None
    #: Its input vector (without the bias), so the model can be re-scored and retrained.
    route_features: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recorder(Protocol):
    """Accepts records without blocking the request path."""

    def record(self, rec: LedgerRecord) -> None: ...


class NullRecorder:
    """Ledger disabled."""

    def record(self, rec: LedgerRecord) -> None:
        return None
