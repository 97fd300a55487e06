"""Engine client: pooled HTTP to each vLLM engine, streaming, and error translation.

This is the one place where failures of the upstream (aiohttp exceptions, engine error
statuses, timeouts) become :mod:`gateway.errors` classes. Engine URLs and headers never
appear in those errors: a client learns which tier failed, not where it lives.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
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
    #: Gone from discovery: takes no new requests, finishes those it has.
    retired: bool = False
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
        return (self.settings.url or "").rstrip("/")


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    headers: Mapping[str, str]


@dataclass(slots=True)
class ProbeResponse:
    """A fully read answer to :meth:`EngineClient.get` (health checks, metrics)."""

    status_code: int
    text: str


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
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return EngineUnavailableError(f"Connecting to {where} timed out.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return EngineUnavailableError(f"{where} refused the connection.")
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return UpstreamTimeoutError(f"{where} timed out.")
    if isinstance(
        exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError
    ):
        return UpstreamError(f"{where} closed the connection unexpectedly.")
    if isinstance(exc, aiohttp.ClientError):
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
        self,
        engine: Engine,
        response: aiohttp.ClientResponse,
        timeouts: TimeoutSettings,
        started: float,
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
        chunks = self._response.content.iter_any()
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
        except aiohttp.ClientError as exc:
            raise translate_exception(self.engine, exc) from None
        except TimeoutError:
            kind = "time to first token" if first else "idle time between chunks"
            if loop.time() >= deadline_total:
                kind = "total time"
            raise UpstreamTimeoutError(
                f"The {self.engine.tier} tier's engine exceeded the {kind} limit.",
                code="upstream_timeout",
            ) from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # close, not release: an unfinished stream must drop the connection so the
            # engine aborts the request. A finished one was already returned to the pool.
            self._response.close()


class EngineClient:
    """Pooled HTTP sessions, one per engine. The only code that talks to engines.

    Sessions are created lazily, inside the running loop, on first use, from the
    engine's own settings (so replicas found by discovery need no registration here).
    """

    def __init__(self, engines: list[EngineSettings], timeouts: TimeoutSettings) -> None:
        self._timeouts = timeouts
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._session_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.connect_s,
            sock_connect=timeouts.connect_s,
            sock_read=max(timeouts.ttft_s, timeouts.idle_s, timeouts.total_s),
        )

    def _session(self, engine: Engine) -> aiohttp.ClientSession:
        session = self._sessions.get(engine.name)
        if session is None or session.closed:
            e = engine.settings
            headers = {"content-type": "application/json", "accept-encoding": "identity"}
            if e.api_key is not None:
                headers["authorization"] = f"Bearer {e.api_key.get_secret_value()}"
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=e.max_concurrency + 16, keepalive_timeout=30, force_close=False
                ),
                headers=headers,
                timeout=self._session_timeout,
                auto_decompress=False,
                trust_env=False,
                raise_for_status=False,
            )
            self._sessions[engine.name] = session
        return session

    async def send(
        self, engine: Engine, endpoint: Endpoint, body: bytes, request_id: str
    ) -> UpstreamResponse:
        """Forward a non-streaming request; raise a GatewayError on any failure."""
        session = self._session(engine)
        try:
            async with (
                asyncio.timeout(self._timeouts.total_s),
                session.post(
                    engine.url + endpoint.path,
                    data=body,
                    headers={"x-request-id": request_id},
                    allow_redirects=False,
                ) as resp,
            ):
                content = await resp.read()
        except aiohttp.ClientError as exc:
            raise translate_exception(engine, exc) from None
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"The {engine.tier} tier's engine exceeded the total time limit."
            ) from None
        if resp.status >= 400:
            raise translate_status(engine, resp.status, content)
        return UpstreamResponse(resp.status, content, resp.headers)

    async def open_stream(
        self, engine: Engine, endpoint: Endpoint, body: bytes, request_id: str
    ) -> UpstreamStream:
        """Start a streaming request and return once the engine accepted it (status 200)."""
        session = self._session(engine)
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self._timeouts.ttft_s):
                resp = await session.post(
                    engine.url + endpoint.path,
                    data=body,
                    headers={"x-request-id": request_id},
                    allow_redirects=False,
                )
        except aiohttp.ClientError as exc:
            raise translate_exception(engine, exc) from None
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"The {engine.tier} tier's engine exceeded the time to first token limit."
            ) from None
        if resp.status >= 400:
            try:
                content = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                content = b""
            finally:
                resp.release()
            raise translate_status(engine, resp.status, content)
        return UpstreamStream(engine, resp, self._timeouts, started)

    async def get(self, engine: Engine, path: str, timeout: float) -> ProbeResponse:
        """Probe helper for health checks and metrics scraping."""
        try:
            async with self._session(engine).get(
                engine.url + path,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate_exception(engine, exc) from None
        return ProbeResponse(resp.status, body.decode("utf-8", "replace"))

    async def forget(self, engine: Engine) -> None:
        """Close a removed replica's connections."""
        session = self._sessions.pop(engine.name, None)
        if session is not None:
            await session.close()

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
