"""Upstream failures as gateway errors: one table for exceptions, one for statuses.

This is the one place where failures of the upstream (client exceptions, engine error
statuses, timeouts) become :mod:`gateway.errors` classes. Engine URLs and addresses
never appear in those errors: a client learns which tier failed, not where it lives.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import aiohttp
import orjson

from gateway.errors import (
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)


class EngineConnectError(ConnectionError):
    """Connecting to an engine failed: refused, unreachable or unresolvable."""


class EngineConnectTimeout(TimeoutError):
    """No connection to an engine (nor a free slot in its pool) within ``connect_s``."""


class InvalidResponseError(Exception):
    """The engine's bytes were not a valid HTTP/1.1 response."""


_URLISH = re.compile(r"(https?://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|localhost:\d+)")
_MAX_MESSAGE = 1000


def _unavailable(what: str) -> Callable[[str], GatewayError]:
    return lambda w: EngineUnavailableError(what.format(w=w))


def _timeout(what: str) -> Callable[[str], GatewayError]:
    return lambda w: UpstreamTimeoutError(what.format(w=w))


def _failed(what: str) -> Callable[[str], GatewayError]:
    return lambda w: UpstreamError(what.format(w=w))


_CLOSED = _failed("{w} closed the connection unexpectedly.")

#: Transport exceptions, most specific first, to the error for ``w`` (the tier's engine).
EXCEPTIONS: tuple[tuple[type[BaseException], Callable[[str], GatewayError]], ...] = (
    (aiohttp.ConnectionTimeoutError, _unavailable("Connecting to {w} timed out.")),
    (EngineConnectTimeout, _unavailable("Connecting to {w} timed out.")),
    (aiohttp.ClientConnectorError, _unavailable("{w} refused the connection.")),
    (EngineConnectError, _unavailable("{w} refused the connection.")),
    (InvalidResponseError, _failed("{w} sent an invalid HTTP response.")),
    (aiohttp.ServerTimeoutError, _timeout("{w} timed out.")),
    (TimeoutError, _timeout("{w} timed out.")),
    (ConnectionRefusedError, _unavailable("{w} refused the connection.")),
    (aiohttp.ServerDisconnectedError, _CLOSED),
    (aiohttp.ClientPayloadError, _CLOSED),
    (aiohttp.ClientOSError, _CLOSED),
    (ConnectionError, _CLOSED),
)

#: Engine error statuses; anything else >= 500 is a generic upstream failure.
STATUSES: dict[int, Callable[[str, str], GatewayError]] = {
    400: lambda w, d: InvalidRequestError(d or f"{w} rejected the request."),
    422: lambda w, d: InvalidRequestError(d or f"{w} rejected the request."),
    413: lambda w, d: PayloadTooLargeError(d or f"{w} rejected the request as too large."),
    404: lambda w, d: UpstreamError(f"{w} does not serve its configured model."),
    429: lambda w, d: OverloadedError(f"{w} is overloaded.", headers={"Retry-After": "1"}),
    503: lambda w, d: EngineUnavailableError(f"{w} is unavailable (503)."),
}


def where(tier: str) -> str:
    return f"the {tier} tier's engine"


def sanitize(message: str) -> str:
    """Strip URLs and addresses from an upstream message and bound its length."""
    return _URLISH.sub("[upstream]", message)[:_MAX_MESSAGE]


def upstream_message(body: bytes) -> str:
    """The engine's own error message, sanitized; empty when it gave none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if isinstance(msg, str):
                return sanitize(msg)
        elif isinstance(data.get("message"), str):
            return sanitize(data["message"])
    return ""


def exceeded(tier: str, limit: str) -> UpstreamTimeoutError:
    """A time limit of the request (``total time``, ``time to first token``) ran out."""
    return UpstreamTimeoutError(f"The {tier} tier's engine exceeded the {limit} limit.")


def translate_status(tier: str, status: int, body: bytes) -> GatewayError:
    """Map an engine's error status to the gateway's error tree."""
    w = where(tier)
    make = STATUSES.get(status)
    if make is not None:
        return make(w, upstream_message(body))
    if status >= 500:
        return UpstreamError(f"{w} failed with status {status}.")
    return UpstreamError(f"{w} answered with unexpected status {status}.")


def translate_exception(tier: str, exc: BaseException) -> GatewayError:
    """Map a transport exception (the first matching row of :data:`EXCEPTIONS`)."""
    if isinstance(exc, GatewayError):
        return exc
    w = where(tier)
    for kind, make in EXCEPTIONS:
        if isinstance(exc, kind):
            return make(w)
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError(f"{w} could not be reached ({type(exc).__name__}).")
    return UpstreamError(f"{w} failed ({type(exc).__name__}).")
