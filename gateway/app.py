"""Application factory: the lifespan builds the services, then the routers are mounted."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import admin, admin_keys, admin_reports, feedback, health, openai, schema
from gateway.auth import Authenticator, Limits, Principal, StaticKeyAuthenticator, key_prefix
from gateway.config import Settings
from gateway.errors import GatewayError, InternalError, InvalidRequestError, NotFoundError
from gateway.keys import ChainAuthenticator, open_key_services
from gateway.ledger.record import NullRecorder, Recorder
from gateway.ledger.service import Ledger
from gateway.metrics import Metrics
from gateway.pricing import PriceBook
from gateway.quotas.base import QuotaStore
from gateway.quotas.factory import build_quota_store
from gateway.request.admission import Admission
from gateway.request.forward import Forwarder
from gateway.request.metering import Meter
from gateway.request.observe import Observer
from gateway.request.overload import LoopLag, OverloadGuard
from gateway.request.pipeline import Pipeline
from gateway.request.shadow import ShadowRunner
from gateway.request.tracing import build_tracing
from gateway.routing.discovery import EngineDiscovery, Resolver, resolve_dns
from gateway.routing.health import Breakers, RetryBudget
from gateway.routing.monitor import EngineMonitor
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.routing.state import StateWatcher
from gateway.services import Services
from gateway.throttle import FailedAttempts
from gateway.tokens import TokenCounter
from gateway.upstream.http import HttpTransport
from gateway.upstream.transport import Transport

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)


def static_authenticator(settings: Settings) -> StaticKeyAuthenticator:
    keys = []
    for i, k in enumerate(settings.auth.static_keys):
        secret = k.key.get_secret_value()
        keys.append(
            (
                secret,
                Principal(
                    key_id=f"static-{i}",
                    key_prefix=key_prefix(secret),
                    name=k.name,
                    team=k.team,
                    models=frozenset(k.models) if k.models is not None else None,
                    limits=Limits(**k.limits.model_dump()),
                ),
            )
        )
    return StaticKeyAuthenticator.from_keys(keys)


@contextlib.asynccontextmanager
async def build_services(
    settings: Settings,
    *,
    quotas: QuotaStore | None = None,
    recorder: Recorder | None = None,
    monitor: bool = True,
    resolver: Resolver = resolve_dns,
    transport: Transport | None = None,
    span_exporter: SpanExporter | None = None,
) -> AsyncIterator[Services]:
    """Build every service once; tear them down in reverse order.

    ``span_exporter`` replaces the OTLP exporter when tracing is on (tests pass the
    SDK's in-memory one); with tracing off it is not used.
    """
    metrics = Metrics()
    pool = EnginePool(settings.engines, metrics_stale_s=settings.routing.breaker.metrics_stale_s)
    breakers = Breakers(settings.routing.breaker)
    transport = transport or HttpTransport(settings.timeouts)
    router = Router(settings, pool, breakers)
    routing_state = state_watcher(settings, router)
    meter = Meter(PriceBook.load(settings.pricing.file), pool.entries_by_tier)
    tokens = TokenCounter({e.model: e.tokenizer for e in settings.engines})
    for model, how in tokens.describe_bounds().items():
        log.info("admission reserves prompt tokens of %s by %s", model, how)
    # Before the quota store: opening replays spilled records, so the spend it rebuilds
    # from the ledger includes them.
    ledger = (
        await Ledger.open(settings.ledger, metrics.registry)
        if recorder is None and settings.ledger.enabled
        else None
    )
    recorder = recorder or (ledger.writer if ledger is not None else NullRecorder())
    shadow = shadow_runner(settings, pool, transport, recorder, meter, metrics)
    keys = open_key_services(settings)
    authenticator: Authenticator = static_authenticator(settings)
    if keys is not None:
        authenticator = ChainAuthenticator(authenticator, keys.authenticator)
    quotas = quotas or await build_quota_store(settings)
    tracing = build_tracing(settings.tracing, span_exporter)
    pipeline = Pipeline(
        settings=settings,
        authenticator=authenticator,
        admission=Admission(
            server=settings.server,
            router=router,
            pool=pool,
            tokens=tokens,
            meter=meter,
            quotas=quotas,
        ),
        router=router,
        forwarder=Forwarder(
            pool=pool,
            breakers=breakers,
            retry_budget=RetryBudget(settings.routing.retries),
            retries=settings.routing.retries,
            metrics=metrics,
        ),
        transport=transport,
        quotas=quotas,
        meter=meter,
        tokens=tokens,
        recorder=recorder,
        observer=Observer(metrics, access_log=settings.server.access_log),
        shadow=shadow,
        tracing=tracing,
    )
    metrics.in_flight.set_function(lambda: pipeline.active)
    quota_status = getattr(quotas, "status", None)
    if quota_status is not None:
        metrics.watch_quota_store(quota_status)
    pool.subscribe(metrics.watch_engine)
    engine_monitor = EngineMonitor(pool, transport, breakers, settings.routing.breaker)
    discovery = EngineDiscovery(pool, transport, breakers, settings.engines, resolver)
    lag = LoopLag(metrics)
    svc = Services(
        settings=settings,
        overload=OverloadGuard(settings.server, lag, metrics),
        pipeline=pipeline,
        metrics=metrics,
        authenticator=authenticator,
        quotas=quotas,
        router=router,
        pool=pool,
        breakers=breakers,
        transport=transport,
        tokens=tokens,
        monitor=engine_monitor,
        discovery=discovery,
        ledger=ledger,
        keys=keys,
        tracing=tracing,
        routing_state=routing_state,
        started_at=time.time(),
        admin_failures=FailedAttempts(
            settings.auth.admin_max_failures, settings.auth.admin_lockout_s
        ),
    )
    await discovery.refresh_once()  # before the first health check: DNS replicas exist
    discovery.start()
    if monitor:
        await engine_monitor.check_once()
        engine_monitor.start()
    lag.start()
    if routing_state is not None:
        routing_state.start()
    # Move the start-up heap (FastAPI, pydantic, tokenizers) out of the collector's reach:
    # without this, gen-2 collections walk it and pause the loop for 50-95 ms (bench/).
    gc.collect()
    gc.freeze()
    try:
        yield svc
    finally:
        svc.draining = True
        await lag.stop()
        if routing_state is not None:
            await routing_state.stop()
        await discovery.stop()
        await engine_monitor.stop()
        if shadow is not None:
            await shadow.drain(timeout=min(5.0, settings.server.drain_seconds))
        if ledger is not None:  # after the drain: every finished request is recorded
            await ledger.aclose()
        await quotas.aclose()
        await transport.aclose()
        if keys is not None:
            keys.close()
        # Last: every request has ended its spans. The flush may wait on the collector.
        await asyncio.to_thread(tracing.shutdown)


def state_watcher(settings: Settings, router: Router) -> StateWatcher | None:
    """Apply ``routing.state_file`` now (a damaged file fails the start) and watch it."""
    learned = router.learned
    if learned is None:
        return None
    watcher = StateWatcher(
        Path(settings.routing.state_file), learned.apply, settings.routing.state_poll_s
    )
    watcher.load_once()
    return watcher


def shadow_runner(
    settings: Settings,
    pool: EnginePool,
    transport: Transport,
    recorder: Recorder,
    meter: Meter,
    metrics: Metrics,
) -> ShadowRunner | None:
    """The shadow-traffic runner, when some tier's rollout mirrors requests."""
    shadows = {t: r.shadow for t, r in settings.routing.rollouts.items() if r.shadow}
    if not shadows:
        return None
    return ShadowRunner(
        pool=pool,
        transport=transport,
        recorder=recorder,
        registry=metrics.registry,
        meter=meter,
        settings=shadows,
    )


def create_app(settings: Settings, **service_overrides: Any) -> openai.OpenAIRoutes:
    """The client-facing app (OpenAI API, health, metrics).

    The generation routes are served as raw ASGI in front of the FastAPI app, which
    keeps the lifespan and every other route (``.app`` is the FastAPI app).
    """

    admin_app = create_admin_app() if settings.server.admin_port is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with build_services(settings, **service_overrides) as svc:
            app.state.services = svc
            if admin_app is not None:
                admin_app.state.services = svc
            yield

    app = FastAPI(
        title="Tollgate",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    app.state.admin_app = admin_app
    if admin_app is None:  # else /admin listens only on server.admin_port
        _include_admin(app)
    served = (app,) if admin_app is None else (app, admin_app)
    schema.serve_openapi(served[-1], *served)  # next to the admin API, behind its token
    return openai.OpenAIRoutes(app)


def _include_admin(app: FastAPI) -> None:
    app.include_router(admin.router)
    app.include_router(admin_keys.router)
    app.include_router(admin_reports.router)
    app.include_router(admin_reports.pages)


def create_admin_app() -> FastAPI:
    """The admin API on its own listener; shares the client app's services."""
    app = FastAPI(title="Tollgate admin", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    _include_admin(app)
    return app


def _json_error(err: GatewayError, request: Request) -> Response:
    headers = dict(err.headers)
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers["x-request-id"] = rid
    return Response(
        err.to_json(), status_code=err.status_code, media_type="application/json", headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return _json_error(exc, request)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            err: GatewayError = NotFoundError(
                f"Unknown path: {request.url.path}", code="unknown_url"
            )
        else:
            err = InvalidRequestError(str(exc.detail), code=f"http_{exc.status_code}")
            err.status_code = exc.status_code
        return _json_error(err, request)

    async def validation_error(request: Request, exc: Exception) -> Response:
        return _json_error(InvalidRequestError("The request is invalid."), request)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"request_id": getattr(request.state, "request_id", None)},
        )
        return _json_error(InternalError("The gateway hit an internal error."), request)

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
