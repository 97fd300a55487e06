"""The transport to real engines: pooled aiohttp sessions, one per engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from gateway.config import TimeoutSettings
from gateway.errors import UpstreamTimeoutError
from gateway.protocol import Endpoint
from gateway.upstream.engine import Engine
from gateway.upstream.errors import translate_exception, translate_status
from gateway.upstream.sse import timed_batches
from gateway.upstream.transport import ProbeResponse, UpstreamResponse


class AiohttpStream:
    """An open streaming response over aiohttp; closing it early aborts the request."""

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

    def batches(self) -> AsyncIterator[list[bytes]]:
        tier = self.engine.tier
        return timed_batches(
            self._response.content.iter_any(),
            self._timeouts,
            self._started,
            tier,
            lambda exc: translate_exception(tier, exc),
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # close, not release: an unfinished stream must drop the connection so the
            # engine aborts the request. A finished one was already returned to the pool.
            self._response.close()


class AiohttpTransport:
    """Pooled HTTP sessions, one per engine. The only code that talks to real engines.

    Sessions are created lazily, inside the running loop, on first use, from the
    engine's own settings (so replicas found by discovery need no registration here).
    """

    def __init__(self, timeouts: TimeoutSettings) -> None:
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
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> UpstreamResponse:
        """Forward a non-streaming request; raise a GatewayError on any failure."""
        session = self._session(engine)
        try:
            async with (
                asyncio.timeout(self._timeouts.total_s),
                session.post(
                    engine.url + endpoint.path,
                    data=body,
                    headers=_headers(request_id, traceparent),
                    allow_redirects=False,
                ) as resp,
            ):
                content = await resp.read()
        except aiohttp.ClientError as exc:
            raise translate_exception(engine.tier, exc) from None
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"The {engine.tier} tier's engine exceeded the total time limit."
            ) from None
        if resp.status >= 400:
            raise translate_status(engine.tier, resp.status, content)
        return UpstreamResponse(resp.status, content)

    async def open_stream(
        self,
        engine: Engine,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        traceparent: str | None = None,
    ) -> AiohttpStream:
        """Start a streaming request and return once the engine accepted it (status 200)."""
        session = self._session(engine)
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self._timeouts.ttft_s):
                resp = await session.post(
                    engine.url + endpoint.path,
                    data=body,
                    headers=_headers(request_id, traceparent),
                    allow_redirects=False,
                )
        except aiohttp.ClientError as exc:
            raise translate_exception(engine.tier, exc) from None
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
            raise translate_status(engine.tier, resp.status, content)
        return AiohttpStream(engine, resp, self._timeouts, started)

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
            raise translate_exception(engine.tier, exc) from None
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


def _headers(request_id: str, traceparent: str | None) -> dict[str, str]:
    if traceparent is None:
        return {"x-request-id": request_id}
    return {"x-request-id": request_id, "traceparent": traceparent}
