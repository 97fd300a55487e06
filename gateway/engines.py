"""Engine client: pooled HTTP to each vLLM engine, streaming, and error translation.

This is the one place where failures of the upstream (httpx exceptions, engine error
statuses, timeouts) become :mod:`gateway.errors` classes. Engine URLs and headers never
appear in those errors: a client learns which tier failed, not where it lives.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import orjson

from gateway.config import EngineSettings, TimeoutSettings
from gateway.errors import (
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.protocol import Endpoint

_URLISH = re.compile(r"(https?://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|localhost:\d+)")
_MAX_MESSAGE = 1000


@dataclass(slots=True)
class Engine:
    """One upstream vLLM engine and its live counters."""

    settings: EngineSettings
    in_flight: int = 0
    #: Scraped from the engine's /metrics (see routing.health).
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    metrics_at: float = 0.0
    #: Our own ``in_flight`` when the metrics were scraped (to correct them until the next).
    scraped_in_flight: int = 0
    healthy: bool = True
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def tier(self) -> str:
        return self.settings.tier

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def url(self) -> str:
        return self.settings.url.rstrip("/")


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    headers: httpx.Headers


def sanitize(message: str) -> str:
    """Strip URLs and addresses from an upstream message and bound its length."""
    return _URLISH.sub("[upstream]", message)[:_MAX_MESSAGE]


def _upstream_message(body: bytes) -> str:
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


def translate_status(engine: Engine, status: int, body: bytes) -> GatewayError:
    """Map an engine's error status to the gateway's error tree."""
    detail = _upstream_message(body)
    where = f"the {engine.tier} tier's engine"
    if status == 400 or status == 422:
        return InvalidRequestError(detail or f"{where} rejected the request.")
    if status == 413:
        return PayloadTooLargeError(detail or f"{where} rejected the request as too large.")
    if status == 404:
        return UpstreamError(f"{where} does not serve its configured model.")
    if status == 429:
        return OverloadedError(f"{where} is overloaded.", headers={"Retry-After": "1"})
    if status == 503:
        return EngineUnavailableError(f"{where} is unavailable ({status}).")
    if status >= 500:
        return UpstreamError(f"{where} failed with status {status}.")
    return UpstreamError(f"{where} answered with unexpected status {status}.")


def translate_exception(engine: Engine, exc: BaseException) -> GatewayError:
    """Map a transport exception (most specific first) to the gateway's error tree."""
    where = f"the {engine.tier} tier's engine"
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, httpx.ConnectTimeout):
        return EngineUnavailableError(f"Connecting to {where} timed out.")
    if isinstance(exc, httpx.ConnectError):
        return EngineUnavailableError(f"{where} refused the connection.")
    if isinstance(exc, httpx.PoolTimeout):
        return OverloadedError(f"No connection to {where} was free in time.")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return UpstreamTimeoutError(f"{where} timed out.")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return UpstreamError(f"{where} closed the connection unexpectedly.")
    if isinstance(exc, httpx.HTTPError):
        return UpstreamError(f"{where} could not be reached ({type(exc).__name__}).")
    return UpstreamError(f"{where} failed ({type(exc).__name__}).")


