"""Tiny accessors for services kept on ``app.state`` (built once in the lifespan)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.throttle import FailedAttempts


@dataclass
class Services:
    """Everything the routes need, built once at start-up."""

    settings: Settings
    pipeline: Pipeline
    metrics: Metrics
    extra: dict[str, Any]
    #: Refusing new requests (SIGTERM, after ``server.unready_seconds``); readiness 503.
    draining: bool = False
    #: SIGTERM received: readiness 503 while requests are still served.
    stopping: bool = False
    #: Failed admin logins per client address (see :mod:`gateway.throttle`).
    admin_failures: FailedAttempts = field(default_factory=lambda: FailedAttempts(10, 300.0))


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
