"""Application factory: the lifespan builds the services, then the routers are mounted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import health, openai
from gateway.auth import Principal, StaticKeyAuthenticator, key_prefix
from gateway.config import Settings
from gateway.deps import Services
from gateway.engines import EngineClient, TransportFactory
from gateway.errors import GatewayError, InternalError, InvalidRequestError, NotFoundError
from gateway.ledger.record import NullRecorder, Recorder
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.pricing import PriceBook
from gateway.quotas.base import QuotaStore, Unlimited
from gateway.routing.health import Breakers, RetryBudget
from gateway.routing.monitor import EngineMonitor
from gateway.routing.pool import EnginePool
from gateway.routing.router import Router
from gateway.tokens import TokenCounter

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
                ),
            )
        )
    return StaticKeyAuthenticator.from_keys(keys)


@contextlib.asynccontextmanager
async def build_services(
    settings: Settings,
    *,
    transport_factory: TransportFactory | None = None,
    quotas: QuotaStore | None = None,
    recorder: Recorder | None = None,
    monitor: bool = True,
) -> AsyncIterator[Services]:
    """Build every service once; tear them down in reverse order."""
    metrics = Metrics()
    pool = EnginePool(settings.engines)
    breakers = Breakers(settings.routing.breaker)
    client = EngineClient(settings.engines, settings.timeouts, transport_factory)
    router = Router(settings, pool, breakers)
    prices = PriceBook.load(settings.pricing.file)
    tokens = TokenCounter({e.model: e.tokenizer for e in settings.engines})
    pipeline = Pipeline(
        settings=settings,
        authenticator=static_authenticator(settings),
        quotas=quotas or Unlimited(),
        router=router,
        pool=pool,
        client=client,
        breakers=breakers,
        retry_budget=RetryBudget(settings.routing.retries),
        tokens=tokens,
        prices=prices,
        recorder=recorder or NullRecorder(),
        metrics=metrics,
    )
    metrics.in_flight.set_function(lambda: pipeline.active)
    for engine in pool.engines.values():
        metrics.engine_in_flight.labels(engine.name, engine.tier).set_function(
            lambda e=engine: e.in_flight  # type: ignore[misc]
        )
    engine_monitor = EngineMonitor(pool, client, breakers, settings.routing.breaker)
    svc = Services(
        settings=settings,
        pipeline=pipeline,
        metrics=metrics,
        extra={"started_at": time.time(), "monitor": engine_monitor},
    )
    if monitor:
        await engine_monitor.check_once()
        engine_monitor.start()
    lag_task = asyncio.get_running_loop().create_task(_measure_loop_lag(metrics))
    try:
        yield svc
    finally:
        svc.draining = True
        lag_task.cancel()
        await engine_monitor.stop()
        await pipeline.quotas.aclose()
        await client.aclose()


async def _measure_loop_lag(metrics: Metrics, interval: float = 0.25) -> None:
    """Event-loop saturation hides from handler timers; sleep drift shows it."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        metrics.loop_lag.set(max(0.0, loop.time() - start - interval))


def create_app(settings: Settings, **service_overrides: Any) -> FastAPI:
    """The client-facing app (OpenAI API, health, metrics)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with build_services(settings, **service_overrides) as svc:
            app.state.services = svc
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
    app.include_router(health.router)
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