class SSEReader:
    """Splits an upstream byte stream into SSE event payloads (the bytes after ``data: ``)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            payload = _data_of(block)
            if payload is not None:
                events.append(payload)
        self._buf = buf[start:]
        return events


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data:") and b"\ndata:" not in block:
        return block[5:].lstrip(b" ")
    lines = [ln[5:].lstrip(b" ") for ln in block.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class UpstreamStream:
    """An open streaming response; iterate :meth:`events` for SSE payloads.

    Time to first event is bounded by ``ttft_s``, each later gap by ``idle_s`` and the
    whole stream by ``total_s``. Closing it (``aclose``) aborts the upstream request.
    """

    def __init__(
        self, engine: Engine, response: httpx.Response, timeouts: TimeoutSettings, started: float
    ) -> None:
        self.engine = engine
        self._response = response
        self._timeouts = timeouts
        self._started = started
        self._closed = False

    async def events(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        t = self._timeouts
        reader = SSEReader()
        deadline_total = self._started + t.total_s
        first = True
        chunks = self._response.aiter_raw()
        try:
            async with asyncio.timeout(None) as cm:
                while True:
                    now = loop.time()
                    limit = t.ttft_s if first else t.idle_s
                    cm.reschedule(min(now + limit, deadline_total))
                    try:
                        data = await anext(chunks)
                    except StopAsyncIteration:
                        cm.reschedule(None)
                        return
                    cm.reschedule(None)
                    for payload in reader.feed(data):
                        first = False
                        yield payload
        except TimeoutError:
            kind = "time to first token" if first else "idle time between chunks"
            if loop.time() >= deadline_total:
                kind = "total time"
            raise UpstreamTimeoutError(
                f"The {self.engine.tier} tier's engine exceeded the {kind} limit.",
                code="upstream_timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise translate_exception(self.engine, exc) from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._response.aclose()


TransportFactory = Callable[[EngineSettings], httpx.AsyncBaseTransport]


class EngineClient:
    """Pooled HTTP clients, one per engine. The only code that talks to engines."""

    def __init__(
        self,
        engines: list[EngineSettings],
        timeouts: TimeoutSettings,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self._timeouts = timeouts
        self._clients: dict[str, httpx.AsyncClient] = {}
        for e in engines:
            limits = httpx.Limits(
                max_connections=e.max_concurrency + 16,
                max_keepalive_connections=e.max_concurrency + 16,
                keepalive_expiry=30.0,
            )
            transport = (
                transport_factory(e)
                if transport_factory
                else httpx.AsyncHTTPTransport(limits=limits, retries=0)
            )
            headers = {"content-type": "application/json"}
            if e.api_key is not None:
                headers["authorization"] = f"Bearer {e.api_key.get_secret_value()}"
            self._clients[e.name] = httpx.AsyncClient(
                base_url=e.url.rstrip("/"),
                transport=transport,
                headers=headers,
                timeout=httpx.Timeout(
                    connect=timeouts.connect_s,
                    read=max(timeouts.ttft_s, timeouts.idle_s, timeouts.total_s),
                    write=timeouts.connect_s + 10,
                    pool=timeouts.connect_s,
                ),
                follow_redirects=False,
                trust_env=False,
            )

    def _client(self, engine: Engine) -> httpx.AsyncClient:
        return self._clients[engine.name]

    async def send(
        self, engine: Engine, endpoint: Endpoint, body: bytes, request_id: str
    ) -> UpstreamResponse:
        """Forward a non-streaming request; raise a GatewayError on any failure."""
        client = self._client(engine)
        try:
            async with asyncio.timeout(self._timeouts.total_s):
                resp = await client.post(
                    endpoint.path, content=body, headers={"x-request-id": request_id}
                )
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"The {engine.tier} tier's engine exceeded the total time limit."
            ) from None
        except httpx.HTTPError as exc:
            raise translate_exception(engine, exc) from None
        if resp.status_code >= 400:
            raise translate_status(engine, resp.status_code, resp.content)
        return UpstreamResponse(resp.status_code, resp.content, resp.headers)

    async def open_stream(
        self, engine: Engine, endpoint: Endpoint, body: bytes, request_id: str
    ) -> UpstreamStream:
        """Start a streaming request and return once the engine accepted it (status 200)."""
        client = self._client(engine)
        started = asyncio.get_running_loop().time()
        request = client.build_request(
            "POST", endpoint.path, content=body, headers={"x-request-id": request_id}
        )
        try:
            async with asyncio.timeout(self._timeouts.ttft_s):
                resp = await client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"The {engine.tier} tier's engine exceeded the time to first token limit."
            ) from None
        except httpx.HTTPError as exc:
            raise translate_exception(engine, exc) from None
        if resp.status_code >= 400:
            try:
                content = await resp.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await resp.aclose()
            raise translate_status(engine, resp.status_code, content)
        return UpstreamStream(engine, resp, self._timeouts, started)

    async def get(self, engine: Engine, path: str, timeout: float) -> httpx.Response:
        """Probe helper for health checks and metrics scraping."""
        try:
            return await self._client(engine).get(path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise translate_exception(engine, exc) from None

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def monotonic() -> float:
    return time.monotonic()
