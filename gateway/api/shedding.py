"""Overload refusals in the HTTP protocol: before a request becomes a task.

A route-level check runs only once the request's task gets its turn on the event loop;
past capacity that turn comes late (the loop is full of accepted work), so the refusal
is late too, and building the scope, task, receive channel and JSON error for it costs
as much CPU as a cheap request (measured in bench/results/overload.md). Here the
decision is made in the protocol's ``on_headers_complete`` callback, which runs in the
same loop iteration that read the bytes: :class:`OverloadGuard` decides (the one place
it is decided, and counted), and a prebuilt ``503 gateway_overloaded`` with
``Retry-After: 1`` is written straight to the socket. No scope, task or ASGI message.

* Only ``POST``-able generation paths (``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``) are refused here; ``/health``, ``/metrics`` and the admin API
  never are.
* "In flight" is every request of this server that has become a task and is not done
  (uvicorn's task set): that includes requests waiting for their first turn on the loop,
  which the pipeline's own count cannot see.
* Keep-alive is kept: the request's body is read and dropped, and the connection serves
  the next request. HTTP/1.0, ``Connection: close`` and ``Expect: 100-continue`` get
  ``Connection: close`` and the connection is closed. A body that stops arriving is
  cut after ``body_timeout_s``, as on the route.
* A request pipelined behind one still being answered is left to the route (its answer
  must come after the earlier one's).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.protocol import Endpoint
from gateway.request.overload import REASONS, OverloadGuard, overload_error

#: The paths refused in the protocol (raw bytes, as the parser hands them over).
GENERATION_PATHS = frozenset(e.path.encode() for e in Endpoint)


Headers = list[tuple[bytes, bytes]]


def refusal_bytes(signal: str, keep_alive: bool, default_headers: Headers) -> bytes:
    """The whole HTTP/1.1 answer of a refusal on ``signal`` (OpenAI-shaped JSON body)."""
    err = overload_error(REASONS[signal])
    body = err.to_json()
    lines = [b"HTTP/1.1 503 Service Unavailable"]
    lines += [name + b": " + value for name, value in default_headers]  # date, server
    lines += [
        b"content-type: application/json",
        b"content-length: %d" % len(body),
    ]
    lines += [k.lower().encode("latin-1") + b": " + v.encode() for k, v in err.headers.items()]
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Shedder:
    """One server's refusals: its app's guard (found once it exists) and prebuilt bytes."""

    def __init__(self) -> None:
        self._guard: OverloadGuard | None = None
        #: Answers built for this ``default_headers`` list (uvicorn renews it each second
        #: with a new ``date``).
        self._headers: Headers | None = None
        self._answers: dict[tuple[str, bool], bytes] = {}

    def guard(self, app: Any) -> OverloadGuard | None:
        if self._guard is None:
            self._guard = find_guard(app)
        return self._guard

    def answer(self, signal: str, keep_alive: bool, headers: Headers) -> bytes:
        if headers is not self._headers:
            self._headers = headers
            self._answers = {}
        key = (signal, keep_alive)
        out = self._answers.get(key)
        if out is None:
            out = self._answers[key] = refusal_bytes(signal, keep_alive, headers)
        return out


def find_guard(app: Any) -> OverloadGuard | None:
    """The :class:`OverloadGuard` of the app under uvicorn's wrappers, once its lifespan
    has built the services (None before, and for apps without one: the admin app)."""
    for _ in range(8):
        services = getattr(getattr(app, "state", None), "services", None)
        if services is not None:
            guard: OverloadGuard | None = getattr(services, "overload", None)
            return guard
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class SheddingProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses generation requests past capacity, as bytes."""

    #: Set per server by :func:`gateway.api.connections.guarded_protocol`; None: no refusals.
    shedder: Shedder | None = None
    body_timeout_s: float = 30.0
    #: The request now being parsed was refused: drop its body, answer nothing more.
    _refused = False
    _body_timer: asyncio.TimerHandle | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request begins: the idle timer armed after a refusal no longer applies.
        self._unset_keepalive_if_required()

    def on_headers_complete(self) -> None:
        if self.shedder is not None and self._refuse(self.shedder):
            return
        super().on_headers_complete()

    def _refuse(self, shedder: Shedder) -> bool:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False  # pipelined behind an answer still going out: the route decides
        if self.url.partition(b"?")[0] not in GENERATION_PATHS:
            return False
        guard = shedder.guard(self.app)
        if guard is None:
            return False
        signal = guard.refuses(len(self.tasks))
        if signal is None:
            return False
        parser = self.parser
        keep_alive = (
            parser.should_keep_alive()
            and parser.get_http_version() != "1.0"
            and not self.expect_100_continue
        )
        self.transport.write(shedder.answer(signal, keep_alive, self.server_state.default_headers))
        self._refused = True
        if not keep_alive:
            self.transport.close()
        return True

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()
            return
        self._refused = False
        self._stop_body_timer()
        self.server_state.total_requests += 1
        if not self.transport.is_closing():  # idle until the next request, as after an answer
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._refused and self._body_timer is None and not self.transport.is_closing():
            # Refused with its body still to come: it gets body_timeout_s, as on the route.
            self._body_timer = self.loop.call_later(self.body_timeout_s, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_body_timer()
        super().connection_lost(exc)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
