"""The services the routes use: built once at start-up, reached by name.

Routes read ``services(request).<name>``: the pipeline for the request path, and the
pool, quotas, ledger, keys... for the health and admin routes, never through the
pipeline (arrows point one way: api → request → services → stores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.keys import KeyServices
from gateway.ledger.service import Ledger
from gateway.metrics import Metrics
from gateway.quotas.base import QuotaStore
from gateway.request.overload import OverloadGuard
from gateway.request.pipeline import Pipeline
from gateway.request.tracing import Tracing
from gateway.routing.discovery import EngineDiscovery
from gateway.routing.health import Breakers
from gateway.routing.monitor import EngineMonitor
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.routing.state import StateWatcher
from gateway.throttle import FailedAttempts
from gateway.tokens import TokenCounter
from gateway.upstream.transport import Transport


@dataclass
class Services:
    """Everything the routes need, built once at start-up."""

    settings: Settings
    pipeline: Pipeline
    metrics: Metrics
    #: Refuses requests past this process's capacity (before any other work).
    overload: OverloadGuard
    authenticator: Authenticator
    quotas: QuotaStore
    router: Router
    pool: EnginePool
    breakers: Breakers
    transport: Transport
    tokens: TokenCounter
    monitor: EngineMonitor
    discovery: EngineDiscovery
    #: None when the ledger is off (or a test supplied its own recorder).
    ledger: Ledger | None
    #: None without a key database (static keys only).
    keys: KeyServices | None
    #: Spans per request stage (a no-op unless ``tracing.enabled``).
    tracing: Tracing
    #: Applies ``routing.state_file`` to the learned policy (None: no learned policy).
    routing_state: StateWatcher | None
    #: Unix time the services were built (the ``created`` of ``/v1/models``).
    started_at: float
    #: Failed admin logins per client address (see :mod:`gateway.throttle`).
    admin_failures: FailedAttempts = field(default_factory=lambda: FailedAttempts(10, 300.0))
    #: Refusing new requests (SIGTERM, after ``server.unready_seconds``); readiness 503.
    draining: bool = False
    #: SIGTERM received: readiness 503 while requests are still served.
    stopping: bool = False


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
