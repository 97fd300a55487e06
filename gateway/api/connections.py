"""Client connections with the limits uvicorn lacks: slow headers, idle sockets, too many.

uvicorn's httptools protocol times out an idle keep-alive connection only after it has
answered a request on it; a connection that never completes its request headers
(slowloris), or never sends a byte, is held forever. :func:`guarded_protocol` returns the
same protocol with three bounds (``server.*``):

* ``header_timeout_s``: from the first byte of a request (or the connection's start)
  to the end of its headers; past it the client gets 408 and the connection closes;
* ``idle_connection_s``: a new connection that sends nothing, or a kept-alive one
  between requests, is closed after this long (uvicorn's keep-alive timer, also applied
  before the first request);
* ``max_connections``: past this many open connections a new one is closed at once,
  so idle sockets cannot exhaust memory or file descriptors.

Body and response limits (a slow body, a reader that never reads) are enforced by the
routes and the SSE response (``body_timeout_s``, ``send_timeout_s``). The protocol also
refuses generation requests past capacity before they become tasks
(:mod:`gateway.api.shedding`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.api.shedding import Shedder, SheddingProtocol
from gateway.config import ServerSettings
from gateway.errors import RequestTimeoutError


def _timeout_response() -> bytes:
    err = RequestTimeoutError("The request headers did not arrive in time.")
    body = err.to_json()
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    return head + body


class GuardedProtocol(SheddingProtocol):
    """HttpToolsProtocol with header and idle deadlines, a connection cap and overload
    refusals."""

    header_timeout_s: float = 10.0
    idle_connection_s: float = 75.0
    max_connections: int = 4096
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            transport.abort()
            return
        super().connection_made(transport)
        # Until the first request begins, this is an idle connection.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.idle_connection_s, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused in connection_made (never set up)
            return
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _headers_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(_timeout_response())
            self.transport.close()


def guarded_protocol(server: ServerSettings) -> type[GuardedProtocol]:
    """The protocol class for uvicorn's ``http=``, with this server's limits."""
    limits: dict[str, Any] = {
        "header_timeout_s": server.header_timeout_s,
        "idle_connection_s": server.idle_connection_s,
        "max_connections": server.max_connections,
        "body_timeout_s": server.body_timeout_s,
        "shedder": Shedder(),
    }
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), limits)
