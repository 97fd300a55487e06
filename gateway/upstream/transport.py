"""The seam between the request path and the engines.

:class:`Transport` is what the pipeline, the health monitor, discovery and the shadow
runner call. :class:`~gateway.upstream.http.HttpTransport` speaks HTTP to real engines
(:class:`~gateway.upstream.client.AiohttpTransport`, the aiohttp-based one it replaced,
is kept as the baseline it is measured and tested against);
:class:`~gateway.upstream.mock.MockTransport` answers from a function, so the request
path is unit-tested without sockets (as httpx's ``MockTransport`` does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from gateway.protocol import Endpoint
from gateway.upstream.engine import Engine


@dataclass(slots=True)
class UpstreamResponse:
    """A complete (non-streaming) answer with a success status."""

    status: int
    body: bytes


@dataclass(slots=True)
class ProbeResponse:
    """A fully read answer to :meth:`Transport.get` (health checks, metrics)."""

    status_code: int
    text: str


class UpstreamStream(Protocol):
    """An open streaming response, accepted by the engine (status 200)."""

    def batches(self) -> AsyncIterator[list[bytes]]:
        """SSE payloads, a list per network read, within the stream's time limits.

        Raises GatewayError on any failure.
        """
        ...

    async def aclose(self) -> None:
        """Stop reading; an unfinished stream aborts the engine's request."""
        ...


class Transport(Protocol):
    """How the gateway reaches its engines. Every failure is a GatewayError.

    ``send`` and ``open_stream`` pass ``request_id`` as ``x-request-id`` and, when not
    None, ``traceparent`` as the W3C header of that name.
    """

    async def send(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> UpstreamResponse: ...

    async def open_stream(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> UpstreamStream: ...

    async def get(self, engine: Engine, path: str, timeout: float) -> ProbeResponse: ...

    async def forget(self, engine: Engine) -> None:
        """Close a removed replica's connections."""
        ...

    async def aclose(self) -> None: ...
